"""active_conv2d and active_conv2d_backward against deform_conv2d on broadcast
offsets, dense convolution, finite differences, and their boundary rules."""

import dataclasses
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import defconv_np as dc
from defconv_np import _stencil
from tests.naive import assert_close, assert_same_up_to_summation_order
from tests.strategies import (
    FLOAT64_ONLY,
    ActiveProblem,
    active_problems,
    conv_geometries,
    layout_variants,
    numpy_generators,
)

ALL_GRADS = ("input", "offset", "weight", "bias")
NON_FINITE_OFFSETS = (np.nan, np.inf, -np.inf, 1e30, -1e30)


def forward(p, **replace):
    p = dataclasses.replace(p, **replace)
    return dc.active_conv2d(p.input, p.offset, p.weight, p.bias, **p.hyper)


def backward(p, needs=ALL_GRADS, **replace):
    p = dataclasses.replace(p, **replace)
    return dc.active_conv2d_backward(p.grad_output, p.input, p.offset, p.weight, needs=needs,
                                     **p.hyper)


def deform_reference(p):
    """deform_conv2d (itself tested against float64 loops) in float64 on the
    broadcast offset: forward and gradients, the offset one summed over N, Ho, Wo."""
    f64 = {name: None if getattr(p, name) is None else getattr(p, name).astype(np.float64)
           for name in ("input", "weight", "bias", "grad_output")}
    offset = p.broadcast_offset.astype(np.float64)
    out = dc.deform_conv2d(f64["input"], offset, f64["weight"], f64["bias"], **p.hyper)
    g = dc.deform_conv2d_backward(f64["grad_output"], f64["input"], offset, f64["weight"],
                                  **p.hyper)
    return out, g.input, g.offset.sum(axis=(0, 2, 3)), g.weight, g.bias


def assert_matches_deform(p, out, grads, err_msg=""):
    ref = deform_reference(p)
    for name, actual, expected in zip(("output",) + ALL_GRADS, (out,) + tuple(grads), ref):
        assert actual.dtype == p.dtype, name
        assert_close(actual, expected, dtype=p.dtype, err_msg=f"{name} {err_msg}")


@given(p=active_problems(), chunked=st.booleans())
def test_equals_deform_conv2d_on_broadcast_offsets(p, chunked):
    budget = 256 if chunked else dc.config.column_budget_bytes
    with mock.patch.object(dc.config, "column_budget_bytes", budget):
        out = forward(p)
        g = backward(p)
    assert_matches_deform(p, out, g)


@given(p=active_problems(offset_styles=("uniform",)))
@settings(max_examples=10)
def test_chunked_and_threaded_runs_agree(p):
    out, g = forward(p), backward(p)
    with mock.patch.object(dc.config, "column_budget_bytes", 256):
        out_c, g_c = forward(p), backward(p)
    assert_same_up_to_summation_order(out_c, out)
    for a, b in zip(g_c, g):
        assert_same_up_to_summation_order(a, b)
    again = backward(p)
    for a, b in zip(again, g):
        np.testing.assert_array_equal(a, b)   # deterministic


@given(p=active_problems(dtypes=FLOAT64_ONLY, offset_styles=("away_from_kinks",),
                         geometry=conv_geometries(min_batch=1)),
       rng=numpy_generators())
@settings(max_examples=15)
def test_gradients_match_finite_differences(p, rng):
    """Central differences of <grad_output, out> (float64, samples away from
    integer coordinates, where the sampling is smooth)."""
    g = backward(p)
    h = 1e-6

    def loss(**replace):
        return float(np.sum(p.grad_output * forward(p, **replace)))

    for k in range(p.offset.size):
        step = np.zeros_like(p.offset)
        step[k] = h
        numeric = (loss(offset=p.offset + step) - loss(offset=p.offset - step)) / (2 * h)
        np.testing.assert_allclose(g.offset[k], numeric, rtol=1e-6, atol=1e-7)
    for name in ("input", "weight"):
        direction = rng.standard_normal(getattr(p, name).shape)
        base = getattr(p, name)
        numeric = (loss(**{name: base + h * direction}) - loss(**{name: base - h * direction})) / (2 * h)
        np.testing.assert_allclose(np.sum(getattr(g, name) * direction), numeric, rtol=1e-6,
                                   atol=1e-7, err_msg=name)


def shifted_window(x, padding, dy, dx):
    """The conv's padded input moved by whole (dy, dx): (N, C, H + 2*ph, W + 2*pw)
    with ``out[..., y', x'] = x[..., y' - ph + dy, x' - pw + dx]``, 0 outside."""
    (ph, pw), m = padding, 4
    big = np.pad(x, ((0, 0), (0, 0), (ph + m, ph + m), (pw + m, pw + m)))
    h, w = x.shape[2] + 2 * ph, x.shape[3] + 2 * pw
    return big[:, :, m + dy:m + dy + h, m + dx:m + dx + w]


def unshifted_window(grad, shape, padding, dy, dx):
    """Adjoint of ``shifted_window``."""
    (ph, pw), m = padding, 4
    big = np.zeros(shape[:2] + (shape[2] + 2 * (ph + m), shape[3] + 2 * (pw + m)), grad.dtype)
    big[:, :, m + dy:m + dy + grad.shape[2], m + dx:m + dx + grad.shape[3]] = grad
    return big[:, :, ph + m:ph + m + shape[2], pw + m:pw + m + shape[3]]


@given(p=active_problems(offset_styles=("integer",)), dy=st.integers(-3, 3),
       dx=st.integers(-3, 3))
@settings(max_examples=20)
def test_one_integer_shift_is_conv2d_of_the_shifted_input(p, dy, dx):
    """Every kernel point moved by the same whole (dy, dx): the four-tap stencil
    degenerates to one tap, and the op is conv2d (no padding) of the padded
    input moved by (dy, dx)."""
    offset = np.tile(np.array([dy, dx], p.dtype), p.offset.size // 2)
    groups = p.input.shape[1] // p.weight.shape[1]
    padding = np.broadcast_to(p.padding, 2)
    window = shifted_window(p.input, padding, dy, dx)
    dense = dict(stride=p.stride, dilation=p.dilation, groups=groups)
    expected = dc.conv2d(window, p.weight, p.bias, **dense)
    assert_same_up_to_summation_order(forward(p, offset=offset), expected)
    g = backward(p, offset=offset)
    conv_g = dc.conv2d_backward(p.grad_output, window, p.weight, **dense)
    assert_same_up_to_summation_order(g.weight, conv_g.weight)
    assert_same_up_to_summation_order(
        g.input, unshifted_window(conv_g.input, p.input.shape, padding, dy, dx))


def test_zero_offsets_with_padding_get_torchvisions_border_gradient():
    """The y = -1 rule: with zero offsets and padding 1, the border taps sit on
    y = -1 or x = -1 and their offset gradient is the derivative towards row
    (column) 0, not 0. That is deform_conv2d's summed."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0.5, 1.5, (2, 3, 5, 6))       # positive: no accidental cancellation
    w = rng.uniform(0.5, 1.5, (4, 3, 3, 3))
    p = ActiveProblem(x, np.zeros(18), w, None, np.ones((2, 4, 5, 6)), 1, 1, 1)
    g = backward(p)
    assert_matches_deform(p, forward(p), g)
    # grad_output on output row 0 only: kernel point (0, 0) samples there at
    # y = -1, and its dy gradient is the derivative towards row 0 of a positive
    # image (mmcv's window test would give 0)
    only_top_row = np.zeros_like(p.grad_output)
    only_top_row[:, :, 0] = 1
    g_top = backward(p, grad_output=only_top_row)
    assert g_top.offset[0] > 0
    assert_matches_deform(dataclasses.replace(p, grad_output=only_top_row), forward(p), g_top)


def test_integer_offsets_are_deform_with_integer_offsets():
    rng = np.random.default_rng(4)
    p = ActiveProblem(rng.standard_normal((2, 4, 6, 5)), rng.integers(-3, 4, 2 * 2 * 6) * 1.0,
                      rng.standard_normal((6, 2, 2, 3)), None, rng.standard_normal((2, 6, 4, 2)),
                      (2, 2), (1, 0), (1, 1))
    assert_matches_deform(p, forward(p), backward(p))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value", NON_FINITE_OFFSETS)
@pytest.mark.parametrize("axis", [0, 1])
def test_non_finite_and_huge_offsets_make_a_kernel_point_absent(dtype, value, axis):
    """Such a kernel point samples 0 with zero gradients, as deform_conv2d's
    sample outside its window; the others are untouched."""
    rng = np.random.default_rng(5)
    p = ActiveProblem(rng.standard_normal((2, 4, 5, 5)).astype(dtype),
                      rng.uniform(-1.5, 1.5, 2 * 2 * 9).astype(dtype),
                      rng.standard_normal((3, 4, 3, 3)).astype(dtype), None,
                      rng.standard_normal((2, 3, 5, 5)).astype(dtype), 1, 1, 1)
    point = 9 + 4          # offset group 1, kernel point (1, 1)
    offset = p.offset.copy()
    offset[2 * point + axis] = value
    with np.errstate(all="raise"):
        out = forward(p, offset=offset)
        g = backward(p, offset=offset)
    assert np.isfinite(out).all() and all(np.isfinite(a).all() for a in g)
    assert g.offset[2 * point] == 0 and g.offset[2 * point + 1] == 0
    # the same as the kernel point's weight zeroed for its offset group's channels
    weight = p.weight.copy()
    weight[:, 2:, 1, 1] = 0
    off_finite = offset.copy()
    off_finite[2 * point:2 * point + 2] = 0
    q = dataclasses.replace(p, weight=weight, offset=off_finite)
    assert_same_up_to_summation_order(out, forward(q))
    gq = backward(q)
    keep = np.ones(offset.size, bool)
    keep[2 * point:2 * point + 2] = False
    assert_same_up_to_summation_order(g.input, gq.input)
    assert_same_up_to_summation_order(g.offset[keep], gq.offset[keep])
    assert_same_up_to_summation_order(g.weight[:, :2], gq.weight[:, :2])
    assert_matches_deform(dataclasses.replace(p, offset=offset), out, g)


@pytest.mark.parametrize("fast", [True, False])
def test_far_offsets_that_still_reach_the_image(fast):
    """Kernel points shifted by about the output's own extent still touch the
    image: the fast path would pad widely, so the deformable path runs on the
    broadcast offsets (``fast=False``); forced, the fast path agrees."""
    rng = np.random.default_rng(6)
    p = ActiveProblem(rng.standard_normal((2, 2, 6, 6)),
                      np.array([5.25, 5.5, -5.75, -5.5]), rng.standard_normal((4, 1, 1, 1)),
                      rng.standard_normal(4), rng.standard_normal((2, 4, 6, 6)), 1, 0, 1)
    geom = dc.active._check(p.input, p.offset, p.weight, None, 1, 0, 1)
    assert not _stencil.worth_it(_stencil.plan(p.offset, geom), geom)
    growth = 10**6 if fast else _stencil.MAX_PLANE_GROWTH
    with mock.patch.object(_stencil, "MAX_PLANE_GROWTH", growth), \
            mock.patch.object(dc.active, "deform_conv2d_backward",
                              wraps=dc.active.deform_conv2d_backward) as deform_path:
        out, g = forward(p), backward(p)
    assert deform_path.called != fast
    assert_matches_deform(p, out, g)


@given(p=active_problems())
@settings(max_examples=10)
def test_any_layout_and_inputs_never_modified(p):
    out, g = forward(p), backward(p)
    arrays = (p.input, p.offset, p.weight, p.bias, p.grad_output)
    copies = [None if a is None else a.copy() for a in arrays]
    for variant in layout_variants(*arrays):
        q = dataclasses.replace(p, **dict(zip(("input", "offset", "weight", "bias",
                                               "grad_output"), variant)))
        assert_same_up_to_summation_order(forward(q), out)
        for a, b in zip(backward(q), g):
            assert_same_up_to_summation_order(a, b)
        for a, c in zip(variant, copies):
            if a is not None:
                np.testing.assert_array_equal(a, c)


@given(p=active_problems(), needs=st.sets(st.sampled_from(ALL_GRADS)))
@settings(max_examples=10)
def test_needs_selects_gradients(p, needs):
    full = backward(p)
    g = backward(p, needs=needs)
    for name in ALL_GRADS:
        if name in needs:
            np.testing.assert_array_equal(getattr(g, name), getattr(full, name))
        else:
            assert getattr(g, name) is None


def test_empty_batch():
    x = np.zeros((0, 4, 5, 5), np.float32)
    w = np.ones((2, 4, 3, 3), np.float32)
    off = np.full(18, 0.5, np.float32)
    out = dc.active_conv2d(x, off, w, padding=1)
    assert out.shape == (0, 2, 5, 5) and out.dtype == np.float32
    g = dc.active_conv2d_backward(out, x, off, w, padding=1)
    assert g.input.shape == x.shape and g.offset.shape == (18,) and not g.offset.any()
    assert not g.weight.any() and not g.bias.any()


@pytest.mark.parametrize("bad, error, words", [
    (np.zeros((1, 18)), ValueError, ["offset", "1-D", "(1, 18)"]),
    (np.zeros(17), ValueError, ["offset.shape[0]", "18", "17"]),
    (np.zeros(0), ValueError, ["offset.shape[0]", "18", "got 0"]),
    (np.zeros(3 * 18), ValueError, ["divisible by the offset groups", "(3 ", "4"]),
    (np.zeros(18, np.float32), TypeError, ["offset", "float32"]),
    (np.zeros(18, np.int64), TypeError, ["offset", "int64"]),
    ([0.0] * 18, TypeError, ["offset", "numpy.asarray"]),
])
def test_validation_errors_name_the_argument(bad, error, words):
    x, w = np.zeros((1, 4, 5, 5)), np.zeros((2, 4, 3, 3))
    for call in (lambda: dc.active_conv2d(x, bad, w),
                 lambda: dc.active_conv2d_backward(np.zeros((1, 2, 3, 3)), x, bad, w)):
        with pytest.raises(error) as info:
            call()
        for word in words:
            assert word in str(info.value), (word, str(info.value))


def test_validation_of_the_rest():
    x, w, off = np.zeros((1, 4, 5, 5)), np.zeros((2, 4, 3, 3)), np.zeros(18)
    with pytest.raises(ValueError, match="grad_output"):
        dc.active_conv2d_backward(np.zeros((1, 2, 4, 4)), x, off, w)
    with pytest.raises(ValueError, match="unknown gradients \\['mask'\\]"):
        dc.active_conv2d_backward(np.zeros((1, 2, 3, 3)), x, off, w, needs=("mask",))
    with pytest.raises(TypeError, match="stride"):
        dc.active_conv2d(x, off, w, stride=1.5)
    with pytest.raises(ValueError, match="bias"):
        dc.active_conv2d(x, off, w, np.zeros(3))


def test_a_fraction_that_rounds_to_one_takes_the_next_cell():
    """-1e-9 in float32: dy - floor(dy) rounds to 1; the stencil takes the cell
    of 0 with fraction 0, as deform_conv2d does where y_base + dy rounds to
    y_base (here every sample with a gradient has y_base, x_base >= 1)."""
    rng = np.random.default_rng(10)
    go = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    go[:, :, 0, :] = 0
    go[:, :, :, 0] = 0
    p = ActiveProblem(rng.standard_normal((1, 2, 6, 6)).astype(np.float32),
                      np.array([-1e-9, -1e-9], np.float32),
                      rng.standard_normal((2, 2, 1, 1)).astype(np.float32), None, go, 1, 0, 1)
    g = backward(p)
    np.testing.assert_array_equal(g.offset, backward(p, offset=np.zeros(2, np.float32)).offset)
    deform = dc.deform_conv2d_backward(go, p.input, p.broadcast_offset, p.weight, **p.hyper)
    assert_same_up_to_summation_order(g.offset, deform.offset.sum(axis=(0, 2, 3)))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_input_pixels_reach_what_deform_conv2d_reaches(value):
    """The four taps touch an image pixel only for samples inside
    deform_conv2d's window, which reads the same four corners: a NaN or inf
    pixel spreads to the same outputs and gradients (0 * inf included)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 2, 5, 6))
    x[0, 1, 2, 3] = value
    x[0, 0, 0, 5] = value
    p = ActiveProblem(x, rng.uniform(-1.5, 1.5, 2 * 9), rng.standard_normal((3, 2, 3, 3)), None,
                      rng.standard_normal((1, 3, 5, 6)), 1, 1, 1)
    with np.errstate(invalid="ignore"):
        out, g = forward(p), backward(p)
        ref = deform_reference(p)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref[0]))
    np.testing.assert_array_equal(np.isnan(g.input), np.isnan(ref[1]))
    assert np.isnan(out).any()
    assert_close(out[np.isfinite(out)], ref[0][np.isfinite(ref[0])], dtype=np.float64)

"""deform_conv2d and deform_conv2d_backward against float64 loops, SciPy,
dense convolution, finite differences and their own linearity."""

import concurrent.futures
import dataclasses
from unittest import mock

import numpy as np
import pytest
import scipy.ndimage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import defconv_np as dc
from defconv_np import _cpu_blas
from tests.naive import (
    assert_close,
    assert_same_up_to_summation_order,
    naive_conv2d,
    naive_deform_conv2d,
    naive_deform_conv2d_grads,
    pair,
)
from tests.strategies import (
    FLOAT64_ONLY,
    DeformProblem,
    conv_geometries,
    deform_problems,
    layout_variants,
    numpy_generators,
    offsets,
)

ALL_GRADS = ("input", "offset", "mask", "weight", "bias")
NON_FINITE_OFFSETS = (np.nan, np.inf, -np.inf, 1e30, -1e30)


def forward(problem, **replace):
    """deform_conv2d on the problem's arrays, any of them replaced by keyword."""
    p = dataclasses.replace(problem, **replace)
    return dc.deform_conv2d(p.input, p.offset, p.weight, p.bias, mask=p.mask, **p.hyper)


def backward(problem, needs=ALL_GRADS, **replace):
    p = dataclasses.replace(problem, **replace)
    return dc.deform_conv2d_backward(
        p.grad_output, p.input, p.offset, p.weight, mask=p.mask, needs=needs, **p.hyper
    )


def naive_forward(problem):
    return naive_deform_conv2d(
        problem.input, problem.offset, problem.weight, problem.bias, mask=problem.mask, **problem.hyper
    )


def naive_grads(problem):
    return naive_deform_conv2d_grads(
        problem.grad_output, problem.input, problem.offset, problem.weight, mask=problem.mask, **problem.hyper
    )


def groups_of(problem):
    return problem.input.shape[1] // problem.weight.shape[1]


def loss(problem, **replace):
    """The scalar whose gradients backward computes: <deform_conv2d(...), grad_output>."""
    return float(np.vdot(forward(problem, **replace), problem.grad_output))


# ------------------------------------------------------------- against references


@given(problem=deform_problems())
def test_forward_matches_naive(problem):
    out = forward(problem)
    assert type(out) is np.ndarray and out.dtype == problem.dtype
    assert_close(out, naive_forward(problem), dtype=problem.dtype)


@given(problem=deform_problems())
def test_backward_matches_naive(problem):
    """All five gradients; offsets are sometimes whole numbers, where the offset
    gradient is defined by the floor-cell rule rather than by a limit."""
    grads = backward(problem)
    assert isinstance(grads, dc.DeformConv2dGrads)
    assert grads._fields == ALL_GRADS
    expected = naive_grads(problem)
    for name in ALL_GRADS:
        got = getattr(grads, name)
        if expected[name] is None:
            assert got is None, name
            continue
        assert type(got) is np.ndarray and got.dtype == problem.dtype, name
        assert_close(got, expected[name], dtype=problem.dtype, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_mask", [False, True])
def test_mid_sized_problem_matches_naive(dtype, with_mask):
    """Hypothesis favours the smallest shapes; this fixes one with every feature
    at once (groups, offset groups, stride, padding, dilation, several rows)."""
    rng = np.random.default_rng(5)
    hyper = dict(stride=(1, 2), padding=(2, 1), dilation=(2, 1))
    out_h, out_w = 7, 3  # (7 + 4 - 4 - 1) // 1 + 1, (6 + 2 - 2 - 1) // 2 + 1
    problem = deform_problem_from_arrays(
        input=rng.uniform(-1, 1, (2, 6, 7, 6)),
        # 2 offset groups; on the 1/1024 grid so float32 positions are exact.
        offset=offsets(rng, (2, 2 * 2 * 9, out_h, out_w), np.float64, style="uniform", bound=2.5),
        weight=rng.uniform(-1, 1, (4, 3, 3, 3)),  # 2 weight groups
        bias=rng.uniform(-1, 1, 4),
        mask=rng.uniform(-1, 1, (2, 2 * 9, out_h, out_w)) if with_mask else None,
        grad_output=rng.uniform(-1, 1, (2, 4, out_h, out_w)),
        dtype=dtype,
        **hyper,
    )
    assert_close(forward(problem), naive_forward(problem), dtype=dtype)
    grads, expected = backward(problem), naive_grads(problem)
    for name in ALL_GRADS:
        if expected[name] is None:
            assert getattr(grads, name) is None, name
        else:
            assert_close(getattr(grads, name), expected[name], dtype=dtype, err_msg=name)


def deform_problem_from_arrays(*, dtype, **fields):
    """A DeformProblem with every array cast to ``dtype``."""
    cast = {k: v.astype(dtype) if isinstance(v, np.ndarray) else v for k, v in fields.items()}
    return DeformProblem(**cast)


@given(problem=deform_problems(), unit_mask=st.booleans())
def test_zero_offsets_and_unit_mask_equal_dilated_conv2d(problem, unit_mask):
    zero = np.zeros_like(problem.offset)
    mask = np.ones(zero[:, ::2].shape, problem.dtype) if unit_mask else None
    problem = dataclasses.replace(problem, offset=zero, mask=mask)
    conv_args = dict(**problem.hyper, groups=groups_of(problem))
    expected = dc.conv2d(problem.input, problem.weight, problem.bias, **conv_args)
    assert_close(forward(problem), expected.astype(np.float64), dtype=problem.dtype)
    assert_close(
        forward(problem),
        naive_conv2d(problem.input, problem.weight, problem.bias, **conv_args),
        dtype=problem.dtype,
    )
    # Every sample sits on a pixel, so the input and weight gradients are the
    # dense ones too (the offset gradient is at a kink and not compared).
    grads = backward(problem, needs=("input", "weight", "bias"))
    dense = dc.conv2d_backward(problem.grad_output, problem.input, problem.weight, **conv_args)
    for name in ("input", "weight", "bias"):
        expected = getattr(dense, name).astype(np.float64)
        assert_close(getattr(grads, name), expected, dtype=problem.dtype, err_msg=name)


def padded_shifted_image(image, dy, dx, padding):
    """The zero-padded image, read (dy, dx) pixels further on:
    out[..., y, x] = image[..., y - ph + dy, x - pw + dx], zero where that is outside."""
    height, width = image.shape[-2:]
    ph, pw = padding
    out = np.zeros(image.shape[:-2] + (height + 2 * ph, width + 2 * pw), image.dtype)
    for y in range(out.shape[-2]):
        for x in range(out.shape[-1]):
            if 0 <= y - ph + dy < height and 0 <= x - pw + dx < width:
                out[..., y, x] = image[..., y - ph + dy, x - pw + dx]
    return out


@given(problem=deform_problems(), rng=numpy_generators())
def test_integer_offsets_equal_conv2d_of_shifted_input(problem, rng):
    """A whole-pixel offset shared by all kernel points and outputs of an offset
    group reads the zero-padded input shifted by it."""
    n_images, channels = problem.input.shape[:2]
    kernel_points = problem.weight.shape[2] * problem.weight.shape[3]
    offset_groups = problem.offset.shape[1] // (2 * kernel_points)
    per_group = channels // offset_groups
    shifts = rng.integers(-2, 3, size=(offset_groups, 2))
    # offset channel 2 * (g * kh * kw + k) is dy of kernel point k in group g, the next one dx.
    offset = np.zeros((n_images, offset_groups, kernel_points, 2, *problem.offset.shape[2:]), problem.dtype)
    offset[:] = shifts[None, :, None, :, None, None]
    offset = offset.reshape(problem.offset.shape)

    padding = pair(problem.padding)
    shifted = np.concatenate(
        [
            padded_shifted_image(problem.input[:, g * per_group : (g + 1) * per_group], *shifts[g], padding)
            for g in range(offset_groups)
        ],
        axis=1,
    )
    problem = dataclasses.replace(problem, offset=offset, mask=None)
    expected = naive_conv2d(
        shifted, problem.weight, problem.bias, problem.stride, 0, problem.dilation, groups=groups_of(problem)
    )
    assert_close(forward(problem), expected, dtype=problem.dtype)


@given(problem=deform_problems(geometry=conv_geometries(max_kernel=1), with_mask=False, with_bias=False))
def test_samples_equal_scipy_map_coordinates(problem):
    """With a 1x1 identity kernel the output is the bilinear sample itself; SciPy's
    order-1 map_coordinates with mode="grid-constant", cval=0 is the same
    zero-padded bilinear interpolation."""
    n_images, channels = problem.input.shape[:2]
    identity = np.eye(channels, dtype=problem.dtype)[:, :, None, None]
    problem = dataclasses.replace(problem, weight=identity)
    offset_groups = problem.offset.shape[1] // 2
    per_group = channels // offset_groups
    (sh, sw), (ph, pw) = pair(problem.stride), pair(problem.padding)
    out_h, out_w = problem.offset.shape[2:]
    rows = np.arange(out_h)[:, None] * sh - ph
    cols = np.arange(out_w)[None, :] * sw - pw

    expected = np.zeros((n_images, channels, out_h, out_w))
    for n in range(n_images):
        for c in range(channels):
            g = c // per_group
            y = rows + problem.offset[n, 2 * g].astype(np.float64)
            x = cols + problem.offset[n, 2 * g + 1].astype(np.float64)
            expected[n, c] = scipy.ndimage.map_coordinates(
                problem.input[n, c].astype(np.float64), [y, x], order=1, mode="grid-constant", cval=0.0
            )
    assert_close(forward(problem), expected, dtype=problem.dtype)


# ------------------------------------------------------------------- calculus


@given(
    problem=deform_problems(
        dtypes=FLOAT64_ONLY, with_mask=True, with_bias=True, offset_styles=("away_from_kinks",)
    ),
    rng=numpy_generators(),
)
def test_grads_match_central_finite_differences(problem, rng):
    """<grad, v> == (L(a + eps v) - L(a - eps v)) / 2 eps for a random direction v
    in each argument, and a few single offset entries on their own.

    Offsets keep sample coordinates >= 0.05 from whole numbers, so an eps of
    1e-6 never crosses a bilinear kink or the edge of the sampling window.
    """
    eps = 1e-6
    grads = backward(problem)
    arguments = {name: getattr(problem, name) for name in ALL_GRADS}
    for name in ALL_GRADS:
        value = arguments[name]
        direction = rng.uniform(-1, 1, value.shape)
        plus = loss(problem, **{name: value + eps * direction})
        minus = loss(problem, **{name: value - eps * direction})
        numeric = (plus - minus) / (2 * eps)
        analytic = float(np.vdot(getattr(grads, name), direction))
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-6, err_msg=name)

    for flat in rng.choice(problem.offset.size, size=min(4, problem.offset.size), replace=False):
        index = np.unravel_index(flat, problem.offset.shape)
        plus, minus = problem.offset.copy(), problem.offset.copy()
        plus[index] += eps
        minus[index] -= eps
        numeric = (loss(problem, offset=plus) - loss(problem, offset=minus)) / (2 * eps)
        np.testing.assert_allclose(
            grads.offset[index], numeric, rtol=1e-6, atol=1e-7, err_msg=f"offset{index}"
        )


@given(problem=deform_problems(dtypes=FLOAT64_ONLY, with_mask=True, with_bias=False), rng=numpy_generators())
def test_input_weight_and_mask_grads_are_adjoints(problem, rng):
    """deform_conv2d (without bias) is linear in input, in weight and in mask
    separately: <f(v), u> == <v, J^T u> with u = grad_output."""
    for name in ("input", "weight", "mask"):
        v = rng.uniform(-1, 1, getattr(problem, name).shape)
        lhs = np.vdot(forward(problem, **{name: v}), problem.grad_output)
        rhs = np.vdot(v, getattr(backward(problem, needs=(name,), **{name: v}), name))
        np.testing.assert_allclose(
            lhs, rhs, rtol=1e-10, atol=1e-10 * max(1.0, problem.grad_output.size), err_msg=name
        )


# ------------------------------------------------------------- API behaviour


@given(problem=deform_problems(), needs=st.sets(st.sampled_from(ALL_GRADS)))
def test_needs_selects_gradients(problem, needs):
    everything = backward(problem)
    some = backward(problem, needs=tuple(sorted(needs)))
    for name in ALL_GRADS:
        if name in needs and getattr(everything, name) is not None:
            np.testing.assert_array_equal(getattr(some, name), getattr(everything, name), err_msg=name)
        else:
            assert getattr(some, name) is None, name


@given(problem=deform_problems(with_mask=False))
def test_no_mask_is_unit_mask_without_mask_grad(problem):
    unit = np.ones(problem.offset[:, ::2].shape, problem.dtype)
    assert_same_up_to_summation_order(forward(problem), forward(problem, mask=unit))
    without, with_unit = backward(problem), backward(problem, mask=unit)
    assert without.mask is None
    assert with_unit.mask is not None and with_unit.mask.shape == unit.shape
    for name in ("input", "offset", "weight", "bias"):
        assert_same_up_to_summation_order(getattr(without, name), getattr(with_unit, name), err_msg=name)


# small_budget is function-scoped, but the budget it sets is the same for every example.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=deform_problems())
def test_chunked_equals_unchunked(problem, small_budget):
    chunked_out, chunked_grads = forward(problem), backward(problem)
    with mock.patch.object(dc.config, "column_budget_bytes", small_budget):
        whole_out, whole_grads = forward(problem), backward(problem)
    assert_same_up_to_summation_order(chunked_out, whole_out)
    for name, chunked, whole in zip(ALL_GRADS, chunked_grads, whole_grads):
        if whole is None:
            assert chunked is None, name
        else:
            assert_same_up_to_summation_order(chunked, whole, err_msg=name)


@given(problem=deform_problems(with_mask=True), rng=numpy_generators())
def test_non_finite_and_huge_offsets_read_zero(problem, rng):
    """NaN, +-inf and +-1e30 offsets sample 0, get 0 offset gradient, and leave
    everything else finite and exact."""
    n_images, channels, out_h, out_w = problem.offset.shape
    pairs = problem.offset.reshape(n_images, channels // 2, 2, out_h, out_w)
    broken = rng.random(pairs[:, :, 0].shape) < 0.4
    which = rng.integers(0, 2, size=broken.shape)  # dy or dx
    values = rng.choice(np.array(NON_FINITE_OFFSETS), size=broken.shape)
    pairs = pairs.copy()
    pairs[:, :, 0] = np.where(broken & (which == 0), values, pairs[:, :, 0])
    pairs[:, :, 1] = np.where(broken & (which == 1), values, pairs[:, :, 1])
    problem = dataclasses.replace(problem, offset=pairs.reshape(problem.offset.shape).astype(problem.dtype))

    out = forward(problem)
    assert np.all(np.isfinite(out))
    assert_close(out, naive_forward(problem), dtype=problem.dtype)
    grads = backward(problem)
    expected = naive_grads(problem)
    for name in ALL_GRADS:
        assert np.all(np.isfinite(getattr(grads, name))), name
        assert_close(getattr(grads, name), expected[name], dtype=problem.dtype, err_msg=name)
    offset_grad_pairs = grads.offset.reshape(pairs.shape)
    assert np.all(offset_grad_pairs[:, :, 0][broken] == 0)
    assert np.all(offset_grad_pairs[:, :, 1][broken] == 0)


# ------------------------------------------------ torchvision's edge and mask rules


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_offset_gradient_on_the_window_edge_is_torchvisions(dtype):
    """A sample exactly on y = -1 gets the floor-cell derivative towards row 0,
    as torchvision.ops.deform_conv2d gives (1.0 here, measured on its CPU and
    CUDA kernels); mmcv keeps 0 there."""
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], dtype)
    w = np.ones((1, 1, 1, 1), dtype)
    off = np.zeros((1, 2, 4, 4), dtype)
    go = np.zeros((1, 1, 4, 4), dtype)
    go[0, 0, 0, 1] = 1.0  # output (0, 1) samples (y, x) = (-1, 0)
    grads = dc.deform_conv2d_backward(go, x, off, w, padding=1)
    assert grads.offset[0, 0, 0, 1] == 1.0  # d/d(dy): towards x[0, 0, 0, 0] = 1
    assert grads.offset[0, 1, 0, 1] == 0.0  # d/d(dx): along row -1, all padding
    expected = naive_deform_conv2d_grads(go, x, off, w, padding=1)
    for name in ("input", "offset", "weight"):
        assert_close(getattr(grads, name), expected[name], dtype=dtype, err_msg=name)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**16), padding=st.sampled_from([1, 2]),
       zero=st.booleans(), with_mask=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]))
def test_integer_lattice_offsets_match_reference_and_one_sided_differences(
        seed, padding, zero, with_mask, dtype):
    """Zero and integer offsets with padding put samples exactly on -1, on the
    last row and column, and beyond: gradients match the float64 reference,
    and the offset gradient is the one-sided derivative from above (a step
    along a non-negative direction keeps every sample in its floor cell)."""
    rng = np.random.default_rng(seed)
    n, c, h, w, k = 2, 2, 3, 4, 3
    out_h, out_w = h + 2 * padding - k + 1, w + 2 * padding - k + 1
    shape = (n, 2 * k * k, out_h, out_w)
    off = np.zeros(shape) if zero else rng.integers(-2, 3, shape).astype(float)
    problem = DeformProblem(
        input=rng.uniform(-1, 1, (n, c, h, w)).astype(dtype), offset=off.astype(dtype),
        weight=rng.uniform(-1, 1, (3, c, k, k)).astype(dtype), bias=None,
        mask=rng.uniform(0.5, 1.5, (n, k * k, out_h, out_w)).astype(dtype) if with_mask else None,
        grad_output=rng.uniform(-1, 1, (n, 3, out_h, out_w)).astype(dtype),
        stride=1, padding=padding, dilation=1)
    grads = backward(problem)
    expected = naive_grads(problem)
    for name in ALL_GRADS:
        if expected[name] is None:
            assert getattr(grads, name) is None
        else:
            assert_close(getattr(grads, name), expected[name], dtype=dtype, err_msg=name)
    if dtype == np.float64:
        direction = rng.uniform(0, 1, off.shape)
        step = 1e-7
        base = loss(problem)
        above = loss(problem, offset=problem.offset + step * direction)
        one_sided = (above - base) / step
        assert one_sided == pytest.approx(np.vdot(grads.offset, direction), rel=1e-5, abs=1e-6)
    # the repro's situation at scale: taps on row or column -1 have gradients
    y_edge = (np.arange(out_h)[:, None] - padding + np.arange(k)[None, :]) == -1
    if zero and y_edge.any():
        assert np.any(grads.offset[:, 0::2] != 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mask_multiplies_the_finished_sample(dtype):
    """torchvision forms mask * (sum of weighted corners), not the sum of
    mask-weighted corners: a huge mask over corners that cancel gives 0, and an
    infinite mask on an inside sample with corners outside the image gives inf."""
    big = np.finfo(dtype).max / 4  # 1e38 in float32
    x = np.array([[[[10.0, -10.0]]]], dtype)
    w = np.ones((1, 1, 1, 1), dtype)
    off = np.zeros((1, 2, 1, 2), dtype)
    off[0, 1, 0, 0] = 0.5  # output (0, 0) samples x = 0.5: 0.5*10 + 0.5*(-10)
    off[0, 0, 0, 1] = -0.5  # output (0, 1) samples (y, x) = (-0.5, 1): half outside
    mask = np.array([[[[big, np.inf]]]], dtype)
    out = dc.deform_conv2d(x, off, w, mask=mask)
    assert out[0, 0, 0, 0] == 0.0
    assert out[0, 0, 0, 1] == -np.inf  # inf * (0.5 * -10)
    expected = naive_deform_conv2d(x, off, w, mask=np.array([[[[1e38, 1.0]]]]))
    assert expected[0, 0, 0, 0] == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_mask", [False, True])
def test_empty_batch(dtype, with_mask):
    x = np.zeros((0, 4, 5, 6), dtype)
    w = np.ones((6, 2, 3, 2), dtype)  # groups = 2
    b = np.ones(6, dtype)
    offset = np.zeros((0, 2 * 2 * 6, 3, 7), dtype)  # 2 offset groups, stride (2, 1), padding 1
    mask = np.ones((0, 2 * 6, 3, 7), dtype) if with_mask else None
    out = dc.deform_conv2d(x, offset, w, b, stride=(2, 1), padding=1, mask=mask)
    assert type(out) is np.ndarray and out.shape == (0, 6, 3, 7) and out.dtype == dtype
    grad_output = np.zeros(out.shape, dtype)
    grads = dc.deform_conv2d_backward(grad_output, x, offset, w, stride=(2, 1), padding=1, mask=mask)
    assert grads.input.shape == x.shape and grads.offset.shape == offset.shape
    if with_mask:
        assert grads.mask.shape == mask.shape
    else:
        assert grads.mask is None
    np.testing.assert_array_equal(grads.weight, np.zeros_like(w))
    np.testing.assert_array_equal(grads.bias, np.zeros_like(b))
    for grad in grads:
        assert grad is None or grad.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unusual_layouts_give_the_same_results(dtype):
    rng = np.random.default_rng(11)
    x = rng.uniform(-1, 1, (2, 4, 6, 5)).astype(dtype)
    w = rng.uniform(-1, 1, (4, 2, 3, 2)).astype(dtype)  # groups = 2
    b = rng.uniform(-1, 1, 4).astype(dtype)
    offset = rng.uniform(-2, 2, (2, 2 * 2 * 6, 3, 5)).astype(dtype)  # 2 offset groups
    mask = rng.uniform(-1, 1, (2, 2 * 6, 3, 5)).astype(dtype)
    go = rng.uniform(-1, 1, (2, 4, 3, 5)).astype(dtype)
    hyper = dict(stride=(2, 1), padding=(1, 1), dilation=(1, 2))
    out = dc.deform_conv2d(x, offset, w, b, mask=mask, **hyper)
    assert out.shape == go.shape
    grads = dc.deform_conv2d_backward(go, x, offset, w, mask=mask, **hyper)
    for vx, voffset, vw, vb, vmask, vgo in layout_variants(x, offset, w, b, mask, go):
        # NumPy reductions (the bias gradient) over a strided view may add in another order.
        assert_same_up_to_summation_order(dc.deform_conv2d(vx, voffset, vw, vb, mask=vmask, **hyper), out)
        variant_grads = dc.deform_conv2d_backward(vgo, vx, voffset, vw, mask=vmask, **hyper)
        for name, got, want in zip(ALL_GRADS, variant_grads, grads):
            assert_same_up_to_summation_order(got, want, err_msg=name)


@given(problem=deform_problems())
def test_inputs_are_never_modified(problem):
    names = ("input", "offset", "weight", "bias", "mask", "grad_output")
    arrays = {name: getattr(problem, name) for name in names}
    before = {name: None if a is None else a.copy() for name, a in arrays.items()}
    forward(problem)
    backward(problem)
    backward(problem, needs=("offset",))
    dense = dict(**problem.hyper, groups=groups_of(problem))
    dc.conv2d(problem.input, problem.weight, problem.bias, **dense)
    dc.conv2d_backward(problem.grad_output, problem.input, problem.weight, **dense)
    for name, a in arrays.items():
        if a is not None:
            np.testing.assert_array_equal(a, before[name], err_msg=name)


def test_concurrent_calls_match_serial_calls():
    rng = np.random.default_rng(3)
    problems = []
    for index in range(8):
        dtype = (np.float32, np.float64)[index % 2]
        n, c, h, w, o = 2, 4, 7, 6, 4
        problems.append(
            dict(
                input=rng.uniform(-1, 1, (n, c, h, w)).astype(dtype),
                offset=rng.uniform(-2, 2, (n, 2 * 2 * 9, h, w)).astype(dtype),
                weight=rng.uniform(-1, 1, (o, c // 2, 3, 3)).astype(dtype),
                mask=rng.uniform(-1, 1, (n, 2 * 9, h, w)).astype(dtype) if index % 4 < 2 else None,
                grad_output=rng.uniform(-1, 1, (n, o, h, w)).astype(dtype),
            )
        )

    def run(p):
        out = dc.deform_conv2d(p["input"], p["offset"], p["weight"], mask=p["mask"], padding=1)
        grads = dc.deform_conv2d_backward(
            p["grad_output"], p["input"], p["offset"], p["weight"], padding=1, mask=p["mask"]
        )
        return out, grads

    serial = [run(p) for p in problems]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        parallel_results = list(pool.map(run, problems * 3))
    for index, (out, grads) in enumerate(parallel_results):
        want_out, want_grads = serial[index % len(problems)]
        assert_same_up_to_summation_order(out, want_out, err_msg=str(index))
        for name, got, want in zip(ALL_GRADS, grads, want_grads):
            if want is None:
                assert got is None
            else:
                assert_same_up_to_summation_order(got, want, err_msg=f"{index} {name}")


def test_float32_plane_wider_than_2_pow_24_reaches_its_last_pixel():
    """W = 2**24 + 1 rounds down to 2**24 in float32; the window limit is the
    next float32 up, so the last pixel (x = 2**24) is still inside."""
    width = 2**24 + 1
    x = np.zeros((1, 1, 1, width), np.float32)
    x[0, 0, 0, -1] = 3.0
    w = np.ones((1, 1, 1, 1), np.float32)
    off = np.zeros((1, 2, 1, width), np.float32)
    out = dc.deform_conv2d(x, off, w)
    assert out[0, 0, 0, -1] == 3.0


# ------------------------------------------- the CPU's fused tiles (our own GEMM)


def _counting_tile_kernels(monkeypatch):
    """Count the calls of the fused tile kernels (``kernels/cpu/deform_tiles``)."""
    from defconv_np.kernels.cpu import deform_tiles

    counts = {"forward": 0, "backward": 0}
    for kind in counts:
        name = f"deform_{kind}_tiles"
        kernel = getattr(deform_tiles, name)

        def counted(*args, kernel=kernel, kind=kind):
            counts[kind] += 1
            return kernel(*args)

        monkeypatch.setattr(deform_tiles, name, counted)
    return counts


@pytest.mark.skipif(_cpu_blas.numba_gemm(np.float64) is None,
                    reason="this NumPy's BLAS has no CBLAS for our GEMM to fall back on")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_tiles_match_the_column_path_and_naive(monkeypatch, dtype):
    """With our own GEMM the CPU runs deform_conv2d in fused tiles of output
    rows: weight and offset groups, a mask, stride, dilation, non-finite
    offsets, tiles of one row and of several with a shorter last one, row
    chunks, subsets of the gradients, one lane: the float64 loops' numbers,
    and the column path's (NumPy's BLAS)."""
    import numba

    rng = np.random.default_rng(11)
    n, c, o, h, w = 3, 8, 6, 9, 7
    kh, kw, stride, padding, dilation = 3, 2, (2, 1), (1, 1), (1, 2)
    out_h, out_w = (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 1 + 1
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    offset = rng.uniform(-2, 2, (n, 2 * 2 * kh * kw, out_h, out_w)).astype(dtype)
    offset.reshape(-1)[rng.choice(offset.size, 12, replace=False)] = NON_FINITE_OFFSETS * 2 + (0, 0)
    mask = rng.uniform(-1, 2, (n, 2 * kh * kw, out_h, out_w)).astype(dtype)
    weight = rng.standard_normal((o, c // 2, kh, kw)).astype(dtype)  # 2 weight groups
    go = rng.standard_normal((n, o, out_h, out_w)).astype(dtype)
    hyper = dict(stride=stride, padding=padding, dilation=dilation)
    naive_out = naive_deform_conv2d(x, offset, weight, mask=mask, **hyper)
    naive = naive_deform_conv2d_grads(go, x, offset, weight, mask=mask, **hyper)
    subsets = [ALL_GRADS, ("weight",), ("input",), ("offset", "mask")]

    def run():
        return ([dc.deform_conv2d(x, offset, weight, mask=mask, **hyper)]
                + [dc.deform_conv2d_backward(go, x, offset, weight, mask=mask, needs=needs,
                                             **hyper) for needs in subsets])

    monkeypatch.setattr(dc.config, "cpu_blas", "numpy")
    counts = _counting_tile_kernels(monkeypatch)
    reference = run()
    assert counts == {"forward": 0, "backward": 0}
    monkeypatch.setattr(dc.config, "cpu_blas", "numba")
    row = out_w * kh * kw * c * np.dtype(dtype).itemsize  # one tile row, one buffer
    results = {}
    for label, tile_bytes, lane_bytes, threads in [
            ("one row", 1, 1 << 20, None),
            ("3 rows of 5", 3 * row, 1 << 20, None),
            ("row chunks", 2 * row, 2 * row, None),
            ("one lane", 3 * row, 1 << 20, 1)]:
        monkeypatch.setattr(dc.config, "cpu_deform_tile_bytes", tile_bytes)
        monkeypatch.setattr(dc.config, "cpu_lane_column_bytes", lane_bytes)
        before = numba.get_num_threads()
        numba.set_num_threads(threads or before)
        try:
            counts.update(forward=0, backward=0)
            results[label] = run()
        finally:
            numba.set_num_threads(before)
        assert counts["forward"] > 0 and counts["backward"] >= len(subsets), label
    tol = tolerance_of(dtype)
    for label, (out, *grads) in results.items():
        assert_close(out, naive_out, dtype=dtype, err_msg=label)
        np.testing.assert_allclose(out, reference[0], rtol=0, atol=tol * np.abs(out).max())
        for needs, got, ref in zip(subsets, grads, reference[1:]):
            for name in ALL_GRADS[:4]:
                value = getattr(got, name)
                if name not in needs:
                    assert value is None, (label, needs, name)
                    continue
                assert np.all(np.isfinite(value)), (label, name)
                assert_close(value, naive[name], dtype=dtype, err_msg=f"{label}: {name}")
                np.testing.assert_allclose(value, getattr(ref, name), rtol=0,
                                           atol=tol * np.abs(value).max(),
                                           err_msg=f"{label}: {name}")


def tolerance_of(dtype):
    """Agreement of two float summation orders, relative to the largest value."""
    return 1e-12 if np.dtype(dtype) == np.float64 else 2e-6


def test_fused_tiles_leave_a_single_image_on_the_column_path(monkeypatch):
    """One image on several lanes runs the column path, whose GEMMs then keep
    NumPy's BLAS with all its threads; the fused tiles would run on one core."""
    import numba

    if numba.get_num_threads() < 2:
        pytest.skip("the lanes need two Numba threads; this machine has one core")
    monkeypatch.setattr(dc.config, "cpu_blas", "numba")
    counts = _counting_tile_kernels(monkeypatch)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 4, 6, 6))
    offset = rng.uniform(-2, 2, (1, 18, 6, 6))
    weight = rng.standard_normal((5, 4, 3, 3))
    out = dc.deform_conv2d(x, offset, weight, padding=1)
    dc.deform_conv2d_backward(np.ones_like(out), x, offset, weight, padding=1)
    assert counts == {"forward": 0, "backward": 0}
    assert_close(out, naive_deform_conv2d(x, offset, weight, padding=1), dtype=np.float64)
    dc.deform_conv2d(np.concatenate([x, x]), np.concatenate([offset, offset]), weight,
                     padding=1)
    assert counts["forward"] == 2  # one run per image, one call each


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_tiles_on_an_empty_batch(monkeypatch, threads):
    """No images: empty results and zero-sized gradients on one lane as on two
    (the fused path takes only calls with chunks to run)."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < threads:
        pytest.skip(f"needs {threads} Numba threads")
    monkeypatch.setattr(dc.config, "cpu_blas", "numba")
    x = np.zeros((0, 4, 6, 5), np.float32)
    offset = np.zeros((0, 18, 6, 5), np.float32)
    mask = np.zeros((0, 9, 6, 5), np.float32)
    weight = np.ones((3, 4, 3, 3), np.float32)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        out = dc.deform_conv2d(x, offset, weight, padding=1, mask=mask)
        grads = dc.deform_conv2d_backward(np.zeros((0, 3, 6, 5), np.float32), x, offset,
                                          weight, padding=1, mask=mask)
    finally:
        numba.set_num_threads(before)
    assert out.shape == (0, 3, 6, 5)
    assert grads.input.shape == x.shape and grads.offset.shape == offset.shape
    assert grads.mask.shape == mask.shape
    np.testing.assert_array_equal(grads.weight, np.zeros_like(weight))

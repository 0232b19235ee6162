"""active_conv2d's CUDA kernels agree with its CPU kernels (which
test_active_conv2d.py holds to deform_conv2d): on a real GPU with CuPy
arrays, or under Numba's CUDA simulator with tiny shapes and launches of
several small blocks (grid-stride loops exercised)."""

import dataclasses
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import defconv_np as dc
from defconv_np import _stencil

from .cuda_mode import MODE, SKIP_REASON, to_device, to_host
from .strategies import ActiveProblem, active_problems, conv_geometries
from .test_cuda_kernels import _tol, small_launches, through_cuda  # noqa: F401 (fixture)

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(MODE is None, reason=SKIP_REASON)]

TINY = conv_geometries(min_batch=1, max_batch=2, max_channels_per_group=2, max_size=4,
                       max_kernel=2, max_padding=1)


def run(p, budget=None, needs=("input", "offset", "weight", "bias")):
    """Forward and backward through the CUDA kernels (on the device, or the simulator)."""
    d = {name: to_device(getattr(p, name)) for name in ("input", "offset", "weight", "bias",
                                                        "grad_output")}
    with through_cuda(), mock.patch.object(dc.config, "cuda_column_budget_bytes",
                                           budget or dc.config.cuda_column_budget_bytes):
        out = dc.active_conv2d(d["input"], d["offset"], d["weight"], d["bias"], **p.hyper)
        g = dc.active_conv2d_backward(d["grad_output"], d["input"], d["offset"], d["weight"],
                                      needs=needs, **p.hyper)
    return to_host(out), [to_host(a) for a in g]


def assert_matches_cpu(p, out, grads):
    tol = _tol(p.dtype)
    np.testing.assert_allclose(out, dc.active_conv2d(p.input, p.offset, p.weight, p.bias,
                                                     **p.hyper), **tol)
    expected = dc.active_conv2d_backward(p.grad_output, p.input, p.offset, p.weight, **p.hyper)
    for name, got, want in zip(dc.ActiveConv2dGrads._fields, grads, expected):
        np.testing.assert_allclose(got, want, err_msg=name, **tol)


@settings(max_examples=8, deadline=None)
@given(p=active_problems(geometry=TINY), chunked=st.booleans())
def test_active_conv2d_cuda_matches_cpu(p, chunked):
    out, grads = run(p, budget=64 if chunked else None)
    assert_matches_cpu(p, out, grads)


@pytest.mark.parametrize("value", [np.nan, np.inf, -1e30])
def test_non_finite_and_huge_offsets(value):
    rng = np.random.default_rng(7)
    offset = rng.uniform(-1.5, 1.5, 2 * 2 * 4)
    offset[2 * 5 + 1] = value
    p = ActiveProblem(rng.standard_normal((1, 2, 3, 4)), offset, rng.standard_normal((2, 2, 2, 2)),
                      None, rng.standard_normal((1, 2, 4, 5)), 1, 1, 1)
    out, grads = run(p)
    assert np.isfinite(out).all() and all(np.isfinite(a).all() for a in grads)
    assert grads[1][10] == 0 and grads[1][11] == 0
    assert_matches_cpu(p, out, grads)


def test_deterministic_and_needs():
    rng = np.random.default_rng(8)
    p = ActiveProblem(rng.standard_normal((2, 2, 4, 3)).astype(np.float32),
                      rng.uniform(-2, 2, 2 * 4).astype(np.float32),
                      rng.standard_normal((3, 2, 2, 2)).astype(np.float32), None,
                      rng.standard_normal((2, 3, 3, 2)).astype(np.float32), 1, 0, 1)
    first, again = run(p), run(p)
    np.testing.assert_array_equal(first[0], again[0])
    for a, b in zip(first[1], again[1]):
        np.testing.assert_array_equal(a, b)
    _, only_offset = run(p, needs=("offset",))
    assert only_offset[0] is None and only_offset[2] is None
    np.testing.assert_array_equal(only_offset[1], first[1][1])


def test_far_offsets_take_the_deformable_path_on_cuda():
    rng = np.random.default_rng(9)
    p = ActiveProblem(rng.standard_normal((1, 2, 4, 4)), np.array([3.5, 3.25, -4.5, -4.25]),
                      rng.standard_normal((2, 1, 1, 1)), None, rng.standard_normal((1, 2, 4, 4)),
                      1, 0, 1)
    for growth in (_stencil.MAX_PLANE_GROWTH, 10**6):
        with mock.patch.object(_stencil, "MAX_PLANE_GROWTH", growth):
            out, grads = run(dataclasses.replace(p))
        assert_matches_cpu(p, out, grads)

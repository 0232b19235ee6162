"""conv2d and conv2d_backward against float64 loops, SciPy and their own linearity."""

import os
from unittest import mock

import numpy as np
import pytest
import scipy.signal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import defconv_np as dc
from defconv_np import _cpu_blas, _cpu_conv
from defconv_np._geometry import conv_geometry
from tests.naive import assert_close, assert_same_up_to_summation_order, conv_output_size, naive_conv2d, pair
from tests.strategies import FLOAT64_ONLY, conv2d_problems, layout_variants, numpy_generators

ALL_GRADS = ("input", "weight", "bias")


@pytest.fixture(autouse=True, scope="module", params=["implicit", "columns"])
def cpu_conv_path(request):
    """Every test here runs on both CPU paths of conv2d: stride-1 convs as
    implicit GEMMs (forced for any group width, and through bands of a few
    rows), and everything through the column path, as where NumPy's CBLAS
    is not found."""
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "implicit":
            patch.setattr(dc.config, "cpu_implicit_conv_min_channels", 1)
            patch.setattr(dc.config, "cpu_conv_band_bytes", 512)
        else:
            patch.setattr(_cpu_conv, "gemm", lambda dtype: None)
        yield request.param


def scipy_conv2d(input, weight, bias, stride, padding, dilation, groups):
    """Second, independent reference: SciPy's correlation with the dilated kernel.

    A dilated kernel is the kernel with dilation - 1 zeros between taps; a
    strided output is every stride-th output of the stride-1 correlation.
    """
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    x = np.pad(np.asarray(input, np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    w = np.asarray(weight, np.float64)
    out_channels, channels_per_group, kh, kw = w.shape
    dilated = np.zeros((out_channels, channels_per_group, dh * (kh - 1) + 1, dw * (kw - 1) + 1))
    dilated[:, :, ::dh, ::dw] = w
    out_h = conv_output_size(x.shape[2] - 2 * ph, kh, sh, ph, dh)
    out_w = conv_output_size(x.shape[3] - 2 * pw, kw, sw, pw, dw)
    out_per_group = out_channels // groups
    out = np.zeros((x.shape[0], out_channels, out_h, out_w))
    for n in range(x.shape[0]):
        for o in range(out_channels):
            first = (o // out_per_group) * channels_per_group
            # 'valid' over the channel axis too: the kernel spans all of its group's channels.
            full = scipy.signal.correlate(
                x[n, first : first + channels_per_group], dilated[o], mode="valid", method="direct"
            )
            out[n, o] = full[0, ::sh, ::sw]
    if bias is not None:
        out += np.asarray(bias, np.float64)[None, :, None, None]
    return out


def backward(problem, grad_output=None, *, input=None, weight=None, needs=ALL_GRADS):
    return dc.conv2d_backward(
        problem.grad_output if grad_output is None else grad_output,
        problem.input if input is None else input,
        problem.weight if weight is None else weight,
        **problem.hyper,
        needs=needs,
    )


def forward(problem, *, input=None, weight=None, bias="problem"):
    return dc.conv2d(
        problem.input if input is None else input,
        problem.weight if weight is None else weight,
        problem.bias if isinstance(bias, str) else bias,
        **problem.hyper,
    )


@given(problem=conv2d_problems())
def test_forward_matches_naive(problem):
    out = forward(problem)
    assert out.dtype == problem.input.dtype
    assert type(out) is np.ndarray
    expected = naive_conv2d(problem.input, problem.weight, problem.bias, **problem.hyper)
    assert_close(out, expected, dtype=problem.input.dtype)


@given(problem=conv2d_problems())
def test_forward_matches_scipy(problem):
    expected = scipy_conv2d(problem.input, problem.weight, problem.bias, **problem.hyper)
    assert_close(forward(problem), expected, dtype=problem.input.dtype)


@given(problem=conv2d_problems(dtypes=FLOAT64_ONLY, with_bias=False), rng=numpy_generators())
def test_input_grad_is_adjoint_of_forward(problem, rng):
    # conv2d is linear in its input: <conv2d(v, w), u> == <v, J^T u>.
    v = rng.uniform(-1, 1, problem.input.shape)
    lhs = np.vdot(forward(problem, input=v), problem.grad_output)
    rhs = np.vdot(v, backward(problem, input=v, needs=("input",)).input)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-10 * max(1.0, v.size))


@given(problem=conv2d_problems(dtypes=FLOAT64_ONLY, with_bias=False), rng=numpy_generators())
def test_weight_grad_is_adjoint_of_forward(problem, rng):
    v = rng.uniform(-1, 1, problem.weight.shape)
    lhs = np.vdot(forward(problem, weight=v), problem.grad_output)
    rhs = np.vdot(v, backward(problem, weight=v, needs=("weight",)).weight)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-10 * max(1.0, problem.grad_output.size))


@given(problem=conv2d_problems())
def test_bias_grad_is_sum_of_grad_output(problem):
    grads = backward(problem, needs=("bias",))
    assert grads.bias.dtype == problem.input.dtype
    expected = problem.grad_output.astype(np.float64).sum(axis=(0, 2, 3))
    assert_close(grads.bias, expected, dtype=problem.input.dtype)


@given(problem=conv2d_problems(dtypes=FLOAT64_ONLY, with_bias=True), rng=numpy_generators())
def test_grads_match_central_finite_differences(problem, rng):
    """A few entries of each gradient against (L(a + eps) - L(a - eps)) / 2 eps."""
    eps = 1e-6
    grads = backward(problem)

    def loss(**arrays):
        return np.vdot(
            dc.conv2d(arrays["input"], arrays["weight"], arrays["bias"], **problem.hyper), problem.grad_output
        )

    arrays = {"input": problem.input, "weight": problem.weight, "bias": problem.bias}
    for name, analytic in zip(ALL_GRADS, grads):
        if arrays[name].size == 0:
            continue
        for flat in rng.choice(arrays[name].size, size=min(3, arrays[name].size), replace=False):
            index = np.unravel_index(flat, arrays[name].shape)
            plus, minus = dict(arrays), dict(arrays)
            plus[name], minus[name] = arrays[name].copy(), arrays[name].copy()
            plus[name][index] += eps
            minus[name][index] -= eps
            numeric = (loss(**plus) - loss(**minus)) / (2 * eps)
            np.testing.assert_allclose(
                analytic[index], numeric, rtol=1e-6, atol=1e-7, err_msg=f"{name}{index}"
            )


@given(problem=conv2d_problems(dtypes=(np.dtype(np.float32),), with_bias=True))
def test_float32_agrees_with_float64(problem):
    x64, w64, b64, go64 = (
        a.astype(np.float64) for a in (problem.input, problem.weight, problem.bias, problem.grad_output)
    )
    out32 = forward(problem)
    out64 = dc.conv2d(x64, w64, b64, **problem.hyper)
    assert out32.dtype == np.float32 and out64.dtype == np.float64
    assert_close(out32, out64, dtype=np.float32)
    grads32 = backward(problem)
    grads64 = dc.conv2d_backward(go64, x64, w64, **problem.hyper)
    for name, g32, g64 in zip(ALL_GRADS, grads32, grads64):
        assert g32.dtype == np.float32, name
        assert_close(g32, g64, dtype=np.float32, err_msg=name)


# small_budget is function-scoped, but the budget it sets is the same for every example.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=conv2d_problems())
def test_chunked_equals_unchunked(problem, small_budget):
    chunked_out, chunked_grads = forward(problem), backward(problem)
    with mock.patch.object(dc.config, "column_budget_bytes", small_budget):
        whole_out, whole_grads = forward(problem), backward(problem)
    assert_same_up_to_summation_order(chunked_out, whole_out)
    for name, chunked, whole in zip(ALL_GRADS, chunked_grads, whole_grads):
        assert_same_up_to_summation_order(chunked, whole, err_msg=name)


@given(problem=conv2d_problems(), needs=st.sets(st.sampled_from(ALL_GRADS)))
def test_needs_selects_gradients(problem, needs):
    everything = backward(problem)
    assert isinstance(everything, dc.Conv2dGrads)
    assert everything._fields == ALL_GRADS
    some = backward(problem, needs=tuple(sorted(needs)))
    for name in ALL_GRADS:
        if name in needs:
            np.testing.assert_array_equal(getattr(some, name), getattr(everything, name), err_msg=name)
        else:
            assert getattr(some, name) is None, name


@given(problem=conv2d_problems(with_bias=True))
def test_grad_shapes_and_dtypes(problem):
    grads = backward(problem)
    for name, grad, like in zip(ALL_GRADS, grads, (problem.input, problem.weight, problem.bias)):
        assert type(grad) is np.ndarray, name
        assert grad.shape == like.shape and grad.dtype == like.dtype, name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_batch(dtype):
    x = np.zeros((0, 4, 5, 6), dtype)
    w = np.ones((6, 2, 3, 2), dtype)
    b = np.ones(6, dtype)
    out = dc.conv2d(x, w, b, stride=(2, 1), padding=1, groups=2)
    assert out.shape == (0, 6, 3, 7) and out.dtype == dtype
    grads = dc.conv2d_backward(np.zeros(out.shape, dtype), x, w, stride=(2, 1), padding=1, groups=2)
    assert grads.input.shape == x.shape
    np.testing.assert_array_equal(grads.weight, np.zeros_like(w))
    np.testing.assert_array_equal(grads.bias, np.zeros_like(b))


def test_unusual_layouts_give_the_same_results():
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (2, 4, 6, 5))
    w = rng.uniform(-1, 1, (4, 2, 3, 2))
    go = rng.uniform(-1, 1, (2, 4, 3, 5))
    kwargs = dict(stride=(2, 1), padding=(1, 1), dilation=(1, 2), groups=2)
    out = dc.conv2d(x, w, None, **kwargs)
    assert out.shape == go.shape
    grads = dc.conv2d_backward(go, x, w, **kwargs)
    for variant in layout_variants(x, w, go):
        vx, vw, vgo = variant
        # NumPy reductions over a strided view may add in another order.
        assert_same_up_to_summation_order(dc.conv2d(vx, vw, None, **kwargs), out)
        for name, got, want in zip(ALL_GRADS, dc.conv2d_backward(vgo, vx, vw, **kwargs), grads):
            assert_same_up_to_summation_order(got, want, err_msg=name)



def _numpy_wheel_openblas():
    """Whether NumPy is a wheel with its bundled OpenBLAS (as pip installs it)."""
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    return os.path.isdir(libs) and any("openblas" in name for name in os.listdir(libs))


def test_implicit_path_taken_where_it_applies(cpu_conv_path):
    """NumPy's wheels ship a CBLAS the implicit path can call: it runs stride-1
    convs (writing the conv's result) and declines strided ones, and declines
    everything where that CBLAS is not found (the column path then runs)."""
    if _numpy_wheel_openblas():
        assert _cpu_blas.gemm(np.float32) is not None
        assert _cpu_blas.gemm(np.float64) is not None
    elif cpu_conv_path == "implicit" and _cpu_conv.gemm(np.float64) is None:
        pytest.skip("this NumPy's BLAS has no CBLAS the implicit path can call; "
                    "the column path runs (tested with the 'columns' parameter)")
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (2, 6, 7, 9))
    w = rng.uniform(-1, 1, (4, 3, 3, 2))
    for stride in (1, 2):
        geom = conv_geometry(x, w, None, pair(stride), (1, 0), (1, 1), 2)
        out = np.full(geom.out_shape, np.nan)
        bias = rng.uniform(-1, 1, 4)
        taken = _cpu_conv.implicit_conv2d_forward(x, w, bias, geom, out)
        assert taken == (cpu_conv_path == "implicit" and stride == 1)
        if taken:
            expected = naive_conv2d(x, w, bias, stride, (1, 0), 1, 2)
            assert_close(out, expected, dtype=np.float64)
        else:
            assert np.isnan(out).all()


@pytest.mark.parametrize("where", ["input", "weight"])
def test_non_finite_values_meet_only_their_own_taps(where):
    """An inf in the input (weight) gives the gradients the column path and
    the float64 reference sum give: finite wherever no tap reads it, inf
    where one does, no NaN from the implicit path's unused result columns."""
    x = np.ones((1, 2, 3, 5))
    w = np.ones((2, 2, 1, 3))
    go = np.ones((1, 2, 3, 3))
    if where == "input":
        x[0, 0, 1, 4] = np.inf
    else:
        w[0, 0, 0, 0] = np.inf
    grads = dc.conv2d_backward(go, x, w, needs=("input", "weight"))
    with mock.patch.object(_cpu_conv, "gemm", lambda dtype: None):
        expected = dc.conv2d_backward(go, x, w, needs=("input", "weight"))
    for name in ("input", "weight"):
        np.testing.assert_array_equal(getattr(grads, name), getattr(expected, name), err_msg=name)
    assert not np.isnan(grads.input).any() and not np.isnan(grads.weight).any()
    assert np.isinf(grads.weight if where == "input" else grads.input).any()

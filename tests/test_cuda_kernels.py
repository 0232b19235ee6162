"""The CUDA kernels agree with the CPU kernels (which the rest of the suite
checks against references): on a real GPU with CuPy arrays, or on CPU under
Numba's CUDA simulator with tiny shapes and a launch configuration patched so
that even these launch several blocks and exercise the grid-stride loops."""

import contextlib
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import defconv_np as dc

from .cuda_mode import MODE, SKIP_REASON, to_device, to_host

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(MODE is None, reason=SKIP_REASON),
    # The simulator runs kernels as Python on NumPy scalars, which warn where
    # compiled code silently makes NaN (inf - inf in the reflection maths).
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]


@pytest.fixture(autouse=True, scope="module")
def small_launches():
    """Under the simulator, tiny launches: several blocks and grid-stride loops."""
    with pytest.MonkeyPatch.context() as mp:
        if MODE == "simulator":
            mp.setattr(dc.config, "cuda_threads_per_block", 16)
            mp.setattr(dc.config, "cuda_max_blocks", 3)
        yield


@contextlib.contextmanager
def through_cuda():
    """Calls inside run on the CUDA kernels (NumPy arrays are routed there
    under the simulator; CuPy arrays go there anyway)."""
    with pytest.MonkeyPatch.context() as mp:
        if MODE == "simulator":
            mp.setattr(dc.config, "numpy_through_cuda_kernels", True)
        yield


def _tol(dtype):
    return dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)


@st.composite
def deform_cases(draw):
    groups = draw(st.integers(1, 2))
    offset_groups = draw(st.integers(1, 2))
    channels = groups * offset_groups * draw(st.integers(1, 2))
    out_ch = groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 1)), draw(st.integers(0, 1)))
    h = draw(st.integers(max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]), 5))
    w = draw(st.integers(max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]), 5))
    batch = draw(st.integers(1, 2))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**16))
    masked = draw(st.booleans())
    rng = np.random.default_rng(seed)
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    arrays = dict(
        input=rng.standard_normal((batch, channels, h, w)).astype(dtype),
        offset=rng.uniform(-2, 2, (batch, 2 * offset_groups * kh * kw, ho, wo)).astype(dtype),
        weight=rng.standard_normal((out_ch, channels // groups, kh, kw)).astype(dtype),
        mask=rng.uniform(0, 1, (batch, offset_groups * kh * kw, ho, wo)).astype(dtype)
        if masked else None,
        grad_output=rng.standard_normal((batch, out_ch, ho, wo)).astype(dtype),
    )
    return arrays, dict(stride=stride, padding=padding, dilation=dilation), groups


@settings(max_examples=12, deadline=None)
@given(case=deform_cases(), deterministic=st.booleans(),
       block=st.sampled_from([None, 1, 2, 3]))
def test_deform_conv2d_cuda_matches_cpu(case, deterministic, block):
    """``block`` channels per thread: with fewer than a group's channels, the
    channel blocks' offset and mask gradients are added atomically."""
    arrays, geometry, _ = case
    a = arrays
    expected_out = dc.deform_conv2d(a["input"], a["offset"], a["weight"], mask=a["mask"], **geometry)
    expected = dc.deform_conv2d_backward(a["grad_output"], a["input"], a["offset"], a["weight"],
                                         mask=a["mask"], **geometry)
    dev, host = to_device, to_host
    with through_cuda(), mock.patch.object(dc.config, "cuda_channels_per_thread", block):
        d = {k: dev(v) for k, v in a.items()}
        out = dc.deform_conv2d(d["input"], d["offset"], d["weight"], mask=d["mask"], **geometry)
        grads = dc.deform_conv2d_backward(d["grad_output"], d["input"], d["offset"], d["weight"],
                                          mask=d["mask"], deterministic=deterministic, **geometry)
    tol = _tol(a["input"].dtype)
    np.testing.assert_allclose(host(out), expected_out, **tol)
    for name in dc.DeformConv2dGrads._fields:
        got, want = getattr(grads, name), getattr(expected, name)
        assert (got is None) == (want is None), name
        if want is not None:
            np.testing.assert_allclose(host(got), want, err_msg=name, **tol)


@settings(max_examples=10, deadline=None)
@given(case=deform_cases())
def test_conv2d_cuda_matches_cpu(case):
    arrays, geometry, groups = case
    x, w, go = arrays["input"], arrays["weight"], arrays["grad_output"]
    expected_out = dc.conv2d(x, w, groups=groups, **geometry)
    expected = dc.conv2d_backward(go, x, w, groups=groups, **geometry)
    dev, host = to_device, to_host
    with through_cuda():
        out = dc.conv2d(dev(x), dev(w), groups=groups, **geometry)
        grads = dc.conv2d_backward(dev(go), dev(x), dev(w), groups=groups, **geometry)
    tol = _tol(x.dtype)
    np.testing.assert_allclose(host(out), expected_out, **tol)
    for name in dc.Conv2dGrads._fields:
        np.testing.assert_allclose(host(getattr(grads, name)), getattr(expected, name),
                                   err_msg=name, **tol)


@through_cuda()
def test_deterministic_input_grad_is_bitwise_repeatable():
    dev, host = to_device, to_host
    rng = np.random.default_rng(3)
    x = dev(rng.standard_normal((1, 2, 4, 4)).astype(np.float32))
    off = dev(rng.uniform(-0.6, 0.6, (1, 18, 4, 4)).astype(np.float32))
    w = dev(rng.standard_normal((3, 2, 3, 3)).astype(np.float32))
    go = dev(rng.standard_normal((1, 3, 4, 4)).astype(np.float32))
    runs = [host(dc.deform_conv2d_backward(go, x, off, w, padding=1, deterministic=True,
                                           needs=("input",)).input) for _ in range(3)]
    assert all(np.array_equal(runs[0], r) for r in runs[1:])


@through_cuda()
def test_chunked_columns_match_unchunked(monkeypatch):
    """A tiny column budget splits over images and rows; results are unchanged."""
    dev, host = to_device, to_host
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2, 5, 4))
    off = rng.uniform(-1.5, 1.5, (3, 18, 5, 4))
    w = rng.standard_normal((2, 2, 3, 3))
    mask = rng.uniform(size=(3, 9, 5, 4))
    go = rng.standard_normal((3, 2, 5, 4))
    args = [dev(a) for a in (go, x, off, w)]
    whole = dc.deform_conv2d_backward(*args, padding=1, mask=dev(mask))
    monkeypatch.setattr(dc.config, "cuda_column_budget_bytes", 2 * 18 * 8 * 4)  # a few rows
    chunked = dc.deform_conv2d_backward(*args, padding=1, mask=dev(mask))
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(host(b), host(a), rtol=1e-12, atol=1e-12)


@through_cuda()
def test_non_finite_offsets_are_safe():
    dev, host = to_device, to_host
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 1, 4, 4))
    off = rng.uniform(-1, 1, (1, 2, 4, 4))
    off[0, 0, 0, :] = [np.nan, np.inf, -np.inf, 1e30]
    w = np.ones((1, 1, 1, 1))
    out = host(dc.deform_conv2d(dev(x), dev(off), dev(w)))
    assert np.all(np.isfinite(out))
    assert np.all(out[0, 0, 0, :] == 0)
    grads = dc.deform_conv2d_backward(dev(np.ones_like(out)), dev(x), dev(off), dev(w))
    assert np.all(host(grads.offset)[0, :, 0, :] == 0)
    assert np.all(np.isfinite(host(grads.input)))


@settings(max_examples=12, deadline=None)
@given(mode=st.sampled_from(["bilinear", "nearest"]),
       padding_mode=st.sampled_from(["zeros", "border", "reflection"]),
       align_corners=st.booleans(), deterministic=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_grid_sample_cuda_matches_cpu(mode, padding_mode, align_corners, deterministic, dtype,
                                      seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    grid = rng.uniform(-1.3, 1.3, (2, 3, 4, 2)).astype(dtype)
    grid[0, 0, 0] = [np.nan, 0.5]
    grid[1, 2, 3] = [1e30, -np.inf]
    go = rng.standard_normal((2, 3, 3, 4)).astype(dtype)
    args = (mode, padding_mode, align_corners)
    expected = [dc.grid_sample(x, grid, *args), *dc.grid_sample_backward(go, x, grid, *args)]
    with through_cuda():
        got = [dc.grid_sample(to_device(x), to_device(grid), *args),
               *dc.grid_sample_backward(to_device(go), to_device(x), to_device(grid), *args,
                                        deterministic=deterministic)]
    for name, a, b in zip(("output", "input", "grid"), got, expected):
        np.testing.assert_allclose(to_host(a), b, err_msg=name, **_tol(dtype))


def test_read_only_inputs(monkeypatch):
    rng = np.random.default_rng(6)
    arrays = [rng.standard_normal((1, 2, 4, 4)), rng.uniform(-1, 1, (1, 18, 4, 4)),
              rng.standard_normal((2, 2, 3, 3)), rng.uniform(size=(1, 9, 4, 4)),
              rng.standard_normal((1, 2, 4, 4)), rng.uniform(-1, 1, (1, 3, 5, 2))]
    expected_out = dc.deform_conv2d(*arrays[:3], padding=1, mask=arrays[3])
    expected = dc.deform_conv2d_backward(arrays[4], *arrays[:3], padding=1, mask=arrays[3])
    go_gs = rng.standard_normal((1, 2, 3, 5))
    expected_gs = dc.grid_sample_backward(go_gs, arrays[0], arrays[5])
    for a in arrays:
        a.flags.writeable = False
    with through_cuda():
        x, off, w, mask, go, grid = (to_device(a) for a in arrays)
        out = dc.deform_conv2d(x, off, w, padding=1, mask=mask)
        grads = dc.deform_conv2d_backward(go, x, off, w, padding=1, mask=mask)
        grads_gs = dc.grid_sample_backward(to_device(go_gs), x, grid)
    np.testing.assert_allclose(to_host(out), expected_out, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(to_host(got), want, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads_gs, expected_gs):
        np.testing.assert_allclose(to_host(got), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torchvision_edge_and_mask_rules(dtype, deterministic):
    """The CUDA kernels follow torchvision where the CPU kernels do: the offset
    gradient of a sample on y = -1 is the derivative towards row 0, and the
    mask multiplies the finished sample."""
    dev, host = to_device, to_host
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], dtype)
    w = np.ones((1, 1, 1, 1), dtype)
    go = np.zeros((1, 1, 4, 4), dtype)
    go[0, 0, 0, 1] = 1.0
    with through_cuda():
        grads = dc.deform_conv2d_backward(dev(go), dev(x), dev(np.zeros((1, 2, 4, 4), dtype)),
                                          dev(w), padding=1, deterministic=deterministic)
    assert host(grads.offset)[0, 0, 0, 1] == 1.0
    assert host(grads.offset)[0, 1, 0, 1] == 0.0

    x = np.array([[[[10.0, -10.0]]]], dtype)
    off = np.zeros((1, 2, 1, 2), dtype)
    off[0, 1, 0, 0] = 0.5
    off[0, 0, 0, 1] = -0.5
    mask = np.array([[[[np.finfo(dtype).max / 4, np.inf]]]], dtype)
    with through_cuda():
        out = host(dc.deform_conv2d(dev(x), dev(off), dev(w), mask=dev(mask)))
    assert out[0, 0, 0, 0] == 0.0
    assert out[0, 0, 0, 1] == -np.inf


def _attention_case(rng, dtype, shapes=((3, 4), (2, 2), (1, 1)), batch=2, queries=3, heads=2,
                    depth=3, points=2):
    sizes = [h * w for h, w in shapes]
    levels = len(shapes)
    value = rng.standard_normal((batch, sum(sizes), heads, depth)).astype(dtype)
    loc = rng.uniform(-0.2, 1.2, (batch, queries, heads, levels, points, 2)).astype(dtype)
    loc[0, 0, 0, 0, 0] = [np.nan, 0.5]
    loc[-1, -1, -1, -1, -1] = [1e30, -np.inf]
    # exactly on the window's edge x = -1 of level 0 (W = 4): PyTorch's rule
    loc[0, 1, 0, 0, 0] = [-0.125, 0.5]
    a = rng.uniform(0, 1, (batch, queries, heads, levels, points)).astype(dtype)
    go = rng.standard_normal((batch, queries, heads * depth)).astype(dtype)
    starts = np.array([sum(sizes[:i]) for i in range(levels)])
    return go, value, np.array(shapes), starts, loc, a


@settings(max_examples=8, deadline=None)
@given(deterministic=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]),
       needs=st.sets(st.sampled_from(dc.MSDeformAttnGrads._fields), min_size=1),
       seed=st.integers(0, 2**16))
def test_ms_deform_attn_cuda_matches_cpu(deterministic, dtype, needs, seed):
    go, value, shapes, starts, loc, a = _attention_case(np.random.default_rng(seed), dtype)
    expected_out = dc.ms_deform_attn(value, shapes, starts, loc, a)
    expected = dc.ms_deform_attn_backward(go, value, shapes, starts, loc, a, needs=needs)
    dev, host = to_device, to_host
    with through_cuda():
        out = dc.ms_deform_attn(dev(value), shapes, starts, dev(loc), dev(a))
        grads = dc.ms_deform_attn_backward(dev(go), dev(value), dev(shapes), starts, dev(loc),
                                           dev(a), needs=needs, deterministic=deterministic)
    np.testing.assert_allclose(host(out), expected_out, **_tol(dtype))
    for name in dc.MSDeformAttnGrads._fields:
        got, want = getattr(grads, name), getattr(expected, name)
        assert (got is None) == (want is None), name
        if want is not None:
            np.testing.assert_allclose(host(got), want, err_msg=name, **_tol(dtype))


@through_cuda()
def test_ms_deform_attn_deterministic_value_grad_is_bitwise_repeatable():
    go, value, shapes, starts, loc, a = _attention_case(np.random.default_rng(7), np.float32)
    runs = [to_host(dc.ms_deform_attn_backward(
        *(to_device(x) for x in (go, value)), shapes, starts, to_device(loc), to_device(a),
        needs=("value",), deterministic=True).value) for _ in range(2)]
    assert np.array_equal(runs[0], runs[1])
    assert np.all(np.isfinite(runs[0]))

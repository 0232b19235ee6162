"""The PyTorch adapter (defconv_np.torch): gradients, equality with the NumPy
functions, modules, torch.compile, autocast, errors, and DistributedDataParallel."""

import math
import os
import pathlib
import runpy
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch adapter tests need PyTorch")

import defconv_np as dc  # noqa: E402
import defconv_np.torch as dct  # noqa: E402
from tests import torch_ddp_worker  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
F64 = torch.float64


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=generator(seed), dtype=dtype)


def fractional_offsets(shape, seed=0, dtype=F64):
    """Offsets whose fractional parts lie in [0.2, 0.8]: with integer base
    positions, no sample sits near a lattice line, where the bilinear sample
    has kinks and finite differences are invalid."""
    g = generator(seed)
    whole = torch.randint(-1, 2, shape, generator=g).to(dtype)
    return whole + 0.2 + 0.6 * torch.rand(*shape, generator=g, dtype=dtype)


def smooth_grid(n, hg, wg, h, w, seed=0, dtype=F64):
    """A grid (align_corners=False) whose pixel coordinates lie strictly inside
    the image, with fractional parts in [0.2, 0.8]: away from every kink of
    bilinear sampling, clipping and reflection."""
    g = generator(seed)
    px = torch.randint(0, w - 1, (n, hg, wg), generator=g) + 0.2 + 0.6 * torch.rand(
        n, hg, wg, generator=g, dtype=dtype)
    py = torch.randint(0, h - 1, (n, hg, wg), generator=g) + 0.2 + 0.6 * torch.rand(
        n, hg, wg, generator=g, dtype=dtype)
    return torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), dim=-1).to(dtype)


def numpy_of(t):
    return None if t is None else t.detach().numpy()


def deform_case(dtype=F64, masked=True, groups=1, offset_groups=1, stride=1, dilation=1, seed=0,
                n=2, h=6, w=7):
    c, o, k, pad = 4, 6, 3, 1
    out_h = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    out_w = (w + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    x = randn(n, c, h, w, seed=seed, dtype=dtype)
    offset = fractional_offsets((n, 2 * offset_groups * k * k, out_h, out_w), seed + 1, dtype)
    weight = randn(o, c // groups, k, k, seed=seed + 2, dtype=dtype)
    bias = randn(o, seed=seed + 3, dtype=dtype)
    mask = (torch.rand(n, offset_groups * k * k, out_h, out_w, generator=generator(seed + 4),
                       dtype=dtype) if masked else None)
    kwargs = dict(stride=stride, padding=pad, dilation=dilation)
    return (x, offset, weight, bias, mask), kwargs


def attn_case(dtype=F64, n=2, lq=3, heads=2, depth=3, shapes=((4, 5), (2, 3)), points=2,
              seed=0):
    """value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
    with every sample's pixel coordinates strictly inside its level and their
    fractional parts in [0.2, 0.8] (away from the kinks of bilinear sampling)."""
    g = generator(seed)
    sizes = [h * w for h, w in shapes]
    value = randn(n, sum(sizes), heads, depth, seed=seed + 1, dtype=dtype)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    level_start_index = torch.tensor([sum(sizes[:i]) for i in range(len(shapes))],
                                     dtype=torch.int64)
    locations = torch.empty(n, lq, heads, len(shapes), points, 2, dtype=dtype)
    for level, (h, w) in enumerate(shapes):
        for axis, size in ((0, w), (1, h)):
            shape = (n, lq, heads, points)
            pixel = (torch.randint(0, size, shape, generator=g) - 0.5 + 0.2
                     + 0.6 * torch.rand(*shape, generator=g, dtype=dtype))
            pixel = pixel.clamp(min=-0.8)  # keep -1 <= x (the window's edge) far off
            locations[:, :, :, level, :, axis] = (pixel + 0.5) / size
    weights = torch.rand(n, lq, heads, len(shapes), points, generator=g, dtype=dtype)
    return value, spatial_shapes, level_start_index, locations, weights


def active_case(dtype=F64, groups=1, offset_groups=1, seed=0, n=2, c=4, o=6, h=6, w=7):
    """input, offset, weight, bias for a 3x3 kernel; offsets with fractional
    parts in [0.2, 0.8] (away from kinks)."""
    x = randn(n, c, h, w, seed=seed, dtype=dtype)
    offset = fractional_offsets((2 * offset_groups * 9,), seed + 1, dtype)
    weight = randn(o, c // groups, 3, 3, seed=seed + 2, dtype=dtype)
    bias = randn(o, seed=seed + 3, dtype=dtype)
    return x, offset, weight, bias


def requiring_grad(tensors):
    return tuple(None if t is None else t.clone().requires_grad_() for t in tensors)


# --- gradients ------------------------------------------------------------------------


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("groups, offset_groups, stride, dilation",
                         [(1, 1, 1, 1), (2, 2, 2, 1), (1, 2, 1, 2)])
def test_deform_conv2d_gradcheck(masked, groups, offset_groups, stride, dilation):
    tensors, kw = deform_case(masked=masked, groups=groups, offset_groups=offset_groups,
                              stride=stride, dilation=dilation, n=1, h=5, w=6)
    x, offset, weight, bias, mask = requiring_grad(tensors)
    if masked:
        def fn(x, offset, weight, bias, mask):
            return dct.deform_conv2d(x, offset, weight, bias, mask=mask, **kw)
        inputs = (x, offset, weight, bias, mask)
    else:
        def fn(x, offset, weight, bias):
            return dct.deform_conv2d(x, offset, weight, bias, **kw)
        inputs = (x, offset, weight, bias)
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("groups, stride, padding, dilation", [(1, 1, 1, 1), (2, 2, 0, 2)])
def test_conv2d_gradcheck(groups, stride, padding, dilation):
    x = randn(2, 4, 7, 6, seed=1).requires_grad_()
    weight = randn(6, 4 // groups, 3, 2, seed=2).requires_grad_()
    bias = randn(6, seed=3).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, w, b: dct.conv2d(x, w, b, stride, padding, dilation, groups), (x, weight, bias))


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_grid_sample_gradcheck(padding_mode):
    x = randn(2, 3, 5, 6, seed=1).requires_grad_()
    grid = smooth_grid(2, 4, 3, 5, 6, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, g: dct.grid_sample(x, g, padding_mode=padding_mode, align_corners=False),
        (x, grid))


@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_grid_gradcheck(align_corners):
    theta = randn(2, 2, 3, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: dct.affine_grid(t, (2, 3, 4, 5), align_corners=align_corners), (theta,))


def test_grid_sample_through_affine_grid_gradcheck():
    """The spatial transformer chain: theta -> grid -> sample, near the identity."""
    x = randn(1, 2, 6, 6, seed=1).requires_grad_()
    theta = (torch.tensor([[[0.83, 0.11, 0.07], [-0.09, 0.91, 0.03]]], dtype=F64)
             .requires_grad_())
    assert torch.autograd.gradcheck(
        lambda x, t: dct.grid_sample(x, dct.affine_grid(t, (1, 2, 5, 5)), padding_mode="border"),
        (x, theta))


def test_ms_deform_attn_gradcheck():
    value, shapes, starts, locations, weights = attn_case(n=1, lq=2)
    inputs = requiring_grad((value, locations, weights))
    assert torch.autograd.gradcheck(
        lambda v, loc, a: dct.ms_deform_attn(v, shapes, starts, loc, a), inputs)


@pytest.mark.parametrize("groups, offset_groups, stride, padding, dilation",
                         [(1, 1, 1, 1, 1), (2, 2, 2, 0, 2)])
def test_active_conv2d_gradcheck(groups, offset_groups, stride, padding, dilation):
    tensors = active_case(groups=groups, offset_groups=offset_groups, n=1, h=6, w=6)
    kw = dict(stride=stride, padding=padding, dilation=dilation)
    assert torch.autograd.gradcheck(lambda x, o, w, b: dct.active_conv2d(x, o, w, b, **kw),
                                    requiring_grad(tensors))


@pytest.mark.parametrize("op, args", [
    ("deform_conv2d", lambda: (*deform_case()[0][:4], [1, 1], [1, 1], [1, 1],
                               deform_case()[0][4])),
    ("conv2d", lambda: (randn(2, 4, 5, 5), randn(4, 2, 3, 3, seed=1), randn(4, seed=2),
                        [1, 2], [1, 0], [1, 1], 2)),
    ("grid_sample", lambda: (randn(2, 3, 5, 6), smooth_grid(2, 3, 4, 5, 6), "bilinear",
                             "reflection", False)),
    ("affine_grid", lambda: (randn(2, 2, 3), [2, 3, 4, 5], True)),
    ("ms_deform_attn", lambda: attn_case()),
    ("active_conv2d", lambda: (*active_case(groups=2, offset_groups=2), [2, 1], [1, 0], [1, 2])),
])
def test_opcheck(op, args):
    """torch.library's own checks: schema, fake kernel against the real one,
    autograd registration, and tracing under AOT dispatch with dynamic shapes."""
    inputs = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
                   else a for a in args())
    results = torch.library.opcheck(getattr(torch.ops.defconv_np, op).default, inputs)
    assert set(results.values()) == {"SUCCESS"}, results


@pytest.mark.parametrize("wanted", [("input",), ("offset",), ("mask",), ("weight", "bias"),
                                    ("offset", "mask")])
def test_backward_asks_only_for_the_gradients_autograd_needs(monkeypatch, wanted):
    calls = []
    original = dc.deform_conv2d_backward

    def recording(*args, needs, **kwargs):
        calls.append(tuple(needs))
        return original(*args, needs=needs, **kwargs)

    monkeypatch.setattr(dc, "deform_conv2d_backward", recording)
    tensors, kw = deform_case()
    names = ("input", "offset", "weight", "bias", "mask")
    inputs = {n: t.clone().requires_grad_(n in wanted) for n, t in zip(names, tensors)}
    out = dct.deform_conv2d(inputs["input"], inputs["offset"], inputs["weight"], inputs["bias"],
                            mask=inputs["mask"], **kw)
    out.sum().backward()
    assert calls == [tuple(n for n in dc.DeformConv2dGrads._fields if n in wanted)]
    assert all((inputs[n].grad is not None) == (n in wanted) for n in names)


@pytest.mark.parametrize("op, wanted", [
    ("ms_deform_attn", ("value",)), ("ms_deform_attn", ("sampling_locations",)),
    ("ms_deform_attn", ("value", "attention_weights")),
    ("active_conv2d", ("offset",)), ("active_conv2d", ("input", "bias")),
    ("active_conv2d", ("weight",)),
])
def test_new_ops_ask_only_for_the_gradients_autograd_needs(monkeypatch, op, wanted):
    calls = []
    original = getattr(dc, f"{op}_backward")

    def recording(*args, needs, **kwargs):
        calls.append(tuple(needs))
        return original(*args, needs=needs, **kwargs)

    monkeypatch.setattr(dc, f"{op}_backward", recording)
    if op == "ms_deform_attn":
        value, shapes, starts, locations, weights = attn_case()
        names = dc.MSDeformAttnGrads._fields
        inputs = {n: t.clone().requires_grad_(n in wanted)
                  for n, t in zip(names, (value, locations, weights))}
        out = dct.ms_deform_attn(inputs["value"], shapes, starts, inputs["sampling_locations"],
                                 inputs["attention_weights"])
    else:
        names = dc.ActiveConv2dGrads._fields
        inputs = {n: t.clone().requires_grad_(n in wanted)
                  for n, t in zip(names, active_case())}
        out = dct.active_conv2d(*inputs.values(), padding=1)
    out.sum().backward()
    assert calls == [tuple(n for n in names if n in wanted)]
    assert all((inputs[n].grad is not None) == (n in wanted) for n in names)


@pytest.mark.parametrize("deterministic", [False, True])
def test_deterministic_algorithms_reach_the_backward_functions(monkeypatch, deterministic):
    seen = []
    for name in ("deform_conv2d_backward", "grid_sample_backward"):
        original = getattr(dc, name)

        def recording(*args, deterministic, _original=original, **kwargs):
            seen.append(deterministic)
            return _original(*args, deterministic=deterministic, **kwargs)

        monkeypatch.setattr(dc, name, recording)
    tensors, kw = deform_case()
    x, offset, weight, bias, mask = requiring_grad(tensors)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        dct.deform_conv2d(x, offset, weight, bias, mask=mask, **kw).sum().backward()
        dct.grid_sample(x, smooth_grid(2, 3, 3, 6, 7)).sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)
    assert seen == [deterministic, deterministic]


# --- the same numbers as the NumPy functions ------------------------------------------


def non_contiguous(t):
    """The same values, in a non-contiguous layout (last two axes transposed in
    memory; a vector as every other element of a longer one)."""
    if t.dim() == 1:
        return torch.stack((t, torch.zeros_like(t)), dim=1)[:, 0]
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


@pytest.mark.parametrize("layout", [lambda t: t, non_contiguous])
@pytest.mark.parametrize("masked", [False, True])
def test_deform_conv2d_equals_numpy(masked, layout):
    tensors, kw = deform_case(dtype=torch.float32, masked=masked, groups=2, offset_groups=2)
    tensors = tuple(None if t is None else layout(t) for t in tensors)
    x, offset, weight, bias, mask = requiring_grad(tensors)
    out = dct.deform_conv2d(x, offset, weight, bias, mask=mask, **kw)
    grad_out = randn(*out.shape, seed=9, dtype=torch.float32)
    out.backward(grad_out)
    arrays = [numpy_of(t) for t in tensors]
    expected = dc.deform_conv2d(*arrays[:4], mask=arrays[4], **kw)
    grads = dc.deform_conv2d_backward(grad_out.numpy(), *arrays[:3], mask=arrays[4], **kw)
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(out.detach().numpy(), expected)
    for got, want in ((x, grads.input), (offset, grads.offset), (weight, grads.weight),
                      (bias, grads.bias), (mask, grads.mask)):
        if got is not None:
            np.testing.assert_array_equal(got.grad.numpy(), want)


@pytest.mark.parametrize("layout", [lambda t: t, non_contiguous])
def test_conv2d_equals_numpy(layout):
    x = layout(randn(2, 4, 9, 8, dtype=torch.float32)).requires_grad_()
    weight = layout(randn(6, 2, 3, 3, seed=1, dtype=torch.float32)).requires_grad_()
    bias = randn(6, seed=2, dtype=torch.float32).requires_grad_()
    kw = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    out = dct.conv2d(x, weight, bias, **kw)
    grad_out = randn(*out.shape, seed=3, dtype=torch.float32)
    out.backward(grad_out)
    arrays = numpy_of(x), numpy_of(weight)
    np.testing.assert_array_equal(out.detach().numpy(), dc.conv2d(*arrays, numpy_of(bias), **kw))
    grads = dc.conv2d_backward(grad_out.numpy(), *arrays, **kw)
    np.testing.assert_array_equal(x.grad.numpy(), grads.input)
    np.testing.assert_array_equal(weight.grad.numpy(), grads.weight)
    np.testing.assert_array_equal(bias.grad.numpy(), grads.bias)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_sample_and_affine_grid_equal_numpy(mode, padding_mode, align_corners):
    x = non_contiguous(randn(2, 3, 6, 7, dtype=torch.float32)).requires_grad_()
    theta = (torch.tensor([[[1.1, 0.3, 0.2], [-0.2, 0.9, -0.1]], [[0.7, 0, 0], [0, 1.3, 0.4]]])
             .requires_grad_())
    size = torch.Size((2, 3, 5, 4))
    grid = dct.affine_grid(theta, size, align_corners=align_corners)
    grid.retain_grad()
    out = dct.grid_sample(x, grid, mode, padding_mode, align_corners)
    grad_out = randn(*out.shape, seed=5, dtype=torch.float32)
    out.backward(grad_out)
    grid_np = dc.affine_grid(numpy_of(theta), tuple(size), align_corners)
    np.testing.assert_array_equal(grid.detach().numpy(), grid_np)
    np.testing.assert_array_equal(
        out.detach().numpy(), dc.grid_sample(numpy_of(x), grid_np, mode, padding_mode,
                                             align_corners))
    grads = dc.grid_sample_backward(grad_out.numpy(), numpy_of(x), grid_np, mode, padding_mode,
                                    align_corners)
    np.testing.assert_array_equal(x.grad.numpy(), grads.input)
    np.testing.assert_array_equal(grid.grad.numpy(), grads.grid)
    np.testing.assert_array_equal(theta.grad.numpy(),
                                  dc.affine_grid_backward(grads.grid, tuple(size), align_corners))


@pytest.mark.parametrize("layout", [lambda t: t, non_contiguous])
def test_ms_deform_attn_equals_numpy(layout):
    value, shapes, starts, locations, weights = attn_case(dtype=torch.float32, shapes=((5, 6),
                                                                                     (3, 2),
                                                                                     (1, 1)))
    # a few samples beyond the window's edge as well
    locations = torch.cat((locations[:, :1] * 1.7 - 0.35, locations[:, 1:]), dim=1)
    value, locations, weights = (layout(t).requires_grad_() for t in (value, locations, weights))
    out = dct.ms_deform_attn(value, shapes, starts, locations, weights)
    grad_out = randn(*out.shape, seed=9, dtype=torch.float32)
    out.backward(grad_out)
    arrays = numpy_of(value), shapes.numpy(), starts.numpy(), numpy_of(locations), \
        numpy_of(weights)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 6)
    np.testing.assert_array_equal(out.detach().numpy(), dc.ms_deform_attn(*arrays))
    grads = dc.ms_deform_attn_backward(grad_out.numpy(), *arrays)
    np.testing.assert_array_equal(value.grad.numpy(), grads.value)
    np.testing.assert_array_equal(locations.grad.numpy(), grads.sampling_locations)
    np.testing.assert_array_equal(weights.grad.numpy(), grads.attention_weights)


def test_ms_deform_attn_takes_int32_levels_and_lists_are_refused():
    value, shapes, starts, locations, weights = attn_case()
    expected = dct.ms_deform_attn(value, shapes, starts, locations, weights)
    assert torch.equal(dct.ms_deform_attn(value, shapes.int(), starts.int(), locations, weights),
                       expected)
    with pytest.raises(TypeError, match="value_spatial_shapes must be a torch.Tensor, got "
                                        "builtins.list"):
        dct.ms_deform_attn(value, shapes.tolist(), starts, locations, weights)
    with pytest.raises(TypeError, match="ms_deform_attn: value_level_start_index must be an "
                                        "int64 or int32 tensor, got torch.float64"):
        dct.ms_deform_attn(value, shapes, starts.double(), locations, weights)
    with pytest.raises(ValueError, match="level_start_index must be the cumulative level "
                                         "sizes"):  # the library's own checks
        dct.ms_deform_attn(value, shapes, starts + 1, locations, weights)


@pytest.mark.parametrize("layout", [lambda t: t, non_contiguous])
@pytest.mark.parametrize("offset_scale", [1.0, 9.0])  # the stencil path, the deformable path
def test_active_conv2d_equals_numpy(layout, offset_scale):
    tensors = active_case(dtype=torch.float32, groups=2, offset_groups=2)
    x, offset, weight, bias = (layout(t) for t in tensors)
    offset = offset * offset_scale
    x, offset, weight, bias = requiring_grad((x, offset, weight, bias))
    kw = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    out = dct.active_conv2d(x, offset, weight, bias, **kw)
    grad_out = randn(*out.shape, seed=9, dtype=torch.float32)
    out.backward(grad_out)
    arrays = [numpy_of(t) for t in (x, offset, weight, bias)]
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(out.detach().numpy(), dc.active_conv2d(*arrays, **kw))
    grads = dc.active_conv2d_backward(grad_out.numpy(), *arrays[:3], **kw)
    for got, want in ((x, grads.input), (offset, grads.offset), (weight, grads.weight),
                      (bias, grads.bias)):
        np.testing.assert_array_equal(got.grad.numpy(), want)


def test_align_corners_none_means_false():
    x, grid, theta = randn(1, 2, 4, 4), smooth_grid(1, 3, 3, 4, 4), randn(1, 2, 3)
    assert torch.equal(dct.grid_sample(x, grid), dct.grid_sample(x, grid, align_corners=False))
    assert not torch.equal(dct.grid_sample(x, grid), dct.grid_sample(x, grid, align_corners=True))
    assert torch.equal(dct.affine_grid(theta, (1, 2, 3, 3)),
                       dct.affine_grid(theta, (1, 2, 3, 3), align_corners=False))


def test_empty_batch():
    tensors, kw = deform_case()
    x, offset, weight, bias, mask = requiring_grad(tensors)
    x, offset, mask = (t.detach()[:0].requires_grad_() for t in (x, offset, mask))
    out = dct.deform_conv2d(x, offset, weight, bias, mask=mask, **kw)
    assert out.shape == (0, 6, 6, 7)
    out.sum().backward()
    assert weight.grad.shape == weight.shape and not weight.grad.any()
    assert x.grad.shape == x.shape and offset.grad.shape == offset.shape
    assert mask.grad.shape == mask.shape and not bias.grad.any()


def test_results_are_writable_and_own_their_memory():
    x, weight = randn(1, 2, 5, 5), randn(3, 2, 3, 3, seed=1)
    out = dct.conv2d(x, weight)
    expected = out.clone()
    del x, weight
    out.add_(1.0)  # writable
    assert torch.equal(out, expected + 1.0)
    assert out.is_contiguous()
    grid = dct.affine_grid(randn(2, 2, 3), (2, 1, 3, 4))
    grid[0, 0, 0, 0] = 5.0
    assert grid[0, 0, 0, 0].item() == 5.0 and grid.is_contiguous()


def test_inputs_are_not_modified():
    tensors, kw = deform_case()
    copies = [t.clone() for t in tensors]
    inputs = requiring_grad(tensors)
    dct.deform_conv2d(*inputs[:4], mask=inputs[4], **kw).sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(inputs, copies))


def test_cpu_tensors_reach_numpy_without_copies(monkeypatch):
    seen = []
    original = dc.conv2d

    def recording(input, weight, bias=None, **kwargs):
        seen.append((input, weight))
        return original(input, weight, bias, **kwargs)

    monkeypatch.setattr(dc, "conv2d", recording)
    x, weight = non_contiguous(randn(1, 2, 5, 6)).requires_grad_(), randn(3, 2, 3, 3, seed=1)
    dct.conv2d(x, weight)
    ((x_array, weight_array),) = seen
    assert x_array.ctypes.data == x.data_ptr() and weight_array.ctypes.data == weight.data_ptr()
    assert x_array.strides == tuple(8 * step for step in x.stride())  # the layout, as it was


# --- modules --------------------------------------------------------------------------


def test_deform_conv2d_module_equals_function():
    module = dct.DeformConv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2).double()
    x = randn(2, 4, 7, 7)
    offset = fractional_offsets((2, 2 * 9, 4, 4), seed=1)
    mask = torch.rand(2, 9, 4, 4, generator=generator(2), dtype=F64)
    for m in (None, mask):
        expected = dct.deform_conv2d(x, offset, module.weight, module.bias, stride=2, padding=1,
                                     mask=m)
        assert torch.equal(module(x, offset, m), expected)


def test_deform_conv2d_module_initialises_like_torchvision():
    """torchvision's DeformConv2d initialises as torch.nn.Conv2d does
    (kaiming_uniform_(a=sqrt(5)), bias uniform in +-1/sqrt(fan_in)): with the
    same seed, the same draws."""
    torch.manual_seed(3)
    module = dct.DeformConv2d(4, 6, (3, 2), groups=2)
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(4, 6, (3, 2), groups=2)
    assert torch.equal(module.weight, conv.weight)
    assert torch.equal(module.bias, conv.bias)
    assert dct.DeformConv2d(4, 6, 3, bias=False).bias is None


def test_torchvision_state_dict_loads():
    """A state_dict with torchvision.ops.DeformConv2d's keys and shapes
    (torchvision 0.2x: weight (O, C/groups, kh, kw), bias (O,)) loads strictly."""
    state = {"weight": randn(8, 2, 3, 3), "bias": randn(8, seed=1)}
    module = dct.DeformConv2d(4, 8, 3, padding=1, groups=2).double()
    assert list(module.state_dict()) == ["weight", "bias"]
    module.load_state_dict(state, strict=True)
    assert torch.equal(module.weight, state["weight"]) and torch.equal(module.bias, state["bias"])
    x, offset = randn(1, 4, 5, 5, seed=2), fractional_offsets((1, 18, 5, 5), seed=3)
    assert torch.equal(module(x, offset),
                       dct.deform_conv2d(x, offset, state["weight"], state["bias"], padding=1))


def test_modulated_block_equals_function_and_starts_as_half_a_conv():
    block = dct.ModulatedDeformConv2d(4, 6, 3, padding=1, offset_groups=2, dtype=F64)
    x = randn(2, 4, 6, 6)
    assert block.conv_offset.out_channels == 3 * 2 * 9
    assert not block.conv_offset.weight.any() and not block.conv_offset.bias.any()
    expected_start = 0.5 * dct.conv2d(x, block.weight, padding=1) + block.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(block(x), expected_start, rtol=1e-12, atol=1e-12)
    torch.nn.init.normal_(block.conv_offset.weight, std=0.3, generator=generator(1))
    predicted = block.conv_offset(x)
    offset, mask = predicted[:, :36], torch.sigmoid(predicted[:, 36:])
    assert torch.equal(block(x), dct.deform_conv2d(x, offset, block.weight, block.bias,
                                                   padding=1, mask=mask))


def test_modulated_block_refuses_bad_arguments():
    with pytest.raises(ValueError, match="padding_mode must be 'zeros', got 'reflect'"):
        dct.ModulatedDeformConv2d(4, 4, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match=r"offset_groups must be a positive int dividing "
                                         r"in_channels \(4\), got 3"):
        dct.ModulatedDeformConv2d(4, 4, 3, offset_groups=3)
    with pytest.raises(ValueError, match=r"in_channels \(4\) and out_channels \(6\) must be "
                                         r"divisible by groups \(4\)"):
        dct.DeformConv2d(4, 6, 3, groups=4)


def test_active_conv2d_module_equals_function_and_starts_as_a_convolution():
    module = dct.ActiveConv2d(4, 6, 3, stride=2, padding=1, groups=2, offset_groups=2).double()
    assert module.offset.shape == (36,) and not module.offset.any()
    assert module.weight.shape == (6, 2, 3, 3) and module.bias.shape == (6,)
    x = randn(2, 4, 7, 7)
    torch.testing.assert_close(module(x), dct.conv2d(x, module.weight, module.bias, stride=2,
                                                     padding=1, groups=2),
                               rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        module.offset.copy_(fractional_offsets((36,), seed=3))
    assert torch.equal(module(x), dct.active_conv2d(x, module.offset, module.weight, module.bias,
                                                    stride=2, padding=1))
    module(x).square().sum().backward()
    assert module.offset.grad.abs().max() > 0
    no_bias = dct.ActiveConv2d(4, 4, (3, 1), bias=False)
    assert no_bias.bias is None and no_bias.offset.shape == (6,)
    assert "offset_groups=2" in repr(module)
    with pytest.raises(ValueError, match=r"offset_groups must be a positive int dividing "
                                         r"in_channels \(4\), got 3"):
        dct.ActiveConv2d(4, 4, 3, offset_groups=3)


def deformable_detr_offsets_bias(heads, levels, points):
    """The sampling_offsets bias Deformable DETR's MSDeformAttn starts from, spelled out."""
    bias = torch.empty(heads, levels, points, 2, dtype=F64)
    for h in range(heads):
        angle = 2 * math.pi * h / heads
        c, s = math.cos(angle), math.sin(angle)
        scale = max(abs(c), abs(s))
        for p in range(points):
            bias[h, :, p] = torch.tensor([c / scale, s / scale], dtype=F64) * (p + 1)
    return bias.reshape(-1)


def attention_inputs(module, n=2, lq=5, shapes=((6, 5), (3, 3)), seed=0):
    d = module.d_model
    sizes = [h * w for h, w in shapes]
    query = randn(n, lq, d, seed=seed)
    reference = torch.rand(n, lq, len(shapes), 2, generator=generator(seed + 1), dtype=F64)
    flat = randn(n, sum(sizes), d, seed=seed + 2)
    spatial = torch.tensor(shapes, dtype=torch.int64)
    starts = torch.tensor([sum(sizes[:i]) for i in range(len(shapes))], dtype=torch.int64)
    return query, reference, flat, spatial, starts


def test_multi_scale_deformable_attention_layout_and_initialisation():
    module = dct.MultiScaleDeformableAttention(d_model=16, n_levels=3, n_heads=4, n_points=2)
    assert module.sampling_offsets.weight.shape == (4 * 3 * 2 * 2, 16)
    assert module.attention_weights.weight.shape == (4 * 3 * 2, 16)
    assert module.value_proj.weight.shape == module.output_proj.weight.shape == (16, 16)
    assert not module.sampling_offsets.weight.any()
    torch.testing.assert_close(module.sampling_offsets.bias.double(),
                               deformable_detr_offsets_bias(4, 3, 2), rtol=1e-6, atol=1e-6)
    assert not module.attention_weights.weight.any() and not module.attention_weights.bias.any()
    assert not module.value_proj.bias.any() and not module.output_proj.bias.any()
    assert module.value_proj.weight.abs().max() <= math.sqrt(6 / 32)  # xavier_uniform's bound
    assert set(dict(module.named_parameters())) == {
        f"{layer}.{p}" for layer in ("sampling_offsets", "attention_weights", "value_proj",
                                     "output_proj") for p in ("weight", "bias")}
    with pytest.raises(ValueError, match=r"d_model \(10\) must be divisible by n_heads \(4\)"):
        dct.MultiScaleDeformableAttention(d_model=10, n_heads=4)


def test_multi_scale_deformable_attention_equals_functional_call():
    torch.manual_seed(0)
    module = dct.MultiScaleDeformableAttention(d_model=8, n_levels=2, n_heads=2, n_points=3)
    module = module.double()
    torch.nn.init.normal_(module.sampling_offsets.weight, std=0.1, generator=generator(5))
    torch.nn.init.normal_(module.attention_weights.weight, std=0.3, generator=generator(6))
    query, reference, flat, spatial, starts = attention_inputs(module)
    mask = torch.rand(2, flat.shape[1], generator=generator(7)) < 0.3
    n, lq, _ = query.shape
    value = module.value_proj(flat).masked_fill(mask[..., None], 0).view(n, -1, 2, 4)
    offsets = module.sampling_offsets(query).view(n, lq, 2, 2, 3, 2)
    weights = torch.softmax(module.attention_weights(query).view(n, lq, 2, 6), -1)
    normalizer = torch.stack((spatial[:, 1], spatial[:, 0]), -1)
    locations = reference[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :,
                                                                         None, :]
    expected = module.output_proj(dct.ms_deform_attn(value, spatial, starts, locations,
                                                     weights.view(n, lq, 2, 2, 3)))
    assert torch.equal(module(query, reference, flat, spatial, starts, mask), expected)
    unmasked = module(query, reference, flat, spatial, starts)
    assert unmasked.shape == (2, 5, 8) and not torch.equal(unmasked, expected)


def test_dcnv2_network_trains():
    model = torch_ddp_worker.build_model()
    x, y = torch_ddp_worker.batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.95 * losses[0], losses
    assert model.dcn.conv_offset.weight.grad.abs().max() > 0


class TinyDeformableDETR(torch.nn.Module):
    """Two feature levels from a stem (one an ActiveConv2d), flattened; learned
    queries attend to them with MultiScaleDeformableAttention; a linear head."""

    def __init__(self, d=8, queries=3, classes=3):
        super().__init__()
        self.stem = dct.ActiveConv2d(2, d, 3, padding=1, dtype=F64)
        self.query = torch.nn.Parameter(randn(queries, d, seed=11))
        self.reference = torch.nn.Parameter(
            torch.rand(queries, 2, 2, generator=generator(12), dtype=F64))
        self.attn = dct.MultiScaleDeformableAttention(d_model=d, n_levels=2, n_heads=2,
                                                      n_points=2).double()
        self.head = torch.nn.Linear(d, classes, dtype=F64)

    def forward(self, x):
        h = torch.tanh(self.stem(x))
        levels = (h, torch.nn.functional.avg_pool2d(h, 2))
        flat = torch.cat([f.flatten(2).transpose(1, 2) for f in levels], dim=1)
        sizes = [f.shape[2] * f.shape[3] for f in levels]
        spatial = torch.tensor([f.shape[2:] for f in levels], dtype=torch.int64)
        starts = torch.tensor([0, sizes[0]], dtype=torch.int64)
        query = self.query.expand(x.shape[0], -1, -1)
        reference = self.reference.expand(x.shape[0], -1, -1, -1)
        out = self.attn(query, reference, flat, spatial, starts)
        return self.head(out.mean(dim=1))


def tiny_detr_batch():
    x = randn(4, 2, 6, 6, seed=13)
    return x, torch.tensor([0, 1, 2, 1])


def test_multi_scale_deformable_attention_network_trains():
    torch.manual_seed(0)
    model = TinyDeformableDETR()
    x, y = tiny_detr_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.95 * losses[0], losses
    assert model.attn.sampling_offsets.weight.grad.abs().max() > 0
    assert model.stem.offset.grad.abs().max() > 0


# --- torch.compile, autocast ------------------------------------------------------------


class SpatialDCN(torch.nn.Module):
    """Every op in one model: affine_grid -> grid_sample -> conv2d -> DCNv2 block -> head."""

    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(
            torch.tensor([[0.9, 0.1, 0.05], [-0.1, 0.95, 0.02]], dtype=F64))
        self.stem = torch.nn.Conv2d(2, 4, 3, padding=1, dtype=F64)
        self.dcn = dct.ModulatedDeformConv2d(4, 4, 3, padding=1, dtype=F64)
        self.head = torch.nn.Linear(4, 3, dtype=F64)
        torch.nn.init.normal_(self.dcn.conv_offset.weight, std=0.2, generator=generator(7))

    def forward(self, x):
        theta = self.theta.expand(x.shape[0], 2, 3)
        x = dct.grid_sample(x, dct.affine_grid(theta, x.shape), padding_mode="border")
        h = torch.relu(dct.conv2d(x, self.stem.weight, self.stem.bias, padding=1))
        return self.head(self.dcn(h).mean(dim=(2, 3)))


def forward_and_grads(model, fn, x):
    model.zero_grad()
    out = fn(x)
    out.square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_matches_eager(backend):
    torch.manual_seed(0)
    model = SpatialDCN()
    x = randn(2, 2, 6, 6, seed=8)
    eager_out, eager_grads = forward_and_grads(model, model, x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    out, grads = forward_and_grads(model, compiled, x)
    if backend == "aot_eager":  # the same kernels in the same order
        assert torch.equal(out, eager_out)
        assert all(torch.equal(a, b) for a, b in zip(grads, eager_grads))
    else:  # inductor fuses and reorders torch's own float64 arithmetic around our ops
        torch.testing.assert_close(out, eager_out, rtol=1e-12, atol=1e-12)
        for a, b in zip(grads, eager_grads):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_torch_compile_fullgraph_matches_eager_with_attention_and_active_conv():
    torch.manual_seed(0)
    model = TinyDeformableDETR()
    torch.nn.init.normal_(model.attn.sampling_offsets.weight, std=0.2, generator=generator(3))
    with torch.no_grad():
        model.stem.offset.copy_(fractional_offsets((18,), seed=4) * 0.5)
    x = tiny_detr_batch()[0]
    eager_out, eager_grads = forward_and_grads(model, model, x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out, grads = forward_and_grads(model, compiled, x)
    assert torch.equal(out, eager_out)
    assert all(torch.equal(a, b) for a, b in zip(grads, eager_grads))


def test_autocast_bfloat16_computes_in_float32():
    tensors, kw = deform_case(dtype=torch.float32)
    x, offset, weight, bias, mask = requiring_grad(tensors)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = x.to(torch.bfloat16)  # as a bf16 layer in front would give
        out = dct.deform_conv2d(h, offset, weight, bias, mask=mask, **kw)
        grid = dct.affine_grid(randn(2, 2, 3, dtype=torch.bfloat16), (2, 1, 3, 3))
    assert out.dtype == torch.float32 and grid.dtype == torch.float32
    expected = dct.deform_conv2d(h.float(), offset, weight, bias, mask=mask, **kw)
    assert torch.equal(out, expected)
    out.sum().backward()
    assert x.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32


def test_autocast_casts_the_new_ops_floats_and_keeps_the_level_tensors():
    value, shapes, starts, locations, weights = attn_case(dtype=torch.float32)
    x, offset, weight, bias = active_case(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn = dct.ms_deform_attn(value.bfloat16(), shapes, starts, locations, weights)
        active = dct.active_conv2d(x.bfloat16(), offset, weight, bias, padding=1)
    assert attn.dtype == active.dtype == torch.float32
    assert torch.equal(attn, dct.ms_deform_attn(value.bfloat16().float(), shapes, starts,
                                                locations, weights))
    assert torch.equal(active, dct.active_conv2d(x.bfloat16().float(), offset, weight, bias,
                                                 padding=1))


# --- errors -------------------------------------------------------------------------------


def test_integer_tensors_are_refused():
    x, weight = randn(1, 2, 5, 5), randn(3, 2, 3, 3, seed=1)
    with pytest.raises(TypeError, match="conv2d: input must be a float32 or float64 tensor, "
                                        "got torch.int64"):
        dct.conv2d(x.long(), weight)
    with pytest.raises(TypeError, match="grid_sample: grid must be a float32 or float64 "
                                        "tensor, got torch.int32"):
        dct.grid_sample(x, torch.zeros(1, 2, 2, 2, dtype=torch.int32))


def test_half_precision_outside_autocast_is_refused():
    tensors, kw = deform_case(dtype=torch.float16)
    with pytest.raises(TypeError, match=r"deform_conv2d: input must be a float32 or float64 "
                                        r"tensor, got torch.float16; cast it with input.float\(\)"):
        dct.deform_conv2d(*tensors[:4], mask=tensors[4], **kw)
    with pytest.raises(TypeError, match="affine_grid: theta must be a float32 or float64 "
                                        "tensor, got torch.bfloat16"):
        dct.affine_grid(randn(1, 2, 3).bfloat16(), (1, 1, 2, 2))


def test_mixed_dtypes_are_refused():
    tensors, kw = deform_case()
    x, offset, weight, bias, mask = tensors
    with pytest.raises(TypeError, match="deform_conv2d: all tensors must share one dtype: "
                                        "mask is torch.float32 but input is torch.float64"):
        dct.deform_conv2d(x, offset, weight, bias, mask=mask.float(), **kw)
    with pytest.raises(TypeError, match="conv2d: all tensors must share one dtype: bias is "
                                        "torch.float32 but input is torch.float64"):
        dct.conv2d(x, weight, bias.float(), padding=1)


def test_non_tensors_and_bad_arguments_are_refused():
    x, weight = randn(1, 2, 5, 5), randn(3, 2, 3, 3, seed=1)
    with pytest.raises(TypeError, match="weight must be a torch.Tensor, got numpy.ndarray"):
        dct.conv2d(x, weight.numpy())
    with pytest.raises(ValueError, match=r"stride must be an int or a pair of ints, "
                                         r"got \(1, 2, 3\)"):
        dct.conv2d(x, weight, stride=(1, 2, 3))
    with pytest.raises(TypeError, match="padding must be an int or a pair of ints, got 'same'"):
        dct.conv2d(x, weight, padding="same")
    with pytest.raises(ValueError, match=r"mode must be one of \('bilinear', 'nearest'\), "
                                         r"got 'bicubic'"):
        dct.grid_sample(x, smooth_grid(1, 2, 2, 5, 5), mode="bicubic")
    with pytest.raises(TypeError, match="align_corners must be a bool or None, got 1"):
        dct.affine_grid(randn(1, 2, 3), (1, 2, 3, 3), align_corners=1)
    with pytest.raises(ValueError, match="weight must have shape"):  # the library's own checks
        dct.conv2d(x, randn(3, 4, 3, 3))


@pytest.mark.parametrize("op", ["deform_conv2d", "conv2d", "grid_sample", "affine_grid",
                                "ms_deform_attn", "active_conv2d"])
def test_double_backward_raises(op):
    x = randn(1, 2, 5, 5).requires_grad_()
    if op == "ms_deform_attn":
        value, shapes, starts, locations, weights = attn_case()
        x = value.requires_grad_()
        out = dct.ms_deform_attn(x, shapes, starts, locations, weights)
    elif op == "active_conv2d":
        out = dct.active_conv2d(x, fractional_offsets((18,)), randn(3, 2, 3, 3, seed=1))
    elif op == "deform_conv2d":
        out = dct.deform_conv2d(x, fractional_offsets((1, 18, 3, 3)), randn(3, 2, 3, 3, seed=1))
    elif op == "conv2d":
        out = dct.conv2d(x, randn(3, 2, 3, 3, seed=1))
    elif op == "grid_sample":
        out = dct.grid_sample(x, smooth_grid(1, 2, 2, 5, 5))
    else:
        x = randn(1, 2, 3).requires_grad_()
        out = dct.affine_grid(x, (1, 1, 2, 2))
    (grad,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=f"defconv_np.torch.{op}: double backward is not "
                                           "supported"):
        grad.sum().backward()


# --- beyond one process ----------------------------------------------------------------------


def test_distributed_data_parallel_matches_one_process(tmp_path):
    """Two gloo ranks, each on half the batch (mean loss): DDP's averaged
    gradients equal one process's gradients on the whole batch, step after step."""
    world = 2
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    init = f"file://{tmp_path / 'rendezvous'}"
    outs = [tmp_path / f"grads{rank}.pt" for rank in range(world)]
    ranks = [subprocess.Popen([sys.executable, torch_ddp_worker.__file__, str(rank), str(world),
                               init, str(out)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for rank, out in enumerate(outs)]
    logs = []
    try:
        for rank in ranks:
            logs.append(rank.communicate(timeout=150)[0])
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
                rank.wait()
    assert [r.returncode for r in ranks] == [0] * world, "\n".join(logs)

    model = torch_ddp_worker.build_model()
    expected = torch_ddp_worker.train(model, *torch_ddp_worker.batch())
    for out in outs:
        steps = torch.load(out)
        assert len(steps) == torch_ddp_worker.STEPS
        for got, want in zip(steps, expected):
            assert got.keys() == want.keys()
            for name in want:
                torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-14,
                                           msg=name)


# --- CUDA (run on a GPU: pytest -m cuda tests/test_torch.py) -------------------------------


def cupy_or_skip():
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU that PyTorch sees (torch.cuda.is_available() is False)")
    return pytest.importorskip("cupy", reason="CUDA tensors run on CuPy: pip install -e .[cuda13] "
                                              "or .[cuda12]")


def to_cuda(tensors):
    return tuple(None if t is None else t.detach().cuda().requires_grad_(t.requires_grad)
                 for t in tensors)


def forward_backward(fn, tensors, seed=11):
    """The output and the gradients of every tensor requiring grad (on the CPU)."""
    out = fn(*tensors)
    out.backward(randn(*out.shape, seed=seed).to(out.device, out.dtype))
    return [out.detach().cpu()] + [t.grad.cpu() for t in tensors
                                   if t is not None and t.requires_grad]


CUDA_CASES = {
    "deform_conv2d": (lambda x, o, w, b, m: dct.deform_conv2d(x, o, w, b, padding=1, mask=m),
                      lambda: requiring_grad(deform_case(groups=2, offset_groups=2)[0])),
    "conv2d": (lambda x, w, b: dct.conv2d(x, w, b, stride=2, padding=1, groups=2),
               lambda: requiring_grad((randn(2, 4, 7, 7), randn(6, 2, 3, 3, seed=1),
                                       randn(6, seed=2)))),
    # grids away from kinks, so that rounding differences between the devices
    # cannot pick different cells
    "grid_sample": (lambda x, g: dct.grid_sample(x, g, padding_mode="reflection"),
                    lambda: requiring_grad((randn(2, 3, 6, 7), smooth_grid(2, 5, 4, 6, 7)))),
    "affine_grid": (lambda t: dct.affine_grid(t, (2, 3, 5, 4), align_corners=True),
                    lambda: requiring_grad((randn(2, 2, 3, seed=1),))),
    # the level tensors stay on the CPU (allowed; the kernel reads them to the host)
    "ms_deform_attn": (lambda v, loc, a: dct.ms_deform_attn(v, *attn_case()[1:3], loc, a),
                       lambda: requiring_grad(attn_case()[::3] + attn_case()[4:])),
    "active_conv2d": (lambda x, o, w, b: dct.active_conv2d(x, o, w, b, stride=2, padding=1),
                      lambda: requiring_grad(active_case(groups=2, offset_groups=2))),
}


@pytest.mark.cuda
@pytest.mark.parametrize("op", list(CUDA_CASES))
def test_cuda_matches_cpu(op):
    cupy_or_skip()
    fn, make = CUDA_CASES[op]
    cpu = forward_backward(fn, make())
    cuda = forward_backward(fn, to_cuda(make()))
    assert len(cuda) == len(cpu)
    for got, want in zip(cuda, cpu):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.cuda
def test_cuda_runs_on_torchs_current_stream_and_device_without_copies(monkeypatch):
    cupy = cupy_or_skip()
    seen = []
    original = dc.deform_conv2d

    def recording(input, offset, weight, bias=None, **kwargs):
        seen.append((cupy.cuda.get_current_stream().ptr, cupy.cuda.Device().id, input.data.ptr,
                     offset.data.ptr))
        return original(input, offset, weight, bias, **kwargs)

    monkeypatch.setattr(dc, "deform_conv2d", recording)
    device = torch.device("cuda", torch.cuda.device_count() - 1)  # the last GPU, not the current
    tensors, kw = deform_case()
    x, offset, weight, bias, mask = (t.to(device) for t in tensors)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        out = dct.deform_conv2d(x, offset, weight, bias, mask=mask, **kw)
        expected_stream = torch.cuda.current_stream(device).cuda_stream
    stream.synchronize()
    assert seen == [(expected_stream, device.index, x.data_ptr(), offset.data_ptr())]
    assert out.device == device
    torch.testing.assert_close(out.cpu(), dct.deform_conv2d(*tensors[:4], mask=tensors[4], **kw),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.cuda
def test_cuda_mixed_devices_are_refused():
    cupy_or_skip()
    x, weight = randn(1, 2, 5, 5), randn(3, 2, 3, 3, seed=1)
    with pytest.raises(ValueError, match="conv2d: all tensors must be on one device: weight is on "
                                         "cuda:0 but input is on cpu"):
        dct.conv2d(x, weight.to("cuda:0"))


@pytest.mark.cuda
def test_cuda_autocast_and_compile():
    cupy_or_skip()
    torch.manual_seed(0)
    model = SpatialDCN().cuda()
    x = randn(2, 2, 6, 6, seed=8).cuda()
    eager_out, eager_grads = forward_and_grads(model, model, x)
    torch._dynamo.reset()
    out, grads = forward_and_grads(model, torch.compile(model, fullgraph=True,
                                                        backend="aot_eager"), x)
    assert torch.equal(out, eager_out)
    for a, b in zip(grads, eager_grads):  # the CUDA input gradients add with atomics
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    xf, wf = randn(1, 2, 5, 5, dtype=torch.float32).cuda(), randn(3, 2, 3, 3, dtype=torch.float32)
    with torch.autocast("cuda", dtype=torch.float16):
        out = dct.conv2d(xf.half(), wf.cuda())
    assert out.dtype == torch.float32


# --- the example ---------------------------------------------------------------------------


def test_example_torch_dcnv2_runs(capsys):
    namespace = runpy.run_path(str(ROOT / "examples" / "torch_dcnv2.py"))
    losses = namespace["main"]()
    assert losses[-1] < 0.5 * losses[0]
    assert "step 0: loss" in capsys.readouterr().out

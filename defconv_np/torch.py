"""PyTorch adapter: defconv_np's ops as PyTorch custom operators, and modules.

The functions mirror ``torchvision.ops.deform_conv2d``,
``torch.nn.functional.conv2d`` / ``grid_sample`` / ``affine_grid`` and Deformable
DETR's ``MSDeformAttnFunction.apply`` (``ms_deform_attn``), plus active
convolution (``active_conv2d``); the modules mirror ``torchvision.ops.DeformConv2d``
(same parameters, so its state_dict loads) and Deformable DETR's ``MSDeformAttn``
(``MultiScaleDeformableAttention``), and add a self-contained modulated block,
``ModulatedDeformConv2d`` (DCNv2: Zhu et al., "Deformable ConvNets v2: More
Deformable, Better Results", CVPR 2019) and ``ActiveConv2d`` (learned kernel
positions: Jeon & Kim, CVPR 2017).

This module holds no maths. Each op is a ``torch.library.custom_op`` whose
kernel hands the tensors to the NumPy functions (CPU tensors) or the CuPy
functions (CUDA tensors, launched on PyTorch's current stream) through DLPack,
without copies, and wraps the results back; ``register_fake`` gives the output
shapes (so ``torch.compile(fullgraph=True)`` traces the ops without graph
breaks) and ``register_autograd`` calls the library's backward functions,
asking only for the gradients autograd needs. Results equal the NumPy
functions' bit for bit.

Conventions:

- float32 and float64 tensors, one dtype and one device per call; other
  dtypes raise TypeError (cast float16 / bfloat16 with ``.float()``). Inside
  ``torch.autocast`` regions (CPU or CUDA) the ops cast float16 / bfloat16
  inputs to float32 and return float32, as PyTorch does for its float32-only ops.
- Gradients of gradients (double backward) are not supported: a second
  backward through an op's gradient raises RuntimeError.
- ``torch.use_deterministic_algorithms(True)`` makes the CUDA input gradients
  of deform_conv2d and grid_sample deterministic (``deterministic=True``); the
  CPU kernels always are.
- CUDA results are allocated by CuPy's memory pool, not PyTorch's caching
  allocator; they stay valid while the tensor lives.
"""

import contextlib
import math
import operator
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

import defconv_np as _dc

__all__ = [
    "ActiveConv2d",
    "DeformConv2d",
    "ModulatedDeformConv2d",
    "MultiScaleDeformableAttention",
    "active_conv2d",
    "affine_grid",
    "conv2d",
    "deform_conv2d",
    "grid_sample",
    "ms_deform_attn",
]

_FLOAT_DTYPES = (torch.float32, torch.float64)


# --- arguments ---------------------------------------------------------------


def _pair(value, name):
    """An int or a pair of ints, as a pair (torchvision's ``_pair``), checked."""
    items = value if isinstance(value, (tuple, list, torch.Size)) else (value,)
    try:
        if any(isinstance(v, bool) for v in items):
            raise TypeError
        ints = tuple(operator.index(v) for v in items)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if len(ints) == 1:
        return ints * 2
    if len(ints) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return ints


def _require_tensor(name, value, optional=False):
    if value is None and optional:
        return
    if not isinstance(value, torch.Tensor):
        cls = type(value)
        raise TypeError(f"{name} must be a torch.Tensor, got {cls.__module__}.{cls.__qualname__}")


def _check_tensors(op, **tensors):
    """One floating dtype (float32 or float64) and one device for all named tensors."""
    first = None
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if tensor.dtype not in _FLOAT_DTYPES:
            hint = ""
            if tensor.dtype.is_floating_point:
                hint = (f"; cast it with {name}.float(), or call {op} inside torch.autocast, "
                        "which casts its inputs to float32")
            raise TypeError(f"{op}: {name} must be a float32 or float64 tensor, "
                            f"got {tensor.dtype}{hint}")
        if tensor.device.type not in ("cpu", "cuda", "meta"):
            raise ValueError(f"{op}: {name} must be a CPU or CUDA tensor, "
                             f"got device {tensor.device}")
        if first is None:
            first = name, tensor
            continue
        first_name, first_tensor = first
        if tensor.device != first_tensor.device:
            raise ValueError(f"{op}: all tensors must be on one device: {name} is on "
                             f"{tensor.device} but {first_name} is on {first_tensor.device}")
        if tensor.dtype != first_tensor.dtype:
            raise TypeError(f"{op}: all tensors must share one dtype: {name} is {tensor.dtype} "
                            f"but {first_name} is {first_tensor.dtype}")


# --- conversion and dispatch ---------------------------------------------------


def _array(tensor):
    """A NumPy (CPU) or CuPy (CUDA) view of ``tensor``: same memory, any strides."""
    if tensor is None:
        return None
    tensor = tensor.detach()  # DLPack refuses tensors that require grad
    if tensor.device.type == "cuda":
        import cupy

        return cupy.from_dlpack(tensor)
    return np.from_dlpack(tensor)


def _tensor(array):
    """A tensor owning ``array`` (row-major, as the fake kernels promise); no copy
    when it already is."""
    if not array.flags.c_contiguous:
        array = array.copy(order="C")
    return torch.from_dlpack(array)


@contextlib.contextmanager
def _launch_on(device):
    """Run CuPy (and defconv_np's Numba CUDA launches, which follow CuPy's current
    stream) on ``device`` and PyTorch's current stream there, so no
    synchronisation is added; nothing to do on the CPU."""
    if device.type != "cuda":
        yield
        return
    import cupy

    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(index).cuda_stream
    with cupy.cuda.Device(index), cupy.cuda.ExternalStream(stream, index):
        yield


def _empty_like_none(like):
    """Stands for a gradient that was not asked for: custom ops return tensors only."""
    return like.new_empty((0,))


def _no_double_backward(op):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"defconv_np.torch.{op}: double backward is not supported (its gradient was "
            "computed with create_graph=True and is now being differentiated again)")

    return backward


def _setup_nothing(ctx, inputs, output):
    pass


def _conv_out_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


# --- deform_conv2d --------------------------------------------------------------


@torch.library.custom_op("defconv_np::deform_conv2d", mutates_args=())
def _deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor],
                   stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                   mask: Optional[Tensor]) -> Tensor:
    _check_tensors("deform_conv2d", input=input, offset=offset, weight=weight, bias=bias,
                   mask=mask)
    with _launch_on(input.device):
        out = _dc.deform_conv2d(_array(input), _array(offset), _array(weight), _array(bias),
                                stride=tuple(stride), padding=tuple(padding),
                                dilation=tuple(dilation), mask=_array(mask))
        return _tensor(out)


@_deform_conv2d.register_fake
def _deform_conv2d_fake(input, offset, weight, bias, stride, padding, dilation, mask):
    _check_tensors("deform_conv2d", input=input, offset=offset, weight=weight, bias=bias,
                   mask=mask)
    out_h, out_w = (_conv_out_size(input.shape[2 + a], weight.shape[2 + a], stride[a],
                                   padding[a], dilation[a]) for a in (0, 1))
    return input.new_empty((input.shape[0], weight.shape[0], out_h, out_w))


@torch.library.custom_op("defconv_np::deform_conv2d_backward", mutates_args=())
def _deform_conv2d_backward(grad_output: Tensor, input: Tensor, offset: Tensor, weight: Tensor,
                            stride: Sequence[int], padding: Sequence[int],
                            dilation: Sequence[int], mask: Optional[Tensor],
                            needs: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor,
                                                            Tensor]:
    names = _dc.DeformConv2dGrads._fields
    with _launch_on(input.device):
        grads = _dc.deform_conv2d_backward(
            _array(grad_output), _array(input), _array(offset), _array(weight),
            stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
            mask=_array(mask), needs=[n for n, wanted in zip(names, needs) if wanted],
            deterministic=torch.are_deterministic_algorithms_enabled())
        return tuple(_empty_like_none(input) if g is None else _tensor(g) for g in grads)


@_deform_conv2d_backward.register_fake
def _deform_conv2d_backward_fake(grad_output, input, offset, weight, stride, padding, dilation,
                                 mask, needs):
    likes = (input, offset, mask, weight, weight.new_empty((weight.shape[0],)))
    return tuple(torch.empty_like(like, memory_format=torch.contiguous_format)
                 if wanted and like is not None else _empty_like_none(input)
                 for like, wanted in zip(likes, needs))


def _deform_conv2d_setup(ctx, inputs, output):
    input, offset, weight, _, stride, padding, dilation, mask = inputs
    ctx.save_for_backward(input, offset, weight, mask)
    ctx.geometry = stride, padding, dilation


def _deform_conv2d_grad(ctx, grad_output):
    input, offset, weight, mask = ctx.saved_tensors
    wants = ctx.needs_input_grad
    # (input, offset, mask, weight, bias), the order of DeformConv2dGrads
    needs = [wants[0], wants[1], mask is not None and wants[7], wants[2], wants[3]]
    grads = torch.ops.defconv_np.deform_conv2d_backward(grad_output, input, offset, weight,
                                                        *ctx.geometry, mask, needs)
    g_input, g_offset, g_mask, g_weight, g_bias = (g if wanted else None
                                                   for g, wanted in zip(grads, needs))
    return g_input, g_offset, g_weight, g_bias, None, None, None, g_mask


_deform_conv2d.register_autograd(_deform_conv2d_grad, setup_context=_deform_conv2d_setup)
_deform_conv2d_backward.register_autograd(_no_double_backward("deform_conv2d"),
                                          setup_context=_setup_nothing)


def deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0),
                  dilation=(1, 1), mask=None):
    """Deformable convolution (v1), or modulated (v2) with ``mask``, on tensors.

    Parameters
    ----------
    input : Tensor, (N, C, H, W)
    offset : Tensor, (N, 2*G*kh*kw, Ho, Wo)
        torchvision's layout: ``dy`` at channel ``2*(g*kh*kw + i*kw + j)``, ``dx`` next.
    weight : Tensor, (O, C/groups, kh, kw)
    bias : Tensor, (O,), optional
    stride, padding, dilation : int or (int, int)
    mask : Tensor, (N, G*kh*kw, Ho, Wo), optional
        Used as given (apply a sigmoid yourself).

    Returns
    -------
    Tensor, (N, O, Ho, Wo)

    See Also
    --------
    torchvision.ops.deform_conv2d : the function this mirrors.
    defconv_np.deform_conv2d : the computation, on arrays.
    """
    for name, value in (("input", input), ("offset", offset), ("weight", weight)):
        _require_tensor(name, value)
    _require_tensor("bias", bias, optional=True)
    _require_tensor("mask", mask, optional=True)
    return torch.ops.defconv_np.deform_conv2d(
        input, offset, weight, bias, _pair(stride, "stride"), _pair(padding, "padding"),
        _pair(dilation, "dilation"), mask)


# --- conv2d -----------------------------------------------------------------------


@torch.library.custom_op("defconv_np::conv2d", mutates_args=())
def _conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int],
            padding: Sequence[int], dilation: Sequence[int], groups: int) -> Tensor:
    _check_tensors("conv2d", input=input, weight=weight, bias=bias)
    with _launch_on(input.device):
        out = _dc.conv2d(_array(input), _array(weight), _array(bias), stride=tuple(stride),
                         padding=tuple(padding), dilation=tuple(dilation), groups=groups)
        return _tensor(out)


@_conv2d.register_fake
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    _check_tensors("conv2d", input=input, weight=weight, bias=bias)
    out_h, out_w = (_conv_out_size(input.shape[2 + a], weight.shape[2 + a], stride[a],
                                   padding[a], dilation[a]) for a in (0, 1))
    return input.new_empty((input.shape[0], weight.shape[0], out_h, out_w))


@torch.library.custom_op("defconv_np::conv2d_backward", mutates_args=())
def _conv2d_backward(grad_output: Tensor, input: Tensor, weight: Tensor, stride: Sequence[int],
                     padding: Sequence[int], dilation: Sequence[int], groups: int,
                     needs: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor]:
    names = _dc.Conv2dGrads._fields
    with _launch_on(input.device):
        grads = _dc.conv2d_backward(
            _array(grad_output), _array(input), _array(weight), stride=tuple(stride),
            padding=tuple(padding), dilation=tuple(dilation), groups=groups,
            needs=[n for n, wanted in zip(names, needs) if wanted])
        return tuple(_empty_like_none(input) if g is None else _tensor(g) for g in grads)


@_conv2d_backward.register_fake
def _conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, needs):
    likes = (input, weight, weight.new_empty((weight.shape[0],)))
    return tuple(torch.empty_like(like, memory_format=torch.contiguous_format)
                 if wanted else _empty_like_none(input) for like, wanted in zip(likes, needs))


def _conv2d_setup(ctx, inputs, output):
    input, weight, _, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight)
    ctx.geometry = stride, padding, dilation, groups


def _conv2d_grad(ctx, grad_output):
    input, weight = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:3])
    grads = torch.ops.defconv_np.conv2d_backward(grad_output, input, weight, *ctx.geometry,
                                                 needs)
    g_input, g_weight, g_bias = (g if wanted else None for g, wanted in zip(grads, needs))
    return g_input, g_weight, g_bias, None, None, None, None


_conv2d.register_autograd(_conv2d_grad, setup_context=_conv2d_setup)
_conv2d_backward.register_autograd(_no_double_backward("conv2d"), setup_context=_setup_nothing)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation on tensors, as ``torch.nn.functional.conv2d``
    (batched input; ``padding`` an int or a pair, not a string).

    Parameters
    ----------
    input : Tensor, (N, C, H, W)
    weight : Tensor, (O, C/groups, kh, kw)
    bias : Tensor, (O,), optional
    stride, padding, dilation : int or (int, int)
    groups : int

    Returns
    -------
    Tensor, (N, O, Ho, Wo)

    See Also
    --------
    torch.nn.functional.conv2d : the function this mirrors.
    defconv_np.conv2d : the computation, on arrays.
    """
    _require_tensor("input", input)
    _require_tensor("weight", weight)
    _require_tensor("bias", bias, optional=True)
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"groups must be an int, got {groups!r}")
    return torch.ops.defconv_np.conv2d(input, weight, bias, _pair(stride, "stride"),
                                       _pair(padding, "padding"), _pair(dilation, "dilation"),
                                       groups)


# --- grid_sample ------------------------------------------------------------------


@torch.library.custom_op("defconv_np::grid_sample", mutates_args=())
def _grid_sample(input: Tensor, grid: Tensor, mode: str, padding_mode: str,
                 align_corners: bool) -> Tensor:
    _check_tensors("grid_sample", input=input, grid=grid)
    with _launch_on(input.device):
        out = _dc.grid_sample(_array(input), _array(grid), mode=mode, padding_mode=padding_mode,
                              align_corners=align_corners)
        return _tensor(out)


@_grid_sample.register_fake
def _grid_sample_fake(input, grid, mode, padding_mode, align_corners):
    _check_tensors("grid_sample", input=input, grid=grid)
    return input.new_empty((*input.shape[:2], *grid.shape[1:-1]))  # 4-D and 5-D


@torch.library.custom_op("defconv_np::grid_sample_backward", mutates_args=())
def _grid_sample_backward(grad_output: Tensor, input: Tensor, grid: Tensor, mode: str,
                          padding_mode: str, align_corners: bool,
                          needs: Sequence[bool]) -> tuple[Tensor, Tensor]:
    names = _dc.GridSampleGrads._fields
    with _launch_on(input.device):
        grads = _dc.grid_sample_backward(
            _array(grad_output), _array(input), _array(grid), mode=mode,
            padding_mode=padding_mode, align_corners=align_corners,
            needs=[n for n, wanted in zip(names, needs) if wanted],
            deterministic=torch.are_deterministic_algorithms_enabled())
        return tuple(_empty_like_none(input) if g is None else _tensor(g) for g in grads)


@_grid_sample_backward.register_fake
def _grid_sample_backward_fake(grad_output, input, grid, mode, padding_mode, align_corners,
                               needs):
    return tuple(torch.empty_like(like, memory_format=torch.contiguous_format)
                 if wanted else _empty_like_none(input)
                 for like, wanted in zip((input, grid), needs))


def _grid_sample_setup(ctx, inputs, output):
    input, grid, mode, padding_mode, align_corners = inputs
    ctx.save_for_backward(input, grid)
    ctx.modes = mode, padding_mode, align_corners


def _grid_sample_grad(ctx, grad_output):
    input, grid = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:2])
    grads = torch.ops.defconv_np.grid_sample_backward(grad_output, input, grid, *ctx.modes,
                                                      needs)
    g_input, g_grid = (g if wanted else None for g, wanted in zip(grads, needs))
    return g_input, g_grid, None, None, None


_grid_sample.register_autograd(_grid_sample_grad, setup_context=_grid_sample_setup)
_grid_sample_backward.register_autograd(_no_double_backward("grid_sample"),
                                        setup_context=_setup_nothing)


def _choice(value, name, allowed):
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {allowed}, got {value!r}")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _align_corners(value):
    """None means False, as in PyTorch (without its warning)."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise TypeError(f"align_corners must be a bool or None, got {value!r}")
    return value


def grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=None):
    """Sample ``input`` at the normalised positions in ``grid``, as
    ``torch.nn.functional.grid_sample`` (4-D inputs).

    Parameters
    ----------
    input : Tensor, (N, C, H, W)
    grid : Tensor, (N, Hg, Wg, 2)
        ``grid[..., 0]`` is x, ``grid[..., 1]`` is y, in [-1, 1].
    mode : {"bilinear", "nearest"}
    padding_mode : {"zeros", "border", "reflection"}
    align_corners : bool or None
        None means False, PyTorch's default.

    Returns
    -------
    Tensor, (N, C, Hg, Wg)

    See Also
    --------
    torch.nn.functional.grid_sample : the function this mirrors.
    defconv_np.grid_sample : the computation, on arrays.
    """
    _require_tensor("input", input)
    _require_tensor("grid", grid)
    _choice(mode, "mode", ("bilinear", "nearest"))
    _choice(padding_mode, "padding_mode", ("zeros", "border", "reflection"))
    return torch.ops.defconv_np.grid_sample(input, grid, mode, padding_mode,
                                            _align_corners(align_corners))


# --- affine_grid ------------------------------------------------------------------


@torch.library.custom_op("defconv_np::affine_grid", mutates_args=())
def _affine_grid(theta: Tensor, size: Sequence[int], align_corners: bool) -> Tensor:
    _check_tensors("affine_grid", theta=theta)
    with _launch_on(theta.device):
        return _tensor(_dc.affine_grid(_array(theta), tuple(size), align_corners=align_corners))


@_affine_grid.register_fake
def _affine_grid_fake(theta, size, align_corners):
    _check_tensors("affine_grid", theta=theta)
    return theta.new_empty((size[0], size[2], size[3], 2))


@torch.library.custom_op("defconv_np::affine_grid_backward", mutates_args=())
def _affine_grid_backward(grad_grid: Tensor, size: Sequence[int], align_corners: bool) -> Tensor:
    with _launch_on(grad_grid.device):
        return _tensor(_dc.affine_grid_backward(_array(grad_grid), tuple(size),
                                                align_corners=align_corners))


@_affine_grid_backward.register_fake
def _affine_grid_backward_fake(grad_grid, size, align_corners):
    return grad_grid.new_empty((size[0], 2, 3))


def _affine_grid_setup(ctx, inputs, output):
    _, ctx.size, ctx.align_corners = inputs


def _affine_grid_grad(ctx, grad_grid):
    return (torch.ops.defconv_np.affine_grid_backward(grad_grid, ctx.size, ctx.align_corners),
            None, None)


_affine_grid.register_autograd(_affine_grid_grad, setup_context=_affine_grid_setup)
_affine_grid_backward.register_autograd(_no_double_backward("affine_grid"),
                                        setup_context=_setup_nothing)


def affine_grid(theta, size, align_corners=None):
    """Sampling grid of a batch of affine maps, as ``torch.nn.functional.affine_grid``
    (4-D sizes).

    Parameters
    ----------
    theta : Tensor, (N, 2, 3)
    size : (N, C, H, W), e.g. a ``torch.Size``
    align_corners : bool or None
        None means False, PyTorch's default.

    Returns
    -------
    Tensor, (N, H, W, 2)

    See Also
    --------
    torch.nn.functional.affine_grid : the function this mirrors.
    defconv_np.affine_grid : the computation, on arrays.
    """
    _require_tensor("theta", theta)
    if isinstance(size, (str, bytes)) or not hasattr(size, "__len__") or len(size) != 4:
        raise ValueError(f"size must be (N, C, H, W), got {size!r}")
    if any(isinstance(s, bool) or not isinstance(s, (int, torch.SymInt)) for s in size):
        raise TypeError(f"size must be four ints (N, C, H, W), got {size!r}")
    return torch.ops.defconv_np.affine_grid(theta, list(size), _align_corners(align_corners))


# --- ms_deform_attn ----------------------------------------------------------------------


def _check_levels(op, spatial_shapes, level_start_index, like):
    """The integer level tensors: int32/int64, and on ``like``'s device (or the CPU)."""
    for name, tensor in (("value_spatial_shapes", spatial_shapes),
                         ("value_level_start_index", level_start_index)):
        if tensor.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{op}: {name} must be an int64 or int32 tensor, got {tensor.dtype}")
        if tensor.device != like.device and tensor.device.type != "cpu":
            raise ValueError(f"{op}: {name} must be on value's device ({like.device}) or the "
                             f"CPU, got device {tensor.device}")


def _host_levels(tensor):
    """An integer level tensor as a NumPy array (read to the host: a few ints)."""
    return tensor.detach().cpu().numpy()


@torch.library.custom_op("defconv_np::ms_deform_attn", mutates_args=())
def _ms_deform_attn(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                    sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    _check_tensors("ms_deform_attn", value=value, sampling_locations=sampling_locations,
                   attention_weights=attention_weights)
    _check_levels("ms_deform_attn", spatial_shapes, level_start_index, value)
    shapes, starts = _host_levels(spatial_shapes), _host_levels(level_start_index)
    with _launch_on(value.device):
        out = _dc.ms_deform_attn(_array(value), shapes, starts, _array(sampling_locations),
                                 _array(attention_weights))
        return _tensor(out)


@_ms_deform_attn.register_fake
def _ms_deform_attn_fake(value, spatial_shapes, level_start_index, sampling_locations,
                         attention_weights):
    _check_tensors("ms_deform_attn", value=value, sampling_locations=sampling_locations,
                   attention_weights=attention_weights)
    _check_levels("ms_deform_attn", spatial_shapes, level_start_index, value)
    n, _, heads, depth = value.shape
    return value.new_empty((n, sampling_locations.shape[1], heads * depth))


@torch.library.custom_op("defconv_np::ms_deform_attn_backward", mutates_args=())
def _ms_deform_attn_backward(grad_output: Tensor, value: Tensor, spatial_shapes: Tensor,
                             level_start_index: Tensor, sampling_locations: Tensor,
                             attention_weights: Tensor,
                             needs: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor]:
    names = _dc.MSDeformAttnGrads._fields
    shapes, starts = _host_levels(spatial_shapes), _host_levels(level_start_index)
    with _launch_on(value.device):
        grads = _dc.ms_deform_attn_backward(
            _array(grad_output), _array(value), shapes, starts, _array(sampling_locations),
            _array(attention_weights), needs=[n for n, wanted in zip(names, needs) if wanted],
            deterministic=torch.are_deterministic_algorithms_enabled())
        return tuple(_empty_like_none(value) if g is None else _tensor(g) for g in grads)


@_ms_deform_attn_backward.register_fake
def _ms_deform_attn_backward_fake(grad_output, value, spatial_shapes, level_start_index,
                                  sampling_locations, attention_weights, needs):
    return tuple(torch.empty_like(like, memory_format=torch.contiguous_format)
                 if wanted else _empty_like_none(value)
                 for like, wanted in zip((value, sampling_locations, attention_weights), needs))


def _ms_deform_attn_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _ms_deform_attn_grad(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = (
        ctx.saved_tensors)
    wants = ctx.needs_input_grad
    needs = [wants[0], wants[3], wants[4]]  # the order of MSDeformAttnGrads
    grads = torch.ops.defconv_np.ms_deform_attn_backward(
        grad_output, value, spatial_shapes, level_start_index, sampling_locations,
        attention_weights, needs)
    g_value, g_locations, g_weights = (g if wanted else None for g, wanted in zip(grads, needs))
    return g_value, None, None, g_locations, g_weights


_ms_deform_attn.register_autograd(_ms_deform_attn_grad, setup_context=_ms_deform_attn_setup)
_ms_deform_attn_backward.register_autograd(_no_double_backward("ms_deform_attn"),
                                           setup_context=_setup_nothing)


def ms_deform_attn(value, value_spatial_shapes, value_level_start_index, sampling_locations,
                   attention_weights):
    """Multi-scale deformable attention on tensors, as Deformable DETR's
    ``MSDeformAttnFunction.apply`` (without its ``im2col_step``).

    Parameters
    ----------
    value : Tensor, (N, S, M, D)
        The levels' values, concatenated row-major level after level.
    value_spatial_shapes : integer Tensor, (L, 2)
        (H_l, W_l) of each level; read to the host by the kernel, not
        differentiated. Under ``torch.compile`` the output shape does not depend
        on it.
    value_level_start_index : integer Tensor, (L,)
        ``0, H_0 W_0, ...`` (checked).
    sampling_locations : Tensor, (N, Lq, M, L, P, 2)
        Normalised to [0, 1], (x, y).
    attention_weights : Tensor, (N, Lq, M, L, P)
        Used as given (apply your own softmax).

    Returns
    -------
    Tensor, (N, Lq, M*D)

    See Also
    --------
    MultiScaleDeformableAttention : the module around it.
    defconv_np.ms_deform_attn : the computation, on arrays.
    """
    for name, tensor in (("value", value), ("value_spatial_shapes", value_spatial_shapes),
                         ("value_level_start_index", value_level_start_index),
                         ("sampling_locations", sampling_locations),
                         ("attention_weights", attention_weights)):
        _require_tensor(name, tensor)
    return torch.ops.defconv_np.ms_deform_attn(value, value_spatial_shapes,
                                               value_level_start_index, sampling_locations,
                                               attention_weights)


# --- active_conv2d ------------------------------------------------------------------------


@torch.library.custom_op("defconv_np::active_conv2d", mutates_args=())
def _active_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor],
                   stride: Sequence[int], padding: Sequence[int],
                   dilation: Sequence[int]) -> Tensor:
    _check_tensors("active_conv2d", input=input, offset=offset, weight=weight, bias=bias)
    with _launch_on(input.device):
        out = _dc.active_conv2d(_array(input), _array(offset), _array(weight), _array(bias),
                                stride=tuple(stride), padding=tuple(padding),
                                dilation=tuple(dilation))
        return _tensor(out)


@_active_conv2d.register_fake
def _active_conv2d_fake(input, offset, weight, bias, stride, padding, dilation):
    _check_tensors("active_conv2d", input=input, offset=offset, weight=weight, bias=bias)
    out_h, out_w = (_conv_out_size(input.shape[2 + a], weight.shape[2 + a], stride[a],
                                   padding[a], dilation[a]) for a in (0, 1))
    return input.new_empty((input.shape[0], weight.shape[0], out_h, out_w))


@torch.library.custom_op("defconv_np::active_conv2d_backward", mutates_args=())
def _active_conv2d_backward(grad_output: Tensor, input: Tensor, offset: Tensor, weight: Tensor,
                            stride: Sequence[int], padding: Sequence[int],
                            dilation: Sequence[int],
                            needs: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    names = _dc.ActiveConv2dGrads._fields
    with _launch_on(input.device):
        grads = _dc.active_conv2d_backward(
            _array(grad_output), _array(input), _array(offset), _array(weight),
            stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
            needs=[n for n, wanted in zip(names, needs) if wanted])
        return tuple(_empty_like_none(input) if g is None else _tensor(g) for g in grads)


@_active_conv2d_backward.register_fake
def _active_conv2d_backward_fake(grad_output, input, offset, weight, stride, padding, dilation,
                                 needs):
    likes = (input, offset, weight, weight.new_empty((weight.shape[0],)))
    return tuple(torch.empty_like(like, memory_format=torch.contiguous_format)
                 if wanted else _empty_like_none(input) for like, wanted in zip(likes, needs))


def _active_conv2d_setup(ctx, inputs, output):
    input, offset, weight, _, stride, padding, dilation = inputs
    ctx.save_for_backward(input, offset, weight)
    ctx.geometry = stride, padding, dilation


def _active_conv2d_grad(ctx, grad_output):
    input, offset, weight = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:4])  # (input, offset, weight, bias), ActiveConv2dGrads'
    grads = torch.ops.defconv_np.active_conv2d_backward(grad_output, input, offset, weight,
                                                        *ctx.geometry, needs)
    g_input, g_offset, g_weight, g_bias = (g if wanted else None
                                           for g, wanted in zip(grads, needs))
    return g_input, g_offset, g_weight, g_bias, None, None, None


_active_conv2d.register_autograd(_active_conv2d_grad, setup_context=_active_conv2d_setup)
_active_conv2d_backward.register_autograd(_no_double_backward("active_conv2d"),
                                          setup_context=_setup_nothing)


def active_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1):
    """Active convolution on tensors: a deformable convolution whose offsets
    (the kernel positions) are one learned vector shared by every image and
    output position.

    Parameters
    ----------
    input : Tensor, (N, C, H, W)
    offset : Tensor, (2*G*kh*kw,)
        ``dy`` at ``2*(g*kh*kw + i*kw + j)``, ``dx`` next (deform_conv2d's channels).
    weight : Tensor, (O, C/groups, kh, kw)
        Weight groups are inferred as ``C // weight.shape[1]``.
    bias : Tensor, (O,), optional
    stride, padding, dilation : int or (int, int)

    Returns
    -------
    Tensor, (N, O, Ho, Wo)

    See Also
    --------
    ActiveConv2d : the module holding the positions as a parameter.
    defconv_np.active_conv2d : the computation, on arrays.
    """
    for name, value in (("input", input), ("offset", offset), ("weight", weight)):
        _require_tensor(name, value)
    _require_tensor("bias", bias, optional=True)
    return torch.ops.defconv_np.active_conv2d(
        input, offset, weight, bias, _pair(stride, "stride"), _pair(padding, "padding"),
        _pair(dilation, "dilation"))


# Under torch.autocast, float16 / bfloat16 inputs are cast to float32 (float64
# stays), and the ops run and return float32.
for _op in ("deform_conv2d", "conv2d", "grid_sample", "affine_grid", "ms_deform_attn",
            "active_conv2d"):
    for _device_type in ("cpu", "cuda"):
        torch.library.register_autocast(f"defconv_np::{_op}", _device_type, torch.float32)
del _op, _device_type


# --- modules ------------------------------------------------------------------------


def _reset_conv_parameters(weight, bias):
    """torch.nn.Conv2d's (and torchvision's DeformConv2d's) initialisation."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        nn.init.uniform_(bias, -bound, bound)


def _check_channels(in_channels, out_channels, groups):
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("groups", groups)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) "
                         f"must be divisible by groups ({groups})")


class DeformConv2d(nn.Module):
    """Deformable convolution layer, as ``torchvision.ops.DeformConv2d``: same
    arguments, parameters (``weight`` (O, C/groups, kh, kw), ``bias`` (O,)) and
    initialisation, so its state_dict loads unchanged. The offsets (and the
    optional mask) are inputs of ``forward``.

    See Also
    --------
    ModulatedDeformConv2d : predicts its own offsets and mask.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True):
        super().__init__()
        _check_channels(in_channels, out_channels, groups)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups,
                                               *self.kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        _reset_conv_parameters(self.weight, self.bias)

    def forward(self, input, offset, mask=None):
        """input (N, C, H, W), offset (N, 2*G*kh*kw, Ho, Wo), mask (N, G*kh*kw, Ho, Wo)
        or None -> (N, O, Ho, Wo)."""
        return deform_conv2d(input, offset, self.weight, self.bias, stride=self.stride,
                             padding=self.padding, dilation=self.dilation, mask=mask)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}")


class ModulatedDeformConv2d(nn.Module):
    """Modulated deformable convolution block (DCNv2, Zhu et al., CVPR 2019).

    A plain ``nn.Conv2d`` (``conv_offset``, same kernel, stride, padding and
    dilation) predicts ``3*G*kh*kw`` channels from the input: the first
    ``2*G*kh*kw`` are the offsets in torchvision's layout, the last ``G*kh*kw``
    pass through a sigmoid to give the mask. It starts at zero, as in the
    paper, so the block starts as a regular convolution scaled by 0.5 (the
    sigmoid of 0). Arguments are ``torch.nn.Conv2d``'s (only
    ``padding_mode="zeros"``), plus ``offset_groups`` G (C must be divisible by it).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None, *,
                 offset_groups=1):
        super().__init__()
        _check_channels(in_channels, out_channels, groups)
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode must be 'zeros', got {padding_mode!r}")
        if (isinstance(offset_groups, bool) or not isinstance(offset_groups, int)
                or offset_groups < 1 or in_channels % offset_groups):
            raise ValueError(f"offset_groups must be a positive int dividing in_channels "
                             f"({in_channels}), got {offset_groups!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.groups = groups
        self.offset_groups = offset_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups,
                                               *self.kernel_size, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        points = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = nn.Conv2d(in_channels, 3 * offset_groups * points, self.kernel_size,
                                     stride=self.stride, padding=self.padding,
                                     dilation=self.dilation, bias=True, **factory)
        self.reset_parameters()

    def reset_parameters(self):
        _reset_conv_parameters(self.weight, self.bias)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, input):
        """input (N, C, H, W) -> (N, O, Ho, Wo)."""
        predicted = self.conv_offset(input)
        n_offset = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        offset = predicted[:, :n_offset]
        mask = torch.sigmoid(predicted[:, n_offset:])
        return deform_conv2d(input, offset, self.weight, self.bias, stride=self.stride,
                             padding=self.padding, dilation=self.dilation, mask=mask)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, offset_groups={self.offset_groups}, "
                f"bias={self.bias is not None}")


class ActiveConv2d(nn.Module):
    """Active convolution layer (Jeon & Kim, "Active Convolution: Learning the
    Shape of Convolution for Image Classification", CVPR 2017): a convolution
    whose kernel positions are learned.

    Parameters are ``weight`` (O, C/groups, kh, kw) and ``bias`` (O,),
    initialised as ``torch.nn.Conv2d``'s, and ``offset`` (2*offset_groups*kh*kw,),
    the displacement (dy, dx) of each kernel point from the regular grid,
    shared by all images and output positions; it starts at zero, so the layer
    starts as a regular convolution. C must be divisible by ``offset_groups``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, offset_groups=1, *, device=None, dtype=None):
        super().__init__()
        _check_channels(in_channels, out_channels, groups)
        if (isinstance(offset_groups, bool) or not isinstance(offset_groups, int)
                or offset_groups < 1 or in_channels % offset_groups):
            raise ValueError(f"offset_groups must be a positive int dividing in_channels "
                             f"({in_channels}), got {offset_groups!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.groups = groups
        self.offset_groups = offset_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups,
                                               *self.kernel_size, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        points = self.kernel_size[0] * self.kernel_size[1]
        self.offset = nn.Parameter(torch.empty(2 * offset_groups * points, **factory))
        self.reset_parameters()

    def reset_parameters(self):
        _reset_conv_parameters(self.weight, self.bias)
        nn.init.zeros_(self.offset)

    def forward(self, input):
        """input (N, C, H, W) -> (N, O, Ho, Wo)."""
        return active_conv2d(input, self.offset, self.weight, self.bias, stride=self.stride,
                             padding=self.padding, dilation=self.dilation)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, offset_groups={self.offset_groups}, "
                f"bias={self.bias is not None}")


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class MultiScaleDeformableAttention(nn.Module):
    """Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021),
    laid out as Deformable DETR's ``MSDeformAttn`` (same submodules and
    parameter names, so its state_dict loads).

    Linear layers: ``value_proj`` and ``output_proj`` (d_model -> d_model),
    ``sampling_offsets`` (d_model -> n_heads*n_levels*n_points*2, offsets in
    pixels of each level, (x, y)) and ``attention_weights`` (d_model ->
    n_heads*n_levels*n_points, a softmax over each head's levels and points).
    Initialisation: the offsets start on a per-head direction (angle
    2*pi*h/n_heads, scaled so the larger of |cos|, |sin| is 1) at distances 1,
    2, ... for the points, with zero weight; uniform attention (zero weight and
    bias); xavier-uniform projections with zero bias.
    """

    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        for name, value in (("d_model", d_model), ("n_levels", n_levels),
                            ("n_heads", n_heads), ("n_points", n_points)):
            _positive_int(name, value)
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.zeros_(self.sampling_offsets.weight)
        angle = torch.arange(self.n_heads, dtype=torch.float64) * (2 * math.pi / self.n_heads)
        direction = torch.stack((angle.cos(), angle.sin()), dim=-1)
        direction = direction / direction.abs().amax(dim=-1, keepdim=True)
        distance = torch.arange(1, self.n_points + 1, dtype=torch.float64)
        # (heads, levels, points, 2): the head's direction times (point + 1), on every level
        grid = (direction[:, None, None, :] * distance[None, None, :, None]).expand(
            self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for linear in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, query, reference_points, input_flatten, input_spatial_shapes,
                input_level_start_index, input_padding_mask=None):
        """query (N, Lq, d_model), reference_points (N, Lq, L, 2) normalised (x, y)
        in [0, 1], input_flatten (N, S, d_model), input_spatial_shapes (L, 2)
        int64 of (H_l, W_l), input_level_start_index (L,), input_padding_mask
        (N, S) bool, True where padded (those values are set to 0), or None
        -> (N, Lq, d_model)."""
        n, len_q, _ = query.shape
        len_in = input_flatten.shape[1]
        if reference_points.dim() != 4 or reference_points.shape[-1] != 2:
            raise ValueError(f"reference_points must be (N, Lq, L, 2), got shape "
                             f"{tuple(reference_points.shape)}")
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, len_in, heads, self.d_model // heads)
        offsets = self.sampling_offsets(query).view(n, len_q, heads, levels, points, 2)
        weights = self.attention_weights(query).view(n, len_q, heads, levels * points)
        weights = torch.softmax(weights, dim=-1).view(n, len_q, heads, levels, points)
        # offsets are in pixels of each level: divide by (W_l, H_l)
        normalizer = torch.stack((input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]),
                                 dim=-1).to(device=offsets.device, dtype=offsets.dtype)
        locations = (reference_points[:, :, None, :, None, :]
                     + offsets / normalizer[None, None, None, :, None, :])
        out = ms_deform_attn(value, input_spatial_shapes, input_level_start_index, locations,
                             weights)
        return self.output_proj(out)

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_levels={self.n_levels}, n_heads={self.n_heads}, "
                f"n_points={self.n_points}")

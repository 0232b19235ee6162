"""JAX adapter: defconv_np's ops as differentiable JAX functions.

``deform_conv2d``, ``conv2d``, ``grid_sample``, ``affine_grid``,
``ms_deform_attn`` and ``active_conv2d`` take and return ``jax.Array`` values,
with torchvision's / torch.nn.functional's / Deformable DETR's signatures
(``ms_deform_attn`` takes its level shapes as static host values), and work
under ``jax.jit``, ``jax.grad``, ``jax.value_and_grad`` and ``jax.vmap``, in
float32 and (with ``jax_enable_x64``) float64.

Each op is a ``jax.custom_vjp`` whose forward and backward call defconv_np's
functions through a JAX callback, with result shapes and dtypes declared up
front (``jax.ShapeDtypeStruct``): ``jax.experimental.buffer_callback`` where
this JAX has it (zero-copy views of XLA's buffers), else ``jax.pure_callback``.
No maths lives here: the adapter checks arguments at trace time (with
defconv_np's own checks, so errors name the argument as the NumPy functions
do), converts, dispatches and registers the gradients. The backward asks
defconv_np only for the gradients of the inputs JAX differentiates
(``symbolic_zeros``: an input that is not perturbed, such as the data of a
network, gets no gradient and costs nothing).

``vmap``: the callbacks use ``vmap_method="expand_dims"``, and fold the
mapped axes into the batch axis N where the op is separable over the batch
(every batched argument has N first and the shared ones, weight and bias, are
not mapped), so a vmapped call is one call of the kernels. Where a shared
argument is mapped, or a gradient summed over the batch (weight, bias) is
wanted per mapped element, the callback loops over the mapped elements (as it
does for grid_sample's grid gradient, whose rounding depends on the batch size).

Devices: on CPU the kernels read XLA's buffers in place and their results are
copied once into XLA's output buffers. On a GPU, buffer_callback hands over
device buffers: they are wrapped as CuPy arrays (no copy) and the CUDA kernels
run on XLA's stream (not yet run on a GPU: see the README's "Use it in JAX").
Through ``jax.pure_callback`` (older JAX, or ``CALLBACK = "pure"``) JAX copies
every operand to the host and the results back, and the NumPy kernels run on
the CPU.
"""

import functools
import math

import jax
import numpy as np

from . import _validate
from ._arrays import common_float_dtype
from ._geometry import check_padded_input, conv_geometry
from .active import (
    ACTIVE_CONV2D_GRADS,
    _check as _check_active,
    active_conv2d as _np_active_conv2d,
    active_conv2d_backward as _np_active_conv2d_backward,
)
from .attention import (
    MS_DEFORM_ATTN_GRADS,
    _check as _check_attention,
    ms_deform_attn as _np_ms_deform_attn,
    ms_deform_attn_backward as _np_ms_deform_attn_backward,
)
from .convolution import CONV2D_GRADS, conv2d as _np_conv2d, conv2d_backward as _np_conv2d_backward
from .deformable import (
    _check as _check_deform,
    deform_conv2d as _np_deform_conv2d,
    deform_conv2d_backward as _np_deform_conv2d_backward,
)
from .spatial import (
    GRID_SAMPLE_GRADS,
    _check_sample,
    _output_size,
    affine_grid as _np_affine_grid,
    affine_grid_backward as _np_affine_grid_backward,
    grid_sample as _np_grid_sample,
    grid_sample_backward as _np_grid_sample_backward,
)

__all__ = ["active_conv2d", "affine_grid", "conv2d", "deform_conv2d", "grid_sample",
           "ms_deform_attn"]

#: How the callbacks are batched: the callback sees mapped axes in front
#: (size 1 for unmapped arguments) and folds or loops itself (see _run_mapped).
VMAP_METHOD = "expand_dims"


# --- arguments --------------------------------------------------------------------------------

def _as_array(value, name, *, optional=False):
    """A jax.Array (or tracer) for ``value``; NumPy arrays are converted, anything
    else is refused naming the argument."""
    if value is None and optional:
        return None
    if isinstance(value, jax.Array):
        return value
    if type(value) in (np.ndarray, np.memmap):
        # checked before conversion, which would turn int64 into int32 and, without
        # x64 mode, float64 into float32: the error names the dtype that came
        common_float_dtype(**{name: value})
        if value.dtype == np.float64 and not jax.config.read("jax_enable_x64"):
            raise TypeError(f"{name} is a float64 NumPy array but JAX's x64 mode is off, so "
                            f"JAX would compute in float32: pass {name}.astype(numpy.float32) "
                            f'or enable jax.config.update("jax_enable_x64", True)')
        return jax.numpy.asarray(value)
    cls = type(value)
    raise TypeError(f"{name} must be a jax.Array or numpy.ndarray, got "
                    f"{cls.__module__}.{cls.__qualname__}: "
                    f"convert it with jax.numpy.asarray({name})")


def _float_dtype(**arrays):
    """The one float32/float64 dtype of the arrays (defconv_np's check, naming the argument)."""
    return np.dtype(common_float_dtype(**arrays))


# --- callbacks --------------------------------------------------------------------------------

try:  # JAX >= 0.7: callbacks on XLA's own buffers, no copies in or out
    from jax.experimental.buffer_callback import buffer_callback as _buffer_callback
except ImportError:  # pragma: no cover - older JAX
    _buffer_callback = None

#: How the kernels are called: "buffer" (jax.experimental.buffer_callback, where
#: this JAX has it) hands the callback XLA's buffers as zero-copy NumPy views (CPU)
#: or CuPy views (GPU, on XLA's stream) and the results are written into XLA's
#: output buffers; "pure" (jax.pure_callback) copies the operands to the host and
#: the results back. Read at each call of an op (each op is built and jit'ed per
#: method), so a test can switch it.
CALLBACK = "buffer" if _buffer_callback is not None else "pure"


def _run_mapped(xp, function, arrays, base_ndims, per_example, outputs_per_example):
    """Call ``function(*arrays)`` on arrays that may carry leading mapped axes.

    ``arrays`` come from a callback with ``vmap_method="expand_dims"``: each
    has the mapped axes of the vmaps around the call in front of its own
    ``base_ndims`` axes (size 1 where it is not mapped); None stays None.
    ``per_example`` marks the arguments whose first own axis is the batch N;
    ``outputs_per_example`` the results with N first. Where only such
    arguments are mapped and only such results come back, the mapped axes are
    folded into N and ``function`` runs once; otherwise once per mapped element.
    Returns a tuple of arrays (of ``xp``) with the mapped axes in front.
    """
    leads = [a.shape[:a.ndim - nd] for a, nd in zip(arrays, base_ndims) if a is not None]
    lead = np.broadcast_shapes(*leads)
    if not lead:
        return tuple(function(*arrays))
    count = math.prod(lead)
    shared_mapped = any(a is not None and not batch and math.prod(a.shape[:len(lead)]) > 1
                        for a, batch in zip(arrays, per_example))
    if not shared_mapped and all(outputs_per_example):
        folded = []
        for a, batch in zip(arrays, per_example):
            if a is None:
                folded.append(None)
            elif batch:
                own = a.shape[len(lead):]
                folded.append(xp.broadcast_to(a, lead + own).reshape((count * own[0],) + own[1:]))
            else:
                folded.append(a.reshape(a.shape[len(lead):]))
        results = function(*folded)
        return tuple(r.reshape(lead + (r.shape[0] // count,) + r.shape[1:]) for r in results)
    spread = [None if a is None else xp.broadcast_to(a, lead + a.shape[len(lead):])
              for a in arrays]
    stacked = None
    for index in np.ndindex(*lead):
        results = function(*[None if a is None else a[index] for a in spread])
        if stacked is None:
            stacked = [xp.empty(lead + r.shape, r.dtype) for r in results]
        for out, r in zip(stacked, results):
            out[index] = r
    return tuple(stacked)


def _pure_host(function, layout, *arrays):
    arrays = [None if a is None else np.asarray(a) for a in arrays]
    return _run_mapped(np, function, arrays, *layout)


def _is_gpu_buffer(buffer):
    """Whether a buffer_callback Buffer lives on a GPU (there it has a CUDA array
    interface; on CPU asking for one raises JAX's error, not AttributeError)."""
    try:
        buffer.__cuda_array_interface__
    except Exception:
        return False
    return True


def _buffer_host(function, layout, context, outputs, *buffers):
    on_gpu = any(_is_gpu_buffer(b) for b in buffers if b is not None)
    if not on_gpu:
        arrays = [None if b is None else np.asarray(b) for b in buffers]
        for out, result in zip(outputs, _run_mapped(np, function, arrays, *layout)):
            np.asarray(out)[...] = result
        return
    import cupy  # only reached with GPU buffers, where CuPy is what runs the CUDA kernels

    with cupy.cuda.ExternalStream(context.stream):
        arrays = [None if b is None else cupy.asarray(b) for b in buffers]
        for out, result in zip(outputs, _run_mapped(cupy, function, arrays, *layout)):
            cupy.asarray(out)[...] = result


@functools.lru_cache(maxsize=None)
def _kernel_call(function, shapes, layout, method):
    """The JAX callable that runs ``function`` through ``method`` (see CALLBACK);
    cached so that eager calls find JAX's compiled callback again."""
    if method == "buffer":
        host = functools.partial(_buffer_host, function, layout)
        return _buffer_callback(host, shapes, vmap_method=VMAP_METHOD)
    host = functools.partial(_pure_host, function, layout)
    return functools.partial(jax.pure_callback, host, shapes, vmap_method=VMAP_METHOD)


def _callback(method, function, shapes, arrays, base_ndims, per_example, outputs_per_example):
    """Call ``function`` through ``method`` (see CALLBACK) on the host arrays of
    ``arrays`` (None entries are passed as None), returning the tuple of results
    declared by ``shapes`` (jax.ShapeDtypeStruct). ``function`` must be the same
    object for the same computation (the JAX callables are cached on it)."""
    layout = (tuple(base_ndims), tuple(per_example), tuple(outputs_per_example))
    return _kernel_call(function, tuple(shapes), layout, method)(*arrays)


def _is_zero(cotangent):
    return isinstance(cotangent, jax.custom_derivatives.SymbolicZero)


class _Wanted:
    """The names of the inputs to differentiate, carried from the forward to the
    backward rule as static pytree structure (it holds no arrays)."""

    def __init__(self, names):
        self.names = tuple(names)


jax.tree_util.register_pytree_node(_Wanted, lambda w: ((), w.names),
                                   lambda names, _: _Wanted(names))


def _perturbed(names, primals):
    """The names of the primals (CustomVJPPrimal, or None for an absent optional
    input) that JAX differentiates."""
    return _Wanted(name for name, p in zip(names, primals)
                   if p is not None and p.perturbed)


def _value(primal):
    return None if primal is None else primal.value


def _struct(array, dtype):
    return jax.ShapeDtypeStruct(array.shape, dtype)


# --- deform_conv2d ----------------------------------------------------------------------------

#: The differentiable inputs in signature order (DeformConv2dGrads orders them otherwise).
_DEFORM_PRIMALS = ("input", "offset", "weight", "bias", "mask")


@functools.lru_cache(maxsize=None)
def _deform_conv2d_op(stride, padding, dilation, out_shape, dtype, method):
    dtype = np.dtype(dtype)
    # input, offset, weight, bias, mask: base ndims and whether N comes first
    base_ndims = (4, 4, 4, 1, 4)
    per_example = (True, True, False, False, True)

    def forward_host(input, offset, weight, bias, mask):
        return (_np_deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask),)

    @functools.lru_cache(maxsize=None)
    def backward_host(names):
        def host(grad_output, input, offset, weight, mask):
            grads = _np_deform_conv2d_backward(grad_output, input, offset, weight, stride, padding,
                                               dilation, mask, needs=names)
            return tuple(getattr(grads, n) for n in names)
        return host

    @jax.custom_vjp
    def op(input, offset, weight, bias, mask):
        (out,) = _callback(method, forward_host, [jax.ShapeDtypeStruct(out_shape, dtype)],
                           [input, offset, weight, bias, mask], base_ndims, per_example, (True,))
        return out

    def fwd(input, offset, weight, bias, mask):
        primals = (input, offset, weight, bias, mask)
        wanted = _perturbed(_DEFORM_PRIMALS, primals)
        values = [_value(p) for p in primals]
        residuals = (values[0], values[1], values[2], values[4], wanted)
        return op(*values), residuals

    def bwd(residuals, grad_output):
        input, offset, weight, mask, wanted = residuals
        names = [n for n in wanted.names if not (n == "mask" and mask is None)]
        if _is_zero(grad_output) or not names:
            return (None,) * 5
        arrays = dict(input=input, offset=offset, mask=mask, weight=weight,
                      bias=jax.ShapeDtypeStruct((out_shape[1],), dtype))
        shapes = [_struct(arrays[n], dtype) for n in names]
        results = _callback(method, backward_host(tuple(names)), shapes,
                            [grad_output, input, offset, weight, mask], (4, 4, 4, 4, 4),
                            (True, True, True, False, True),
                            tuple(n not in ("weight", "bias") for n in names))
        found = dict(zip(names, results))
        return tuple(found.get(n) for n in _DEFORM_PRIMALS)

    op.defvjp(fwd, bwd, symbolic_zeros=True)
    return jax.jit(op)


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Deformable 2-D convolution (v1), or modulated (v2) with ``mask``, on JAX arrays.

    Parameters
    ----------
    input : jax.Array, (N, C, H, W)
    offset : jax.Array, (N, 2*G*kh*kw, Ho, Wo)
    weight : jax.Array, (O, C/groups, kh, kw)
    bias : jax.Array, (O,), optional
    stride, padding, dilation : int or (int, int)
    mask : jax.Array, (N, G*kh*kw, Ho, Wo), optional

    Returns
    -------
    jax.Array, (N, O, Ho, Wo)
        Bit for bit :func:`defconv_np.deform_conv2d` of the same arrays.
        Differentiable in input, offset, weight, bias and mask.

    See Also
    --------
    torchvision.ops.deform_conv2d : the function this mirrors.
    defconv_np.deform_conv2d : the NumPy function it calls.
    """
    input = _as_array(input, "input")
    offset = _as_array(offset, "offset")
    weight = _as_array(weight, "weight")
    bias = _as_array(bias, "bias", optional=True)
    mask = _as_array(mask, "mask", optional=True)
    dtype = _float_dtype(input=input, offset=offset, weight=weight, bias=bias, mask=mask)
    geom = _check_deform(input, offset, weight, bias, mask, stride, padding, dilation)
    op = _deform_conv2d_op(geom.stride, geom.padding, geom.dilation, geom.out_shape, dtype.str,
                          CALLBACK)
    return op(input, offset, weight, bias, mask)


# --- conv2d -----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _conv2d_op(stride, padding, dilation, groups, out_shape, dtype, method):
    dtype = np.dtype(dtype)

    def forward_host(input, weight, bias):
        return (_np_conv2d(input, weight, bias, stride, padding, dilation, groups),)

    @functools.lru_cache(maxsize=None)
    def backward_host(names):
        def host(grad_output, input, weight):
            grads = _np_conv2d_backward(grad_output, input, weight, stride, padding, dilation,
                                        groups, needs=names)
            return tuple(getattr(grads, n) for n in names)
        return host

    @jax.custom_vjp
    def op(input, weight, bias):
        (out,) = _callback(method, forward_host, [jax.ShapeDtypeStruct(out_shape, dtype)],
                           [input, weight, bias], (4, 4, 1), (True, False, False), (True,))
        return out

    def fwd(input, weight, bias):
        primals = (input, weight, bias)
        wanted = _perturbed(CONV2D_GRADS, primals)
        values = [_value(p) for p in primals]
        return op(*values), (values[0], values[1], wanted)

    def bwd(residuals, grad_output):
        input, weight, wanted = residuals
        names = list(wanted.names)
        if _is_zero(grad_output) or not names:
            return (None,) * 3
        arrays = dict(input=input, weight=weight, bias=jax.ShapeDtypeStruct((out_shape[1],), dtype))
        shapes = [_struct(arrays[n], dtype) for n in names]
        results = _callback(method, backward_host(tuple(names)), shapes,
                            [grad_output, input, weight], (4, 4, 4), (True, True, False),
                            tuple(n == "input" for n in names))
        found = dict(zip(names, results))
        return tuple(found.get(n) for n in CONV2D_GRADS)

    op.defvjp(fwd, bwd, symbolic_zeros=True)
    return jax.jit(op)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation on JAX arrays, as ``torch.nn.functional.conv2d``.

    Parameters
    ----------
    input : jax.Array, (N, C, H, W)
    weight : jax.Array, (O, C/groups, kh, kw)
    bias : jax.Array, (O,), optional
    stride, padding, dilation : int or (int, int)
    groups : int

    Returns
    -------
    jax.Array, (N, O, Ho, Wo)
        Bit for bit :func:`defconv_np.conv2d`; differentiable in input, weight and bias.

    See Also
    --------
    torch.nn.functional.conv2d : the function this mirrors.
    defconv_np.conv2d : the NumPy function it calls.
    """
    input = _as_array(input, "input")
    weight = _as_array(weight, "weight")
    bias = _as_array(bias, "bias", optional=True)
    dtype = _float_dtype(input=input, weight=weight, bias=bias)
    geom = conv_geometry(input, weight, bias, stride, padding, dilation, groups)
    check_padded_input(geom, dtype.itemsize)
    op = _conv2d_op(geom.stride, geom.padding, geom.dilation, geom.groups, geom.out_shape,
                    dtype.str, CALLBACK)
    return op(input, weight, bias)


# --- grid_sample ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _grid_sample_op(mode, padding_mode, align_corners, out_shape, dtype, method):
    dtype = np.dtype(dtype)

    def forward_host(input, grid):
        return (_np_grid_sample(input, grid, mode, padding_mode, align_corners),)

    @functools.lru_cache(maxsize=None)
    def backward_host(names):
        def host(grad_output, input, grid):
            grads = _np_grid_sample_backward(grad_output, input, grid, mode, padding_mode,
                                             align_corners, needs=names)
            return tuple(getattr(grads, n) for n in names)
        return host

    @jax.custom_vjp
    def op(input, grid):
        (out,) = _callback(method, forward_host, [jax.ShapeDtypeStruct(out_shape, dtype)],
                           [input, grid], (4, 4), (True, True), (True,))
        return out

    def fwd(input, grid):
        wanted = _perturbed(GRID_SAMPLE_GRADS, (input, grid))
        return op(input.value, grid.value), (input.value, grid.value, wanted)

    def bwd(residuals, grad_output):
        input, grid, wanted = residuals
        names = list(wanted.names)
        if _is_zero(grad_output) or not names:
            return (None, None)
        arrays = dict(input=input, grid=grid)
        shapes = [_struct(arrays[n], dtype) for n in names]

        # The grid gradient adds partial sums over channel blocks whose split depends on
        # the batch size, so a folded batch would round differently from single calls
        # (float64); it is therefore computed per mapped element, like a loop would.
        results = _callback(method, backward_host(tuple(names)), shapes, [grad_output, input, grid],
                            (4, 4, 4), (True, True, True), tuple(n == "input" for n in names))
        found = dict(zip(names, results))
        return tuple(found.get(n) for n in GRID_SAMPLE_GRADS)

    op.defvjp(fwd, bwd, symbolic_zeros=True)
    return jax.jit(op)


def grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=False):
    """Sample ``input`` at ``grid`` on JAX arrays, as ``torch.nn.functional.grid_sample`` (4-D).

    Parameters
    ----------
    input : jax.Array, (N, C, H, W)
    grid : jax.Array, (N, Hg, Wg, 2), x first
    mode : {"bilinear", "nearest"}
    padding_mode : {"zeros", "border", "reflection"}
    align_corners : bool

    Returns
    -------
    jax.Array, (N, C, Hg, Wg)
        Bit for bit :func:`defconv_np.grid_sample`; differentiable in input and grid.

    See Also
    --------
    torch.nn.functional.grid_sample : the function this mirrors.
    defconv_np.grid_sample : the NumPy function it calls.
    """
    input = _as_array(input, "input")
    grid = _as_array(grid, "grid")
    dtype = _float_dtype(input=input, grid=grid)
    modes, _ = _check_sample(input, grid, mode, padding_mode, align_corners)
    out_shape = (*input.shape[:2], *grid.shape[1:-1])  # 4-D, 5-D
    op = _grid_sample_op(mode, padding_mode, modes.align_corners, out_shape, dtype.str,
                         CALLBACK)
    return op(input, grid)


# --- affine_grid ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _affine_grid_op(size, align_corners, dtype, method):
    dtype = np.dtype(dtype)
    _, channels, height, width = size

    # The batch of size follows theta's, so mapped axes fold into N.
    def forward_host(theta):
        return (_np_affine_grid(theta, (theta.shape[0], channels, height, width), align_corners),)

    def backward_host(grad_grid):
        return (_np_affine_grid_backward(grad_grid, (grad_grid.shape[0], channels, height, width),
                                         align_corners),)

    @jax.custom_vjp
    def op(theta):
        grid_shape = jax.ShapeDtypeStruct((size[0], height, width, 2), dtype)
        (grid,) = _callback(method, forward_host, [grid_shape], [theta], (3,), (True,), (True,))
        return grid

    def fwd(theta):
        return op(theta.value), None

    def bwd(_, grad_grid):
        if _is_zero(grad_grid):
            return (None,)
        theta_shape = jax.ShapeDtypeStruct((size[0], 2, 3), dtype)
        return _callback(method, backward_host, [theta_shape], [grad_grid], (4,), (True,), (True,))

    op.defvjp(fwd, bwd, symbolic_zeros=True)
    return jax.jit(op)


def affine_grid(theta, size, align_corners=False):
    """Sampling grid of affine maps on JAX arrays, as ``torch.nn.functional.affine_grid``.

    Parameters
    ----------
    theta : jax.Array, (N, 2, 3)
    size : (int, int, int, int)
        The output size (N, C, H, W); C is not used.
    align_corners : bool

    Returns
    -------
    jax.Array, (N, H, W, 2)
        Bit for bit :func:`defconv_np.affine_grid`; differentiable in theta.

    See Also
    --------
    torch.nn.functional.affine_grid : the function this mirrors.
    defconv_np.affine_grid : the NumPy function it calls.
    """
    theta = _as_array(theta, "theta")
    dtype = _float_dtype(theta=theta)
    size = _output_size(size, dtype.itemsize)
    _validate.shape_equals(theta, "theta", (size[0], 2, 3), "(N, 2, 3) for size (N, C, H, W)")
    align_corners = _validate.flag(align_corners, "align_corners")
    return _affine_grid_op(size, align_corners, dtype.str, CALLBACK)(theta)


# --- ms_deform_attn ---------------------------------------------------------------------------

def _static_integers(value, name):
    """A level description (tuple/list of ints or pairs, NumPy integer array, or a
    concrete JAX array) as a NumPy array; a traced array is refused: the levels
    decide the kernels' work and must be known at trace time."""
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f"{name} must be static (a tuple of ints or pairs, or a NumPy array), "
                        f"not a traced JAX array: the level shapes decide the work at trace "
                        f"time; pass them as Python ints or a NumPy array")
    if isinstance(value, jax.Array):
        return np.asarray(value)
    return value


@functools.lru_cache(maxsize=None)
def _ms_deform_attn_op(shapes, out_shape, dtype, method):
    dtype = np.dtype(dtype)
    sizes = [h * w for h, w in shapes]
    starts = np.array([sum(sizes[:i]) for i in range(len(shapes))], np.int64)
    levels = np.array(shapes, np.int64).reshape(len(shapes), 2)
    # value, sampling_locations, attention_weights: all with N first
    base_ndims = (4, 6, 5)

    def forward_host(value, locations, weights):
        return (_np_ms_deform_attn(value, levels, starts, locations, weights),)

    @functools.lru_cache(maxsize=None)
    def backward_host(names):
        def host(grad_output, value, locations, weights):
            grads = _np_ms_deform_attn_backward(grad_output, value, levels, starts, locations,
                                                weights, needs=names)
            return tuple(getattr(grads, n) for n in names)
        return host

    @jax.custom_vjp
    def op(value, locations, weights):
        (out,) = _callback(method, forward_host, [jax.ShapeDtypeStruct(out_shape, dtype)],
                           [value, locations, weights], base_ndims, (True,) * 3, (True,))
        return out

    def fwd(value, locations, weights):
        primals = (value, locations, weights)
        wanted = _perturbed(MS_DEFORM_ATTN_GRADS, primals)
        values = [_value(p) for p in primals]
        return op(*values), (*values, wanted)

    def bwd(residuals, grad_output):
        value, locations, weights, wanted = residuals
        names = list(wanted.names)
        if _is_zero(grad_output) or not names:
            return (None,) * 3
        arrays = dict(value=value, sampling_locations=locations, attention_weights=weights)
        shapes = [_struct(arrays[n], dtype) for n in names]
        # every gradient is per image (the value gradient adds over queries, image by image)
        results = _callback(method, backward_host(tuple(names)), shapes,
                            [grad_output, value, locations, weights], (3,) + base_ndims,
                            (True,) * 4, (True,) * len(names))
        found = dict(zip(names, results))
        return tuple(found.get(n) for n in MS_DEFORM_ATTN_GRADS)

    op.defvjp(fwd, bwd, symbolic_zeros=True)
    return jax.jit(op)


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights):
    """Multi-scale deformable attention on JAX arrays (Deformable DETR's core op).

    Parameters
    ----------
    value : jax.Array, (N, S, M, D)
    spatial_shapes : tuple of (H, W) pairs, or NumPy integer array, (L, 2)
        Static: part of the compiled computation (a concrete JAX array is read
        to the host; a traced one is refused).
    level_start_index : tuple of ints, or NumPy integer array, (L,)
        ``0, H_0 W_0, ...`` (checked); static like ``spatial_shapes``.
    sampling_locations : jax.Array, (N, Lq, M, L, P, 2)
        Normalised to [0, 1], (x, y).
    attention_weights : jax.Array, (N, Lq, M, L, P)

    Returns
    -------
    jax.Array, (N, Lq, M*D)
        Bit for bit :func:`defconv_np.ms_deform_attn`; differentiable in value,
        sampling_locations and attention_weights.

    See Also
    --------
    defconv_np.ms_deform_attn : the NumPy function it calls.
    """
    value = _as_array(value, "value")
    sampling_locations = _as_array(sampling_locations, "sampling_locations")
    attention_weights = _as_array(attention_weights, "attention_weights")
    dtype = _float_dtype(value=value, sampling_locations=sampling_locations,
                         attention_weights=attention_weights)
    shapes = _check_attention(value, _static_integers(spatial_shapes, "spatial_shapes"),
                              _static_integers(level_start_index, "level_start_index"),
                              sampling_locations, attention_weights)
    n, _, heads, depth = value.shape
    out_shape = (n, sampling_locations.shape[1], heads * depth)
    op = _ms_deform_attn_op(shapes, out_shape, dtype.str, CALLBACK)
    return op(value, sampling_locations, attention_weights)


# --- active_conv2d ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _active_conv2d_op(stride, padding, dilation, out_shape, dtype, method):
    dtype = np.dtype(dtype)

    def forward_host(input, offset, weight, bias):
        return (_np_active_conv2d(input, offset, weight, bias, stride, padding, dilation),)

    @functools.lru_cache(maxsize=None)
    def backward_host(names):
        def host(grad_output, input, offset, weight):
            grads = _np_active_conv2d_backward(grad_output, input, offset, weight, stride,
                                               padding, dilation, needs=names)
            return tuple(getattr(grads, n) for n in names)
        return host

    @jax.custom_vjp
    def op(input, offset, weight, bias):
        (out,) = _callback(method, forward_host, [jax.ShapeDtypeStruct(out_shape, dtype)],
                           [input, offset, weight, bias], (4, 1, 4, 1),
                           (True, False, False, False), (True,))
        return out

    def fwd(input, offset, weight, bias):
        primals = (input, offset, weight, bias)
        wanted = _perturbed(ACTIVE_CONV2D_GRADS, primals)
        values = [_value(p) for p in primals]
        return op(*values), (values[0], values[1], values[2], wanted)

    def bwd(residuals, grad_output):
        input, offset, weight, wanted = residuals
        names = list(wanted.names)
        if _is_zero(grad_output) or not names:
            return (None,) * 4
        arrays = dict(input=input, offset=offset, weight=weight,
                      bias=jax.ShapeDtypeStruct((out_shape[1],), dtype))
        shapes = [_struct(arrays[n], dtype) for n in names]
        # the offset, weight and bias gradients add over the batch: per mapped element
        results = _callback(method, backward_host(tuple(names)), shapes,
                            [grad_output, input, offset, weight], (4, 4, 1, 4),
                            (True, True, False, False), tuple(n == "input" for n in names))
        found = dict(zip(names, results))
        return tuple(found.get(n) for n in ACTIVE_CONV2D_GRADS)

    op.defvjp(fwd, bwd, symbolic_zeros=True)
    return jax.jit(op)


def active_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1):
    """Active convolution on JAX arrays: a deformable convolution whose offsets
    (the kernel positions) are one vector shared by every image and position.

    Parameters
    ----------
    input : jax.Array, (N, C, H, W)
    offset : jax.Array, (2*G*kh*kw,)
        ``dy`` at ``2*(g*kh*kw + i*kw + j)``, ``dx`` next.
    weight : jax.Array, (O, C/groups, kh, kw)
        Weight groups are inferred as ``C // weight.shape[1]``.
    bias : jax.Array, (O,), optional
    stride, padding, dilation : int or (int, int)

    Returns
    -------
    jax.Array, (N, O, Ho, Wo)
        Bit for bit :func:`defconv_np.active_conv2d`; differentiable in input,
        offset, weight and bias.

    See Also
    --------
    defconv_np.active_conv2d : the NumPy function it calls.
    """
    input = _as_array(input, "input")
    offset = _as_array(offset, "offset")
    weight = _as_array(weight, "weight")
    bias = _as_array(bias, "bias", optional=True)
    dtype = _float_dtype(input=input, offset=offset, weight=weight, bias=bias)
    geom = _check_active(input, offset, weight, bias, stride, padding, dilation)
    op = _active_conv2d_op(geom.stride, geom.padding, geom.dilation, geom.out_shape, dtype.str,
                           CALLBACK)
    return op(input, offset, weight, bias)

"""Active convolution: deformable convolution whose offsets are shared by
every image and output position.

Jeon & Kim, "Active Convolution: Learning the Shape of Convolution for Image
Classification", CVPR 2017. The op equals ``deform_conv2d`` with the offset
broadcast to (N, 2*G*kh*kw, Ho, Wo), boundary rules and all, and its offset
gradient is deform_conv2d's summed over images and output positions.

Shared positions make every sample of a kernel point a fixed four-tap
bilinear stencil on the zero-padded input (``_stencil``), so the forward is an
im2col with four taps per kernel point and the same GEMM as ``conv2d``;
deform_conv2d's window rule (a sample outside ``-1 <= y < H`` is 0) coincides
with plain zero padding for finite positions. Where that padded plane would be
much larger than a dense conv's (kernel points far outside the image but still
reaching it), the deformable path runs on the broadcast offsets instead.
"""

from typing import NamedTuple

import numpy as np

from . import _columns, _stencil, _validate
from ._typing import Array, IntPair, Iterable, Optional
from ._arrays import array_module, common_float_dtype, on_arrays_device
from ._backends import launchers
from ._geometry import check_grad_output, check_offset_groups, conv_geometry
from .deformable import deform_conv2d, deform_conv2d_backward


class ActiveConv2dGrads(NamedTuple):
    """Gradients of :func:`active_conv2d`; an entry not asked for is None."""

    input: object
    offset: object
    weight: object
    bias: object


ACTIVE_CONV2D_GRADS = ActiveConv2dGrads._fields


def _check(input, offset, weight, bias, stride, padding, dilation):
    geom = conv_geometry(input, weight, bias, stride, padding, dilation, None)
    _validate.ndim(offset, "offset", 1, "(2*G*kh*kw,)")
    check_offset_groups(geom, offset, 0)
    return geom


def _host(xp, array):
    return array if xp is np else xp.asnumpy(array)


def _broadcast(xp, offset, geom):
    """The (N, 2*G*K, Ho, Wo) offset deform_conv2d sees."""
    return xp.broadcast_to(offset.reshape(1, -1, 1, 1),
                           (geom.batch, offset.shape[0], geom.out_h, geom.out_w))


def _columns_of(xp, input, offset, geom):
    """The fast path's columns provider, or None where the deformable path runs."""
    stencil = _stencil.plan(_host(xp, offset), geom)
    if not _stencil.worth_it(stencil, geom):
        return None
    return launchers(xp).ActiveColumns(input, stencil, geom.kernel_points, geom.stride,
                                       geom.out_w)


@on_arrays_device
def active_conv2d(input: Array, offset: Array, weight: Array, bias: Optional[Array] = None,
                  stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1) -> Array:
    """Active convolution: a deformable convolution with one learned offset
    per kernel point, shared by all images and output positions.

    Parameters
    ----------
    input : ndarray, (N, C, H, W)
    offset : ndarray, (2*G*kh*kw,)
        ``dy`` at ``2*(g*kh*kw + i*kw + j)`` and ``dx`` at the next entry for
        kernel point ``(i, j)`` of offset group ``g`` (deform_conv2d's offset
        channels); input channel ``c`` belongs to offset group ``c // (C/G)``.
    weight : ndarray, (O, C/groups, kh, kw)
        Weight groups are inferred as ``C // weight.shape[1]``.
    bias : ndarray, (O,), optional
    stride, padding, dilation : int or (int, int)

    Returns
    -------
    ndarray, (N, O, Ho, Wo)
        ``deform_conv2d(input, offset broadcast to (N, 2*G*kh*kw, Ho, Wo), weight, bias, ...)``.
        Same array type (NumPy or CuPy) and dtype (float32 or float64) as ``input``.

    Raises
    ------
    TypeError
        An array argument that is not a ``numpy.ndarray`` or ``cupy.ndarray`` (lists,
        masked arrays, tensors), a dtype other than float32/float64 or arrays of
        different dtypes, NumPy and CuPy arrays mixed, or a stride, padding, dilation
        that is not an int or a pair of ints.
    ValueError
        Shapes that do not fit together (offset length not
        2*G*kh*kw), a stride or dilation below 1, a
        negative padding, an empty output, or sizes beyond int64.

    Notes
    -----
    Sampling is deform_conv2d's: zero-padded bilinear at ``y = ho*sh - ph +
    i*dh + dy``, ``x = wo*sw - pw + j*dw + dx``. The fast path splits each
    position into the integer ``floor(dy)`` and the fraction ``dy - floor(dy)``
    (in [0, 1): a fraction that rounds to 1 moves to the next cell), where
    deform_conv2d rounds ``y`` once in the input dtype: the two agree to
    rounding (for offsets within a rounding of an integer, the offset gradient
    may come from the neighbouring cell, as the derivative jumps there). A NaN or infinite offset, or one so large (1e30) that the
    kernel point never reaches the image, makes that kernel point sample 0 with
    zero gradients, as in deform_conv2d. The offset is read on the host (one
    small device-to-host copy for CuPy arrays).

    See Also
    --------
    deform_conv2d : the same op with per-position offsets.
    active_conv2d_backward : its vector-Jacobian product.
    """
    xp = array_module(input=input, offset=offset, weight=weight, bias=bias)
    dtype = common_float_dtype(input=input, offset=offset, weight=weight, bias=bias)
    geom = _check(input, offset, weight, bias, stride, padding, dilation)
    columns = _columns_of(xp, input, offset, geom)
    if columns is None:
        return deform_conv2d(input, _broadcast(xp, offset, geom), weight, bias, geom.stride,
                             geom.padding, geom.dilation)
    out = xp.empty(geom.out_shape, dtype)
    backend = launchers(xp)
    chunks = _columns.chunks_for(geom, dtype, buffers=1, backend=backend)
    _columns.forward(xp, out, weight, geom.groups, chunks, columns)
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    return out


@on_arrays_device
def active_conv2d_backward(grad_output: Array, input: Array, offset: Array, weight: Array,
                           stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                           *, needs: Iterable[str] = ACTIVE_CONV2D_GRADS
                           ) -> ActiveConv2dGrads:
    """Vector-Jacobian product of :func:`active_conv2d`.

    Parameters
    ----------
    grad_output : ndarray, (N, O, Ho, Wo)
    input, offset, weight, stride, padding, dilation
        As given to :func:`active_conv2d`.
    needs : iterable of {"input", "offset", "weight", "bias"}
        The gradients to compute; the others are returned as None.

    Returns
    -------
    ActiveConv2dGrads
        ``input`` (N, C, H, W), ``offset`` (2*G*kh*kw,), ``weight``
        (O, C/groups, kh, kw), ``bias`` (O,).
        Each gradient has the array type (NumPy or CuPy) and dtype (float32 or
        float64) of the inputs; gradients not named in ``needs`` are None.

    Raises
    ------
    TypeError
        An array argument that is not a ``numpy.ndarray`` or ``cupy.ndarray`` (lists,
        masked arrays, tensors), a dtype other than float32/float64 or arrays of
        different dtypes, NumPy and CuPy arrays mixed, or a stride, padding, dilation
        that is not an int or a pair of ints, ``needs`` that is not an iterable of
        names.
    ValueError
        Shapes that do not fit together (as in :func:`active_conv2d`, and
        ``grad_output`` not the output's shape); ``needs`` naming an unknown gradient, a stride or dilation below 1, a
        negative padding, an empty output, or sizes beyond int64.

    Notes
    -----
    The offset gradient is deform_conv2d's summed over images and output
    positions: the derivative of each sample in the cell of ``floor(y),
    floor(x)`` with zero-padded corners (so on ``y = -1`` the derivative
    towards row 0). The input gradient is the exact adjoint of the sampling.
    Deterministic on both backends.
    """
    wanted = _validate.needs(needs, ACTIVE_CONV2D_GRADS)
    xp = array_module(grad_output=grad_output, input=input, offset=offset, weight=weight)
    dtype = common_float_dtype(grad_output=grad_output, input=input, offset=offset, weight=weight)
    geom = _check(input, offset, weight, None, stride, padding, dilation)
    check_grad_output(grad_output, geom)
    want_input, want_weight = "input" in wanted, "weight" in wanted
    want_offset = "offset" in wanted
    want_columns = want_input or want_offset
    grad_bias = grad_output.sum(axis=(0, 2, 3)) if "bias" in wanted else None
    grad_input = grad_weight = None
    grad_offset = xp.zeros(offset.shape, dtype) if want_offset else None
    if not (want_columns or want_weight):
        return ActiveConv2dGrads(None, grad_offset, None, grad_bias)
    columns = _columns_of(xp, input, offset, geom)
    if columns is None:
        deform_needs = [name for name in ("input", "offset", "weight") if name in wanted]
        g = deform_conv2d_backward(grad_output, input, _broadcast(xp, offset, geom), weight,
                                   geom.stride, geom.padding, geom.dilation, needs=deform_needs,
                                   deterministic=True)
        if want_offset:
            grad_offset = g.offset.sum(axis=(0, 2, 3))
        return ActiveConv2dGrads(g.input, grad_offset, g.weight, grad_bias)
    backend = launchers(xp)
    chunks = _columns.chunks_for(geom, dtype, buffers=want_columns + want_weight,
                                 backend=backend)
    # an empty batch has no chunks and comes out as zero gradients
    columns.start_backward(want_input, want_offset)
    grad_weight = _columns.backward(xp, grad_output, weight, geom.groups, chunks, columns,
                                    want_weight, want_columns)
    grad_input = columns.input_grad() if want_input else None
    if want_offset:
        grad_offset = columns.offset_grad()
    return ActiveConv2dGrads(grad_input, grad_offset, grad_weight, grad_bias)

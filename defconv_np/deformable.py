"""Deformable convolution v1 and modulated deformable convolution v2.

v1: Dai et al., "Deformable Convolutional Networks", ICCV 2017.
v2: Zhu et al., "Deformable ConvNets v2: More Deformable, Better Results",
CVPR 2019 (the ``mask``). Semantics follow ``torchvision.ops.deform_conv2d``
index for index, including its boundary rule (a sample at ``y <= -1``,
``y >= H``, ``x <= -1`` or ``x >= W`` is zero), its offset gradient, taken
in the cell of ``floor(y), floor(x)`` with no window test (so a sample on
``y = -1`` gets the derivative towards row 0), and its order of the mask
products.
"""

from typing import NamedTuple

from . import _columns, _validate
from ._typing import Array, IntPair, Iterable, Optional
from ._arrays import array_module, common_float_dtype, on_arrays_device
from ._backends import launchers
from ._geometry import check_grad_output, check_offset_groups, conv_geometry


class DeformConv2dGrads(NamedTuple):
    """Gradients of :func:`deform_conv2d`; an entry not asked for is None, and
    ``mask`` is None when the forward had no mask."""

    input: object
    offset: object
    mask: object
    weight: object
    bias: object


DEFORM_CONV2D_GRADS = DeformConv2dGrads._fields


def _check(input, offset, weight, bias, mask, stride, padding, dilation):
    geom = conv_geometry(input, weight, bias, stride, padding, dilation, None)
    _validate.ndim(offset, "offset", 4, "(N, 2*G*kh*kw, Ho, Wo)")
    offset_groups = check_offset_groups(geom, offset, 1)
    points = geom.kernel_points
    n_off = offset.shape[1]
    expected = (geom.batch, n_off, geom.out_h, geom.out_w)
    _validate.shape_equals(offset, "offset", expected, "(N, 2*G*kh*kw, Ho, Wo)")
    if mask is not None:
        _validate.ndim(mask, "mask", 4, "(N, G*kh*kw, Ho, Wo)")
        _validate.shape_equals(mask, "mask", (geom.batch, offset_groups * points, geom.out_h,
                                              geom.out_w), "(N, G*kh*kw, Ho, Wo)")
    return geom


@on_arrays_device
def deform_conv2d(input: Array, offset: Array, weight: Array, bias: Optional[Array] = None,
                  stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                  mask: Optional[Array] = None) -> Array:
    """Deformable 2-D convolution (v1), or modulated (v2) when ``mask`` is given.

    Parameters
    ----------
    input : ndarray, (N, C, H, W)
    offset : ndarray, (N, 2*G*kh*kw, Ho, Wo)
        Per output pixel and kernel point ``(i, j)`` of offset group ``g``, the
        displacement ``dy`` at channel ``2*(g*kh*kw + i*kw + j)`` and ``dx`` at the
        next one. Input channel ``c`` belongs to offset group ``c // (C/G)``.
    weight : ndarray, (O, C/groups, kh, kw)
        Weight groups are inferred as ``C // weight.shape[1]``.
    bias : ndarray, (O,), optional
    stride, padding, dilation : int or (int, int)
    mask : ndarray, (N, G*kh*kw, Ho, Wo), optional
        Modulation scalars, multiplied as given (apply a sigmoid yourself).

    Returns
    -------
    ndarray, (N, O, Ho, Wo)
        ``out[n, o] = bias[o] + sum_{c,i,j} weight[o, c, i, j] * mask * x(n, c, y, x)``
        sampled at ``y = ho*sh - ph + i*dh + dy``, ``x = wo*sw - pw + j*dw + dx``
        with zero-padded bilinear interpolation.
        Same array type (NumPy or CuPy) and dtype (float32 or float64) as ``input``.

    Raises
    ------
    TypeError
        An array argument that is not a ``numpy.ndarray`` or ``cupy.ndarray`` (lists,
        masked arrays, tensors), a dtype other than float32/float64 or arrays of
        different dtypes, NumPy and CuPy arrays mixed, or a stride, padding, dilation
        that is not an int or a pair of ints.
    ValueError
        Shapes that do not fit together (offset or mask channels
        not a multiple of the kernel size, their Ho, Wo not the output's), a stride or dilation below 1, a
        negative padding, an empty output, or sizes beyond int64.

    Notes
    -----
    A sample with ``y < -1``, ``y >= H``, ``x < -1`` or ``x >= W`` is 0;
    inside that window, corners outside the image count as 0 (so ``y = -1``
    gives 0 too). The mask multiplies the finished sample, as torchvision does. Any offset value
    is safe: NaN, infinities and huge values (1e30) all fall outside the window,
    so such a sample is 0 (with zero offset and mask gradients).

    See Also
    --------
    torchvision.ops.deform_conv2d : the function this mirrors.
    deform_conv2d_backward : its vector-Jacobian product.
    """
    xp = array_module(input=input, offset=offset, weight=weight, bias=bias, mask=mask)
    dtype = common_float_dtype(input=input, offset=offset, weight=weight, bias=bias, mask=mask)
    geom = _check(input, offset, weight, bias, mask, stride, padding, dilation)
    out = xp.empty(geom.out_shape, dtype)
    backend = launchers(xp)
    chunks = _columns.chunks_for(geom, dtype, buffers=1, backend=backend)
    columns = backend.DeformColumns(input, offset, mask, geom.kernel, geom.stride, geom.padding,
                                    geom.dilation, geom.groups)
    _columns.forward(xp, out, weight, geom.groups, chunks, columns)
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    return out


@on_arrays_device
def deform_conv2d_backward(grad_output: Array, input: Array, offset: Array, weight: Array,
                           stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                           mask: Optional[Array] = None, *,
                           needs: Iterable[str] = DEFORM_CONV2D_GRADS,
                           deterministic: bool = False) -> DeformConv2dGrads:
    """Vector-Jacobian product of :func:`deform_conv2d`.

    Parameters
    ----------
    grad_output : ndarray, (N, O, Ho, Wo)
    input, offset, weight, stride, padding, dilation, mask
        As given to :func:`deform_conv2d`.
    needs : iterable of {"input", "offset", "mask", "weight", "bias"}
        The gradients to compute; the others are returned as None. Skipping
        "weight" skips re-building the columns; skipping "input", "offset" and
        "mask" skips the column-gradient GEMM.
    deterministic : bool
        On CUDA, compute the input gradient without atomics (each thread owns
        an input plane and adds in a fixed order), so repeated calls agree to
        the bit; slower. The CPU kernels are always deterministic.

    Returns
    -------
    DeformConv2dGrads
        ``input`` (N, C, H, W), ``offset`` (N, 2*G*kh*kw, Ho, Wo), ``mask``
        (N, G*kh*kw, Ho, Wo) or None without a mask, ``weight`` (O, C/groups,
        kh, kw), ``bias`` (O,).
        Each gradient has the array type (NumPy or CuPy) and dtype (float32 or
        float64) of the inputs; gradients not named in ``needs`` are None.

    Raises
    ------
    TypeError
        An array argument that is not a ``numpy.ndarray`` or ``cupy.ndarray`` (lists,
        masked arrays, tensors), a dtype other than float32/float64 or arrays of
        different dtypes, NumPy and CuPy arrays mixed, or a stride, padding, dilation
        that is not an int or a pair of ints, a non-bool ``deterministic``, ``needs``
        that is not an iterable of names.
    ValueError
        Shapes that do not fit together (as in :func:`deform_conv2d`, and
        ``grad_output`` not the output's shape); ``needs`` naming an unknown gradient, a stride or dilation below 1, a
        negative padding, an empty output, or sizes beyond int64.

    Notes
    -----
    The offset gradient is the derivative of the bilinear sample in the cell of
    ``floor(y), floor(x)`` (torchvision's rule): at integer coordinates, where
    the sample is not differentiable, it is the one-sided derivative towards
    larger coordinates, and on ``y = -1`` (``x = -1``) the derivative towards
    row (column) 0, as torchvision gives; mmcv gives 0 there. Samples beyond
    the window get zero offset and mask gradients. The input gradient is the
    exact adjoint of the forward sampling. Products keep torchvision's order:
    ``(mask * weight) * g`` for the input, ``sum_c (mask * d sample) * g_c``
    for the offset, ``sum_c g_c * sample`` for the mask.
    """
    wanted = _validate.needs(needs, DEFORM_CONV2D_GRADS)
    deterministic = _validate.flag(deterministic, "deterministic")
    xp = array_module(grad_output=grad_output, input=input, offset=offset, weight=weight,
                      mask=mask)
    dtype = common_float_dtype(grad_output=grad_output, input=input, offset=offset,
                               weight=weight, mask=mask)
    geom = _check(input, offset, weight, None, mask, stride, padding, dilation)
    check_grad_output(grad_output, geom)
    want_input, want_weight = "input" in wanted, "weight" in wanted
    want_offset = "offset" in wanted
    want_mask = "mask" in wanted and mask is not None
    want_columns = want_input or want_offset or want_mask
    grad_input = grad_weight = None
    grad_offset = xp.zeros(offset.shape, dtype) if want_offset else None
    grad_mask = xp.zeros(mask.shape, dtype) if want_mask else None
    backend = launchers(xp)
    chunks = _columns.chunks_for(geom, dtype, buffers=want_columns + want_weight,
                                 backend=backend)
    if want_columns or want_weight:
        # an empty batch has no chunks and comes out as zero gradients
        columns = backend.DeformColumns(input, offset, mask, geom.kernel, geom.stride,
                                        geom.padding, geom.dilation, geom.groups,
                                        deterministic=deterministic)
        columns.start_backward(want_input, grad_offset, grad_mask)
        grad_weight = _columns.backward(xp, grad_output, weight, geom.groups, chunks, columns,
                                        want_weight, want_columns)
        grad_input = columns.input_grad() if want_input else None
    grad_bias = grad_output.sum(axis=(0, 2, 3)) if "bias" in wanted else None
    return DeformConv2dGrads(grad_input, grad_offset, grad_mask, grad_weight, grad_bias)

"""2-D convolution (cross-correlation) with stride, padding, dilation and groups.

Dilated ("atrous") convolution: Yu & Koltun, "Multi-Scale Context Aggregation by
Dilated Convolutions", ICLR 2016. Semantics follow ``torch.nn.functional.conv2d``.
"""

from typing import NamedTuple

from . import _columns, _validate
from ._typing import Array, IntPair, Iterable, Optional
from ._arrays import array_module, common_float_dtype, on_arrays_device
from ._backends import launchers
from ._geometry import check_grad_output, check_padded_input, conv_geometry


class Conv2dGrads(NamedTuple):
    """Gradients of :func:`conv2d`; an entry not asked for is None."""

    input: object
    weight: object
    bias: object


CONV2D_GRADS = Conv2dGrads._fields


@on_arrays_device
def conv2d(input: Array, weight: Array, bias: Optional[Array] = None, stride: IntPair = 1,
           padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1) -> Array:
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    Parameters
    ----------
    input : ndarray, (N, C, H, W)
    weight : ndarray, (O, C/groups, kh, kw)
    bias : ndarray, (O,), optional
    stride, padding, dilation : int or (int, int)
        Padding is zeros, added on both sides.
    groups : int
        C and O must be divisible by it.

    Returns
    -------
    ndarray, (N, O, Ho, Wo)
        ``Ho = (H + 2*ph - dh*(kh - 1) - 1) // sh + 1``, likewise ``Wo``.
        Same array type (NumPy or CuPy) and dtype (float32 or float64) as input.

    Raises
    ------
    TypeError
        An array argument that is not a ``numpy.ndarray`` or ``cupy.ndarray`` (lists,
        masked arrays, tensors), a dtype other than float32/float64 or arrays of
        different dtypes, NumPy and CuPy arrays mixed, or a stride, padding, dilation or
        groups that is not an int or a pair of ints.
    ValueError
        Shapes that do not fit together (C or O not divisible by groups), a stride or dilation below 1, a
        negative padding, an empty output, or sizes beyond int64.

    See Also
    --------
    torch.nn.functional.conv2d : the function this mirrors.
    conv2d_backward : its vector-Jacobian product.
    """
    xp = array_module(input=input, weight=weight, bias=bias)
    dtype = common_float_dtype(input=input, weight=weight, bias=bias)
    geom = conv_geometry(input, weight, bias, stride, padding, dilation, groups)
    check_padded_input(geom, dtype.itemsize)
    out = xp.empty(geom.out_shape, dtype)
    backend = launchers(xp)
    implicit = getattr(backend, "implicit_conv2d_forward", None)
    if implicit is None or not implicit(input, weight, bias, geom, out):
        chunks = _columns.chunks_for(geom, dtype, buffers=1, backend=backend)
        columns = backend.DenseColumns(input, geom.kernel, geom.stride, geom.padding,
                                       geom.dilation, geom.out_w, geom.groups)
        _columns.forward(xp, out, weight, geom.groups, chunks, columns)
        if bias is not None:
            out += bias.reshape(1, -1, 1, 1)
    return out


@on_arrays_device
def conv2d_backward(grad_output: Array, input: Array, weight: Array, stride: IntPair = 1,
                    padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1, *,
                    needs: Iterable[str] = CONV2D_GRADS) -> Conv2dGrads:
    """Vector-Jacobian product of :func:`conv2d`.

    Parameters
    ----------
    grad_output : ndarray, (N, O, Ho, Wo)
    input, weight, stride, padding, dilation, groups
        As given to :func:`conv2d`.
    needs : iterable of {"input", "weight", "bias"}
        The gradients to compute; the others are returned as None.

    Returns
    -------
    Conv2dGrads
        ``input`` (N, C, H, W), ``weight`` (O, C/groups, kh, kw), ``bias`` (O,).
        Each gradient has the array type (NumPy or CuPy) and dtype (float32 or
        float64) of the inputs; gradients not named in ``needs`` are None.

    Raises
    ------
    TypeError
        An array argument that is not a ``numpy.ndarray`` or ``cupy.ndarray`` (lists,
        masked arrays, tensors), a dtype other than float32/float64 or arrays of
        different dtypes, NumPy and CuPy arrays mixed, or a stride, padding, dilation or
        groups that is not an int or a pair of ints, ``needs`` that is not an iterable
        of names.
    ValueError
        Shapes that do not fit together (``grad_output`` not the
        output's shape); ``needs`` naming an unknown gradient, a stride or dilation below 1, a
        negative padding, an empty output, or sizes beyond int64.

    See Also
    --------
    torch.nn.grad.conv2d_input, torch.nn.grad.conv2d_weight : the PyTorch equivalents.
    """
    wanted = _validate.needs(needs, CONV2D_GRADS)
    xp = array_module(grad_output=grad_output, input=input, weight=weight)
    dtype = common_float_dtype(grad_output=grad_output, input=input, weight=weight)
    geom = conv_geometry(input, weight, None, stride, padding, dilation, groups)
    check_padded_input(geom, dtype.itemsize)
    check_grad_output(grad_output, geom)
    want_input, want_weight = "input" in wanted, "weight" in wanted
    grad_input = grad_weight = None
    backend = launchers(xp)
    implicit = getattr(backend, "implicit_conv2d_backward", None)
    grads = None if implicit is None else implicit(grad_output, input, weight, geom,
                                                   want_input, want_weight)
    if grads is not None:
        grad_input, grad_weight = grads
    elif want_input or want_weight:
        # an empty batch has no chunks and comes out as zero gradients
        chunks = _columns.chunks_for(geom, dtype, buffers=want_input + want_weight,
                                     backend=backend)
        columns = backend.DenseColumns(input, geom.kernel, geom.stride, geom.padding,
                                       geom.dilation, geom.out_w, geom.groups)
        columns.start_backward(want_input)
        grad_weight = _columns.backward(xp, grad_output, weight, geom.groups, chunks, columns,
                                        want_weight, want_input)
        grad_input = columns.input_grad() if want_input else None
    grad_bias = grad_output.sum(axis=(0, 2, 3)) if "bias" in wanted else None
    return Conv2dGrads(grad_input, grad_weight, grad_bias)


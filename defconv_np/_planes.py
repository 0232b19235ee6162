"""Padded planes and sampling grids, on either array module: the layout pieces
that the CPU and CUDA launchers share."""

from typing import NamedTuple

import numpy as np

from .kernels import sampling

#: Zero border of the bilinear-sampling planes, as (top/left, bottom/right).
SAMPLING_PAD = ((sampling.PAD_BEFORE, sampling.PAD_BEFORE),
                (sampling.PAD_AFTER, sampling.PAD_AFTER))


def zero_padded(xp, array, before, after):
    """Contiguous copy of ``array`` (N, C, H, W) with zero borders of
    ``before = (top, left)`` and ``after = (bottom, right)``; converts any
    layout (Fortran, negative strides, read-only) in the same pass."""
    (tb, lb), (ta, la) = before, after
    n, c, h, w = array.shape
    out = xp.zeros((n, c, h + tb + ta, w + lb + la), array.dtype)
    out[:, :, tb:tb + h, lb:lb + w] = array
    return out


def cropped(xp, padded, shape, before, after):
    """The (N, C, H, W) interior of a plane padded as ``zero_padded`` pads
    (``padded`` may be flattened to (N, C, Hp*Wp)), as a contiguous array."""
    (tb, lb), (ta, la) = before, after
    n, c, h, w = shape
    plane = padded.reshape(n, c, h + tb + ta, w + lb + la)
    return xp.ascontiguousarray(plane[:, :, tb:tb + h, lb:lb + w])


def sampling_bases(xp, out_size, kernel, stride, padding, dilation, dtype):
    """The undeformed sample positions ``(y_base (Ho, kh), x_base (Wo, kw))``:
    ``y_base[ho, i] = ho*sh - ph + i*dh``, in ``dtype``."""
    bases = []
    for out, k, s, p, d in zip(out_size, kernel, stride, padding, dilation):
        base = (xp.arange(out)[:, None] * s - p) + xp.arange(k)[None, :] * d
        bases.append(xp.ascontiguousarray(base.astype(dtype)))
    return tuple(bases)


def window_limit(size, dtype):
    """The smallest ``dtype`` value not below the integer ``size``.

    Kernels test ``position < limit`` on positions of ``dtype``; with this
    limit the test is exactly ``position < size`` even where ``size`` is not
    representable (float32 above 2**24), whereas ``dtype(size)`` may round
    down and shut out the last row.
    """
    limit = dtype.type(size)
    if int(limit) < size:
        limit = np.nextafter(limit, dtype.type(np.inf))
    return limit


def plane_limits(input):
    """(height, width) limits of ``input``'s planes for the sampling-window
    tests, in its own dtype (``window_limit``), and the row stride of its
    padded sampling planes."""
    height, width = input.shape[2:]
    return (window_limit(height, input.dtype), window_limit(width, input.dtype),
            sampling.padded_width(width))


def grid_axis(size, dtype, align_corners):
    """What grid_sample's maths needs of one plane axis, each formed from
    exact integers and rounded once to ``dtype``, as PyTorch forms them:
    ``(size, size - 1, low, span, limit)``. ``low`` and ``span`` are the
    reflection's: about the pixel centres ``0 .. size-1`` with
    ``align_corners``, about the outer edges ``-0.5 .. size-0.5`` without,
    from doubled integer bounds (``twice_low / 2``, ``(twice_high -
    twice_low) / 2``). ``limit`` is the window test's (``window_limit``)."""
    real = dtype.type
    twice_low, twice_high = (0, 2 * (size - 1)) if align_corners else (-1, 2 * size - 1)
    two = real(2)
    return (real(size), real(size - 1), real(twice_low) / two,
            real(twice_high - twice_low) / two, window_limit(size, dtype))


def grid_geometry(input, align_corners):
    """``(y_axis, x_axis, row_stride, one)`` for the grid_sample kernels."""
    height, width = input.shape[2:]
    dtype = input.dtype
    return (grid_axis(height, dtype, align_corners), grid_axis(width, dtype, align_corners),
            sampling.padded_width(width), dtype.type(1))


class DeformSampling(NamedTuple):
    """What every deformable kernel reads besides its planes and columns."""

    height: object
    width: object
    row_stride: int
    offset: object
    mask: object
    use_mask: bool
    y_base: object
    x_base: object


def deform_sampling(xp, input, offset, mask, kernel, stride, padding, dilation, operand):
    """``DeformSampling`` of one call; ``operand`` makes offset and mask
    kernel-ready (the backend's contiguity rule). Without a mask the kernels
    get a dummy one and ``use_mask = False``."""
    height, width, row_stride = plane_limits(input)
    y_base, x_base = sampling_bases(xp, offset.shape[2:], kernel, stride, padding, dilation,
                                    input.dtype)
    if mask is None:
        mask_operand = xp.ones((1, 1, 1, 1), input.dtype)
    else:
        mask_operand = operand(mask)
    return DeformSampling(height, width, row_stride, operand(offset), mask_operand,
                          mask is not None, y_base, x_base)


# --- multi-scale deformable attention ---------------------------------------


def padded_levels(xp, value, shapes):
    """``value`` (N, S, M, D), its levels concatenated row-major, as zero-padded
    planes laid end to end per head, (N, M, Sp, D) with ``Sp = sum (H_l + 3)
    (W_l + 3)`` (the border of ``kernels.sampling``), C-contiguous: a head's
    levels are one block (a kernel walking one head stays in that block), and
    any input layout is converted in the same pass. Also returns each level's
    first padded row."""
    n, _, m, d = value.shape
    sizes = [sampling.padded_height(h) * sampling.padded_width(w) for h, w in shapes]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    out = xp.zeros((n, m, sum(sizes), d), value.dtype)
    first = 0
    for (h, w), start, size in zip(shapes, starts, sizes):
        plane = out[:, :, start:start + size].reshape(
            n, m, sampling.padded_height(h), sampling.padded_width(w), d)
        interior = plane[:, :, sampling.PAD_BEFORE:sampling.PAD_BEFORE + h,
                         sampling.PAD_BEFORE:sampling.PAD_BEFORE + w]
        interior[...] = value[:, first:first + h * w].reshape(n, h, w, m, d).transpose(
            0, 3, 1, 2, 4)
        first += h * w
    return out, starts


def cropped_levels(xp, padded, shapes, starts, out):
    """Write the interiors of ``padded_levels``' planes into ``out`` (N, S, M, D)."""
    n, m, _, d = padded.shape
    first = 0
    for (h, w), start in zip(shapes, starts):
        size = sampling.padded_height(h) * sampling.padded_width(w)
        plane = padded[:, :, start:start + size].reshape(
            n, m, sampling.padded_height(h), sampling.padded_width(w), d)
        interior = plane[:, :, sampling.PAD_BEFORE:sampling.PAD_BEFORE + h,
                         sampling.PAD_BEFORE:sampling.PAD_BEFORE + w]
        out[:, first:first + h * w].reshape(n, h, w, m, d)[...] = interior.transpose(
            0, 2, 3, 1, 4)
        first += h * w


def level_geometry(shapes, starts, dtype):
    """What the attention kernels read of each level, as NumPy arrays:
    ``level_real`` (L, 4) in ``dtype``, (H, W, window limit of H, window limit
    of W), each from exact integers rounded once (``grid_axis``, without
    align_corners: the reference samples with align_corners=False), and
    ``level_index`` (L, 2) int64, (first padded row, row stride)."""
    real = np.empty((len(shapes), 4), dtype)
    index = np.empty((len(shapes), 2), np.int64)
    for lv, ((h, w), start) in enumerate(zip(shapes, starts)):
        y_axis, x_axis = grid_axis(h, dtype, False), grid_axis(w, dtype, False)
        real[lv] = (y_axis[0], x_axis[0], y_axis[4], x_axis[4])
        index[lv] = (start, sampling.padded_width(w))
    return real, index


def zero_padded_volume(xp, array):
    """Contiguous (N, C, (D+3)*(H+3)*(W+3)) copy of ``array`` (N, C, D, H, W)
    with ``sampling.PAD_BEFORE`` zero slices before and ``PAD_AFTER`` after
    along each of D, H and W."""
    n, c, d, h, w = array.shape
    b, a = sampling.PAD_BEFORE, sampling.PAD_AFTER
    out = xp.zeros((n, c, d + b + a, h + b + a, w + b + a), array.dtype)
    out[:, :, b:b + d, b:b + h, b:b + w] = array
    return out.reshape(n, c, -1)


def cropped_volume(xp, padded, shape):
    """The (N, C, D, H, W) interior of a volume padded as ``zero_padded_volume`` pads."""
    n, c, d, h, w = shape
    b, a = sampling.PAD_BEFORE, sampling.PAD_AFTER
    volume = padded.reshape(n, c, d + b + a, h + b + a, w + b + a)
    return xp.ascontiguousarray(volume[:, :, b:b + d, b:b + h, b:b + w])


def volume_geometry(input, align_corners):
    """``(z_axis, y_axis, x_axis, row_stride, plane_stride, one)`` for the 5-D
    grid_sample kernels (axes as ``grid_axis``)."""
    depth, height, width = input.shape[2:]
    dtype = input.dtype
    return (grid_axis(depth, dtype, align_corners), grid_axis(height, dtype, align_corners),
            grid_axis(width, dtype, align_corners), sampling.padded_width(width),
            sampling.padded_height(height) * sampling.padded_width(width), dtype.type(1))

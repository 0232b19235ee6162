"""Layout conversions between (N, C, H, W) and zero-padded channels-last
planes ``(N, Hp * Wp, C)`` (the deformable kernels' border of
``kernels.sampling``, or a dense conv's own padding), and the transposing
store of pixels-first GEMM results.

NumPy's strided transpose-copies move these at 1-2 GB/s; these loops are
several times faster, the channels-last copies moving 8 x 8 blocks through
registers (``simd.transpose8``). They are serial over a range of images and
release the GIL, so the launcher spreads images over its worker lanes (a
parallel Numba region would leave its threads spinning into the conv's
GEMMs).
"""

import numpy as np
from numba import njit, uint64

from .simd import BLOCK, transpose8


@njit(inline="always", cache=True, nogil=True)
def _transposed(src, s0, s_stride, rows, cols, dst, d0, d_stride):
    """``dst[d0 + j * d_stride + i] = src[s0 + i * s_stride + j]`` for ``i <
    rows``, ``j < cols`` (flat arrays): 8 x 8 blocks transposed in registers
    (``simd.transpose8``), the edges that do not fill a block value by value."""
    ss, ds = uint64(s_stride), uint64(d_stride)
    rows_main = rows - rows % BLOCK
    cols_main = cols - cols % BLOCK
    for i0 in range(0, rows_main, BLOCK):
        for j0 in range(0, cols_main, BLOCK):
            transpose8(src, s0 + uint64(i0) * ss + uint64(j0), ss, dst,
                       d0 + uint64(j0) * ds + uint64(i0), ds)
    for i in range(rows):
        first_j = cols_main if i < rows_main else 0
        for j in range(first_j, cols):
            dst[d0 + uint64(j) * ds + uint64(i)] = src[s0 + uint64(i) * ss + uint64(j)]


@njit(cache=True, nogil=True)
def to_channels_last_padded(inp, n0, n1, top, left, row_stride, out):
    """Copy images ``n0:n1`` of ``inp`` (N, C, H, W) into the interior of
    ``out`` (N, Hp*Wp, C), rows ``row_stride`` = Wp pixels apart, pixel (0, 0)
    at row ``top``, column ``left``, and zero their border (``out`` may come
    uninitialised: no separate zeroing pass over the whole buffer).

    8 x 8 blocks transposed in registers: 0.057 ms per (64, 64, 64) float32
    image on one core (cache-warm), against 0.12 ms for 16 x 16 blocks copied
    value by value and 0.61 ms for NumPy's transposed copy."""
    _, channels, height, width = inp.shape
    plane = out.shape[1]
    height_p = plane // row_stride
    for n in range(n0, n1):
        for y in range(height_p):
            if y < top or y >= top + height:
                out[n, y * row_stride:(y + 1) * row_stride] = 0
            else:
                out[n, y * row_stride:y * row_stride + left] = 0
                out[n, y * row_stride + left + width:(y + 1) * row_stride] = 0
    flat_inp = inp.reshape(-1)
    flat_out = out.reshape(-1)
    for item in range(n0 * height, n1 * height):
        n = item // height
        y = item - n * height
        first = n * plane + (y + top) * row_stride + left
        # rows: channels, ``height * width`` apart; columns: the row's pixels
        _transposed(flat_inp, uint64((n * channels * height + y) * width), height * width,
                    channels, width, flat_out, uint64(first * channels), channels)


@njit(cache=True, nogil=True)
def from_channels_last_padded(padded, n0, n1, top, left, row_stride, out):
    """Copy the interior of images ``n0:n1`` of ``padded`` (N, Hp*Wp, C),
    placed as in ``to_channels_last_padded``, into ``out`` (N, C, H, W):
    0.093 ms per (64, 64, 64) float32 image on one core (cache-warm), 0.12
    for 16 x 16 blocks copied value by value."""
    _, channels, height, width = out.shape
    plane = padded.shape[1]
    flat_pad = padded.reshape(-1)
    flat_out = out.reshape(-1)
    for item in range(n0 * height, n1 * height):
        n = item // height
        y = item - n * height
        first = n * plane + (y + top) * row_stride + left
        # rows: the row's pixels, ``channels`` apart; columns: channels
        _transposed(flat_pad, uint64(first * channels), channels, width, channels, flat_out,
                    uint64((n * channels * height + y) * width), height * width)


@njit(cache=True, nogil=True)
def store_transposed(prod, out):
    """``out[b, g*Og + o, r, wo] = prod[b, g, r*Wo + wo, o]``: a pixels-first GEMM
    result (nb, groups, P, Og) written into NCHW rows ``out`` (nb, O, rows, Wo),
    which may be a strided view (a chunk of output rows). One output row of
    every channel at a time, so the block read stays in L1; NumPy's strided
    transpose-copy of the same moved about 1 GB/s."""
    nb, groups, _, og = prod.shape
    rows, out_w = out.shape[2], out.shape[3]
    for b in range(nb):
        for g in range(groups):
            for r in range(rows):
                block = prod[b, g, r * out_w:(r + 1) * out_w]
                for o in range(og):
                    dst = out[b, g * og + o, r]
                    for wo in range(out_w):
                        dst[wo] = block[wo, o]


@njit(cache=True, nogil=True)
def padded_rows(image, y0, left, slab, check):
    """``slab[c, s, left + x] = image[c, y0 + s, x]`` (C, rows, Wp) where image
    row ``y0 + s`` exists, zero elsewhere: a band of an NCHW image with its
    zero padding (rows before the first or past the last, ``left`` columns on
    the left and the rest of each row on the right). With ``check``, returns
    whether every value copied is finite (else True)."""
    channels, height, width = image.shape
    rows = slab.shape[1]
    finite = True
    for c in range(channels):
        for s in range(rows):
            dst = slab[c, s]
            y = y0 + s
            if y < 0 or y >= height:
                dst[:] = 0
                continue
            src = image[c, y]
            dst[:left] = 0
            for x in range(width):
                dst[left + x] = src[x]
            dst[left + width:] = 0
            if check and finite:
                for x in range(width):
                    if not np.isfinite(src[x]):
                        finite = False
                        break
    return finite


@njit(cache=True, nogil=True)
def add_padded_rows(slab, y0, left, image):
    """``image[c, y0 + s, x] += slab[c, s, left + x]`` for the rows of ``image``
    (C, H, W) that exist: the adjoint of ``padded_rows``."""
    channels, height, width = image.shape
    for c in range(channels):
        for s in range(slab.shape[1]):
            y = y0 + s
            if 0 <= y < height:
                src = slab[c, s]
                dst = image[c, y]
                for x in range(width):
                    dst[x] += src[left + x]


@njit(cache=True, nogil=True)
def pixels_first_rows(image, y0, rows, width_p, out):
    """``out[y * width_p + x, c] = image[c, y0 + y, x]`` for ``y < rows``, ``x <
    W``, and zero for ``W <= x < width_p``: rows of an NCHW image (C, H, W),
    C-contiguous, transposed to pixels-first with a row pitch of ``width_p``
    pixels, into ``out`` (at least rows*width_p, C), C-contiguous (8 x 8
    blocks transposed in registers)."""
    channels, height, width = image.shape
    flat_img = image.reshape(-1)
    flat_out = out.reshape(-1)
    for y in range(rows):
        first = y * width_p
        # rows: channels, ``height * width`` apart; columns: the row's pixels
        _transposed(flat_img, uint64((y0 + y) * width), height * width, channels, width,
                    flat_out, uint64(first * channels), channels)
        out[first + width:first + width_p] = 0

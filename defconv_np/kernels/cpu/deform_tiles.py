"""Deformable conv2d forward and backward on CPU in tiles of output rows:
sampling and our own GEMM (``gemm.gemm_taps``) one tile at a time, so that
the columns and their gradient stay in the core's cache between the two.

The column path (``_columns`` with ``deform.deform_im2col`` and
``deform.deform_backward``) fills a chunk's whole column buffer, a few MiB,
before its GEMM reads it back, and the buffer has left L2 by then. Here a
tile is a few output rows (``tile_rows``), a few hundred KiB of columns,
and each kernel runs its tiles in one compiled loop, without a Python call
per tile. At the benchmark shape (N=8, C=O=64, 64x64, 3x3, float32, 2
lanes) a first version took the v2 forward to 12.5-12.7 ms against
14.2-14.5 for the column path on the same GEMM, and the backward to
34.0-34.3 against 38.2-39.2, alternating in one process.

The per-sample maths is ``deform``'s, called on each tile: outputs, input,
offset and mask gradients are bitwise those of the column path on our
GEMM, whose sums run in the same order at any number of rows. The weight
gradient is one GEMM sum over the tiles (``C += A @ B`` per tile), so it
differs from the column path's per-chunk sums in the last bits.

Layouts (``_columns.PixelsFirst``): columns ``(tile pixels, groups*K*Cg)``,
channel fastest; the weight as ``(groups, Og, K*Cg)`` (backward) or
transposed, ``(groups, K*Cg, Og)`` (forward); ``grad_output`` as
``(N, O, Ho*Wo)``, C-contiguous. ``inp`` (and ``grad_inp``) hold images
``n0 .. n0 + nb`` of the padded channels-last layout ``deform`` describes.
"""

import numpy as np
from numba import njit

from .deform import deform_backward, deform_im2col
from .gemm import gemm_taps
from .layout import store_transposed


@njit(inline="always", nogil=True, cache=True)
def _address(array):
    """The array's data address as a signed 64-bit integer, as ``gemm_taps``
    takes addresses (an unsigned one plus a signed offset would be a float)."""
    return np.int64(array.ctypes.data)


@njit(nogil=True, cache=True)
def deform_forward_tiles(like, w_t, inp, height, width, row_stride, offset, mask, use_mask, n0,
                         r0, y_base, x_base, weight_groups, r1, tile_rows, out, cols, prod):
    """``out[n, :, r0:r1]`` of images ``n0 .. n0 + nb``: per tile, its columns
    into ``cols`` (at least ``tile_rows * Wo * groups*K*Cg`` elements), the
    product ``cols @ w_t`` per group into ``prod`` (``tile_rows * Wo * O``)
    and that stored transposed into the NCHW rows. ``like`` is a zero of the
    dtype (our GEMM's type)."""
    nb = inp.shape[0]
    out_w = offset.shape[3]
    groups, kcg, og = w_t.shape
    rows_k = groups * kcg
    size = w_t.itemsize
    no_shift = np.zeros(1, np.int64)
    for b in range(nb):
        n = n0 + b
        for t0 in range(r0, r1, tile_rows):
            t1 = min(r1, t0 + tile_rows)
            npix = (t1 - t0) * out_w
            tile = cols[: npix * rows_k].reshape(1, npix, rows_k)
            deform_im2col(inp[b:b + 1], height, width, row_stride, offset, mask, use_mask, n, t0,
                          y_base, x_base, weight_groups, tile)
            result = prod[: groups * npix * og].reshape(1, groups, npix, og)
            for g in range(groups):
                gemm_taps(like, npix, og, kcg, _address(tile) + g * kcg * size, rows_k, 1, 0,
                          _address(w_t) + g * kcg * og * size, og, no_shift,
                          _address(result) + g * npix * og * size, og, 0)
            store_transposed(result, out[n:n + 1, :, t0:t1, :])


@njit(nogil=True, cache=True)
def deform_backward_tiles(like, go, w, inp, height, width, row_stride, offset, mask, use_mask, n0,
                          r0, y_base, x_base, weight_groups, r1, tile_rows, want_weight,
                          want_input, want_offset, want_mask, grad_inp, grad_offset, grad_mask,
                          grad_w, scratch):
    """Gradients of rows ``r0:r1`` of images ``n0 .. n0 + nb``, tile by tile,
    through one ``scratch`` buffer (at least ``tile_rows * Wo * groups*K*Cg``
    elements):

    * if any of input, offset or mask gradients is wanted, the tile's column
      gradient ``go^T @ w`` per group, turned into them by
      ``deform_backward`` (``grad_inp`` is added to; ``grad_offset`` and
      ``grad_mask`` rows written);
    * then, if ``want_weight``, the tile's columns rebuilt over it and
      ``grad_w += go @ cols`` per group (``grad_w`` as ``w``).

    Both halves of a tile read the same input cells and gradient rows while
    they are in cache (two passes over each image ran 1-10% slower)."""
    nb = inp.shape[0]
    out_w = offset.shape[3]
    plane = go.shape[2]
    groups, og, kcg = w.shape
    rows_k = groups * kcg
    size = w.itemsize
    want_columns = want_input or want_offset or want_mask
    no_shift = np.zeros(1, np.int64)
    for b in range(nb):
        n = n0 + b
        # go[n, g*Og + o, p] for group g at go_n + (g*Og*plane + p) * size
        go_n = _address(go) + n * go.shape[1] * plane * size
        for t0 in range(r0, r1, tile_rows):
            npix = (min(r1, t0 + tile_rows) - t0) * out_w
            tile = scratch[: npix * rows_k].reshape(1, npix, rows_k)
            go_t = go_n + t0 * out_w * size
            if want_columns:
                for g in range(groups):
                    gemm_taps(like, npix, kcg, og, go_t + g * og * plane * size, 1, plane, 0,
                              _address(w) + g * og * kcg * size, kcg, no_shift,
                              _address(tile) + g * kcg * size, rows_k, 0)
                deform_backward(tile, inp[b:b + 1], height, width, row_stride, offset, mask,
                                use_mask, n, t0, y_base, x_base, weight_groups, want_input,
                                want_offset, want_mask, grad_inp[b:b + 1], grad_offset,
                                grad_mask)
            if want_weight:
                deform_im2col(inp[b:b + 1], height, width, row_stride, offset, mask, use_mask, n,
                              t0, y_base, x_base, weight_groups, tile)
                for g in range(groups):
                    gemm_taps(like, og, kcg, npix, go_t + g * og * plane * size, plane, 1, 0,
                              _address(tile) + g * kcg * size, rows_k, no_shift,
                              _address(grad_w) + g * og * kcg * size, kcg, 1)

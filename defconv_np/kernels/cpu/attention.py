"""Multi-scale deformable attention on CPU: sampling and its three adjoints.

Layouts (``_planes.padded_levels``): the value's levels are zero-padded planes
laid end to end, ``value_pad`` (N, M, Sp, D), level ``l`` starting at row
``level_index[l, 0]`` with row stride ``level_index[l, 1]`` (W_l + 3), D
fastest, so a corner read is a contiguous run of D values. ``level_real[l]``
holds (H_l, W_l, window limit of H_l, window limit of W_l) in the value dtype,
each formed from exact integers (``_planes.grid_axis``). Locations are
(N, Lq, M, L, P, 2) with x first, attention weights (N, Lq, M, L, P), the
output and its gradient (N, Lq, M, D).

A location is mapped as PyTorch's reference maps it: the grid value
``2 * loc - 1`` in the value dtype, unnormalised without align_corners, then
PyTorch's bilinear tap (``kernels.sampling``). Samples outside the window are
skipped: they add nothing, and their gradients stay at the zeros the caller
allocated.

Work items are (image, head, block of queries): an item reads (and in the
backward, scatters into) one head's block of the padded levels, ~0.8 MB at
Deformable DETR's encoder shape, which stays in L2. For each query the taps of
its L*P samples are formed first, then the loops over the D channels run on
the samples inside the window.
"""

import numpy as np
from numba import njit

from .device import (
    bilinear_coordinate_grads,
    bilinear_value,
    bilinear_weights,
    grid_bilinear_tap,
    grid_unnormalize,
)


@njit(inline="always", cache=True, nogil=True)
def _level_tap(locations, n, q, m, lv, p, level_real, level_index, one):
    """Padded-plane row of the sample's top-left corner, its fractions, whether
    it is inside the window, and d(pixel)/d(grid) along y and x."""
    two = one + one
    height = level_real[lv, 0]
    width = level_real[lv, 1]
    gx = two * locations[n, q, m, lv, p, 0] - one
    gy = two * locations[n, q, m, lv, p, 1] - one
    x, x_factor = grid_unnormalize(gx, width, width, False, one)
    y, y_factor = grid_unnormalize(gy, height, height, False, one)
    base, ly, lx, inside = grid_bilinear_tap(y, x, level_real[lv, 2], level_real[lv, 3],
                                             level_index[lv, 1], one)
    return level_index[lv, 0] + base, ly, lx, inside, y_factor, x_factor


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
def _corner_dots(g, head, rows, row_strides, count, depth, dots):
    """``dots[t] = (<g, v00>, <g, v01>, <g, v10>, <g, v11>)`` for the corners
    of the ``count`` samples whose top-left rows in ``head`` (Sp, D) are
    ``rows[t]``, in float64, reassociated so that the sums vectorise (a strict
    left-to-right sum is a chain of dependent adds). A function of its own, so
    the reassociation stays in these sums, called once per query."""
    for t in range(count):
        r = rows[t]
        rs = row_strides[t]
        v00 = head[r]
        v01 = head[r + 1]
        v10 = head[r + rs]
        v11 = head[r + rs + 1]
        s00 = 0.0
        s01 = 0.0
        s10 = 0.0
        s11 = 0.0
        for d in range(depth):
            gd = np.float64(g[d])
            s00 += gd * v00[d]
            s01 += gd * v01[d]
            s10 += gd * v10[d]
            s11 += gd * v11[d]
        dots[t, 0] = s00
        dots[t, 1] = s01
        dots[t, 2] = s10
        dots[t, 3] = s11


@njit(inline="always", cache=True, nogil=True)
def _add_scaled(row, weight, g, depth):
    """``row[:depth] += weight * g[:depth]``."""
    for d in range(depth):
        row[d] += weight * g[d]


@njit(cache=True, nogil=True)
def ms_deform_attn(value_pad, level_real, level_index, one, locations, weights, query_blocks,
                   out, item_lo, item_hi):
    """Fill ``out`` (N, Lq, M, D) for work items ``item_lo .. item_hi - 1``;
    work items are (image, head, block of queries), so that an item reads
    one head's block of ``value_pad``."""
    n_batch, n_query, n_heads, n_levels, n_points = weights.shape
    depth = value_pad.shape[3]
    per_block = (n_query + query_blocks - 1) // query_blocks
    for item in range(item_lo, item_hi):
        n = item // (n_heads * query_blocks)
        m = (item // query_blocks) % n_heads
        q_lo = (item % query_blocks) * per_block
        q_hi = min(q_lo + per_block, n_query)
        acc = np.empty(depth, out.dtype)
        # a query's samples inside the window: corner row, row stride, weights
        samples = n_levels * n_points
        rows = np.empty(samples, np.int64)
        row_strides = np.empty(samples, np.int64)
        corner_weights = np.empty((samples, 4), out.dtype)
        scales = np.empty(samples, out.dtype)
        head = value_pad[n, m]
        for q in range(q_lo, q_hi):
            count = 0
            for lv in range(n_levels):
                for p in range(n_points):
                    r, ly, lx, inside, _, _ = _level_tap(locations, n, q, m, lv, p,
                                                         level_real, level_index, one)
                    if inside:
                        rows[count] = r
                        row_strides[count] = level_index[lv, 1]
                        (corner_weights[count, 0], corner_weights[count, 1],
                         corner_weights[count, 2], corner_weights[count, 3]) = \
                            bilinear_weights(ly, lx, one)
                        scales[count] = weights[n, q, m, lv, p]
                        count += 1
            acc[:] = 0
            for t in range(count):
                r = rows[t]
                rs = row_strides[t]
                w00 = corner_weights[t, 0]
                w01 = corner_weights[t, 1]
                w10 = corner_weights[t, 2]
                w11 = corner_weights[t, 3]
                a = scales[t]
                v00 = head[r]
                v01 = head[r + 1]
                v10 = head[r + rs]
                v11 = head[r + rs + 1]
                for d in range(depth):
                    acc[d] += a * (w00 * v00[d] + w01 * v01[d] + w10 * v10[d] + w11 * v11[d])
            dst = out[n, q, m]
            for d in range(depth):
                dst[d] = acc[d]


@njit(cache=True, nogil=True)
def ms_deform_attn_backward(grad_out, value_pad, level_real, level_index, one, locations, weights,
                            want_value, want_locations, want_weights, query_blocks,
                            grad_value_pad, grad_locations, grad_weights, item_lo, item_hi):
    """Value gradient into ``grad_value_pad`` (the layout of ``value_pad``),
    location and weight gradients into (N, Lq, M, L, P, 2) and (N, Lq, M, L, P),
    for work items ``item_lo .. item_hi - 1`` of ``N * M * query_blocks``.

    Work items are (image, head, block of queries). A (n, m) head owns its
    value-gradient slice ``grad_value_pad[n, m]``, so with ``want_value``
    the caller must give one query block: every scatter then has a single
    writer, in query order, and the result is deterministic. The other
    gradients are per sample and written once.
    """
    n_batch, n_query, n_heads, n_levels, n_points = weights.shape
    depth = value_pad.shape[3]
    per_block = (n_query + query_blocks - 1) // query_blocks
    two = one + one
    want_taps = want_locations or want_weights
    samples = n_levels * n_points
    for item in range(item_lo, item_hi):
        n = item // (n_heads * query_blocks)
        m = (item // query_blocks) % n_heads
        q_lo = (item % query_blocks) * per_block
        q_hi = min(q_lo + per_block, n_query)
        # a query's samples inside the window: (level, point), corner row,
        # row stride, fractions, d pixel / d grid
        where = np.empty((samples, 2), np.int64)
        rows = np.empty(samples, np.int64)
        row_strides = np.empty(samples, np.int64)
        fractions = np.empty((samples, 2), value_pad.dtype)
        factors = np.empty((samples, 2), value_pad.dtype)
        dots = np.empty((samples, 4), np.float64)
        head = value_pad[n, m]
        grad_head = grad_value_pad[n, m] if want_value else grad_value_pad[0, 0]
        for q in range(q_lo, q_hi):
            g = grad_out[n, q, m]
            count = 0
            for lv in range(n_levels):
                for p in range(n_points):
                    r, ly, lx, inside, y_factor, x_factor = _level_tap(
                        locations, n, q, m, lv, p, level_real, level_index, one)
                    if inside:
                        where[count, 0] = lv
                        where[count, 1] = p
                        rows[count] = r
                        row_strides[count] = level_index[lv, 1]
                        fractions[count, 0] = ly
                        fractions[count, 1] = lx
                        factors[count, 0] = y_factor
                        factors[count, 1] = x_factor
                        count += 1
            if want_value:
                # the sample's gradient a * g, shared out by the corner weights;
                # one loop per row, as LLVM's overlap checks between several
                # rows of one array would keep one loop scalar
                for t in range(count):
                    r = rows[t]
                    rs = row_strides[t]
                    w00, w01, w10, w11 = bilinear_weights(fractions[t, 0], fractions[t, 1], one)
                    a = weights[n, q, m, where[t, 0], where[t, 1]]
                    _add_scaled(grad_head[r], w00 * a, g, depth)
                    _add_scaled(grad_head[r + 1], w01 * a, g, depth)
                    _add_scaled(grad_head[r + rs], w10 * a, g, depth)
                    _add_scaled(grad_head[r + rs + 1], w11 * a, g, depth)
            if want_taps and count:
                # The sample and its coordinate derivatives are linear in the
                # corner values, so their sums over channels against g are the
                # same functions of the corners' sums <g, v> (taken in float64:
                # no cancellation beyond float64's).
                _corner_dots(g, head, rows, row_strides, count, depth, dots)
                for t in range(count):
                    lv = where[t, 0]
                    p = where[t, 1]
                    ly = fractions[t, 0]
                    lx = fractions[t, 1]
                    s00, s01, s10, s11 = dots[t, 0], dots[t, 1], dots[t, 2], dots[t, 3]
                    if want_weights:
                        grad_weights[n, q, m, lv, p] = bilinear_value(s00, s01, s10, s11, ly,
                                                                      lx, one)
                    if want_locations:
                        acc_y, acc_x = bilinear_coordinate_grads(s00, s01, s10, s11, ly, lx, one)
                        a = weights[n, q, m, lv, p]
                        # d grid / d loc = 2 after d pixel / d grid = W / 2
                        grad_locations[n, q, m, lv, p, 0] = a * acc_x * factors[t, 1] * two
                        grad_locations[n, q, m, lv, p, 1] = a * acc_y * factors[t, 0] * two

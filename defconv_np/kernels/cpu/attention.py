"""Multi-scale deformable attention on CPU: sampling and its three adjoints.

Layouts (``_planes.padded_levels``): the value's levels are zero-padded planes
laid end to end, ``value_pad`` (N, Sp, M, D), level ``l`` starting at row
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
"""

import numpy as np
from numba import njit, prange

from .device import bilinear_coordinate_grads, bilinear_weights, grid_bilinear_tap, grid_unnormalize


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


@njit(parallel=True, cache=True, nogil=True)
def ms_deform_attn(value_pad, level_real, level_index, one, locations, weights, query_blocks,
                   out):
    """Fill ``out`` (N, Lq, M, D); work items are (image, block of queries)."""
    n_batch, n_query, n_heads, n_levels, n_points = weights.shape
    depth = value_pad.shape[3]
    per_block = (n_query + query_blocks - 1) // query_blocks
    for item in prange(n_batch * query_blocks):
        n = item // query_blocks
        q_lo = (item % query_blocks) * per_block
        q_hi = min(q_lo + per_block, n_query)
        acc = np.empty(depth, out.dtype)
        for q in range(q_lo, q_hi):
            for m in range(n_heads):
                acc[:] = 0
                for lv in range(n_levels):
                    rs = level_index[lv, 1]
                    for p in range(n_points):
                        r, ly, lx, inside, _, _ = _level_tap(locations, n, q, m, lv, p,
                                                             level_real, level_index, one)
                        if not inside:
                            continue
                        w00, w01, w10, w11 = bilinear_weights(ly, lx, one)
                        a = weights[n, q, m, lv, p]
                        v00 = value_pad[n, r, m]
                        v01 = value_pad[n, r + 1, m]
                        v10 = value_pad[n, r + rs, m]
                        v11 = value_pad[n, r + rs + 1, m]
                        for d in range(depth):
                            acc[d] += a * (w00 * v00[d] + w01 * v01[d] + w10 * v10[d]
                                           + w11 * v11[d])
                dst = out[n, q, m]
                for d in range(depth):
                    dst[d] = acc[d]


@njit(parallel=True, cache=True, nogil=True)
def ms_deform_attn_backward(grad_out, value_pad, level_real, level_index, one, locations, weights,
                            want_value, want_locations, want_weights, query_blocks,
                            grad_value_pad, grad_locations, grad_weights):
    """Value gradient into ``grad_value_pad`` (the layout of ``value_pad``),
    location and weight gradients into (N, Lq, M, L, P, 2) and (N, Lq, M, L, P).

    Work items are (image, head, block of queries). A (n, m) head owns its
    value-gradient slice ``grad_value_pad[n, :, m]``, so with ``want_value``
    the caller must give one query block: every scatter then has a single
    writer, in query order, and the result is deterministic. The other
    gradients are per sample and written once.
    """
    n_batch, n_query, n_heads, n_levels, n_points = weights.shape
    depth = value_pad.shape[3]
    per_block = (n_query + query_blocks - 1) // query_blocks
    two = one + one
    zero = one - one
    want_taps = want_locations or want_weights
    for item in prange(n_batch * n_heads * query_blocks):
        n = item // (n_heads * query_blocks)
        m = (item // query_blocks) % n_heads
        q_lo = (item % query_blocks) * per_block
        q_hi = min(q_lo + per_block, n_query)
        for q in range(q_lo, q_hi):
            g = grad_out[n, q, m]
            for lv in range(n_levels):
                rs = level_index[lv, 1]
                for p in range(n_points):
                    r, ly, lx, inside, y_factor, x_factor = _level_tap(
                        locations, n, q, m, lv, p, level_real, level_index, one)
                    if not inside:
                        continue
                    w00, w01, w10, w11 = bilinear_weights(ly, lx, one)
                    a = weights[n, q, m, lv, p]
                    if want_value:
                        # the sample's gradient is a * g; its corners get their weights' share
                        g00 = grad_value_pad[n, r, m]
                        g01 = grad_value_pad[n, r + 1, m]
                        g10 = grad_value_pad[n, r + rs, m]
                        g11 = grad_value_pad[n, r + rs + 1, m]
                        for d in range(depth):
                            ga = a * g[d]
                            g00[d] += w00 * ga
                            g01[d] += w01 * ga
                            g10[d] += w10 * ga
                            g11[d] += w11 * ga
                    if want_taps:
                        v00 = value_pad[n, r, m]
                        v01 = value_pad[n, r + 1, m]
                        v10 = value_pad[n, r + rs, m]
                        v11 = value_pad[n, r + rs + 1, m]
                        acc_s = zero
                        acc_y = zero
                        acc_x = zero
                        for d in range(depth):
                            if want_weights:
                                acc_s += g[d] * (w00 * v00[d] + w01 * v01[d] + w10 * v10[d]
                                                 + w11 * v11[d])
                            if want_locations:
                                dy, dx = bilinear_coordinate_grads(v00[d], v01[d], v10[d],
                                                                   v11[d], ly, lx, one)
                                ga = a * g[d]
                                acc_y += ga * dy
                                acc_x += ga * dx
                        if want_weights:
                            grad_weights[n, q, m, lv, p] = acc_s
                        if want_locations:
                            # d grid / d loc = 2 after d pixel / d grid = W / 2
                            grad_locations[n, q, m, lv, p, 0] = acc_x * x_factor * two
                            grad_locations[n, q, m, lv, p, 1] = acc_y * y_factor * two

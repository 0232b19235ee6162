"""Bicubic grid_sample (4-D) on CPU: sampling, its input adjoint and its grid
gradient, as PyTorch computes them.

Planes are read unpadded, flattened to ``(N, C, H * W)``: each of the 4 x 4
taps is folded by the padding mode and bounds-checked on its own
(``kernels.sampling.bounded_index``), so the separable weights of a tap
outside the image are set to 0 and its index to 0 (any in-plane index). The
grid is ``(N, P, 2)``, x first; outputs are ``(N, C, P)``. Work split and
tiles as in ``kernels.cpu.grid_sample``.
"""

import numpy as np
from numba import njit

from ..sampling import PADDING_BORDER, PADDING_REFLECTION
from .device import (
    bounded_index,
    clip_coordinate,
    cubic_coefficient_grads,
    cubic_coefficients,
    cubic_split,
    grid_unnormalize,
    reflect_coordinate,
)


@njit(inline="always", cache=True, nogil=True)
def _folded_index(coord, axis, padding_mode, one):
    """PyTorch's ``compute_coordinates`` then ``within_bounds`` for one tap."""
    size, size_m1, low, span, limit = axis
    if padding_mode == PADDING_BORDER:
        coord, _ = clip_coordinate(coord, size_m1, one)
    elif padding_mode == PADDING_REFLECTION:
        coord, _ = reflect_coordinate(coord, low, span, one)
        coord, _ = clip_coordinate(coord, size_m1, one)
    return bounded_index(coord, size_m1, one)


@njit(inline="always", cache=True, nogil=True)
def _cubic_axis(coord, axis, stride, padding_mode, align_corners, one, t, index, weight, slope):
    """Tap offsets (index times ``stride``), weights and weight derivatives
    (d/d coord, the unnormalisation factor included) along one axis into row
    ``t`` of the tile arrays. A non-finite pixel coordinate gets all-zero
    weights."""
    size, size_m1, low, span, limit = axis
    pixel, factor = grid_unnormalize(coord, size, size_m1, align_corners, one)
    start, frac = cubic_split(pixel, one)
    c = cubic_coefficients(frac, one)
    g = cubic_coefficient_grads(frac, one)
    finite = frac == frac
    # tap coordinates in the grid's float type, as PyTorch forms them
    taps = (start - one, start, start + one, start + one + one)
    for i in range(4):
        idx, ok = _folded_index(taps[i], axis, padding_mode, one)
        ok = ok and finite
        index[t, i] = idx * stride
        weight[t, i] = c[i] if ok else 0.0
        slope[t, i] = g[i] * factor if ok else 0.0


@njit(inline="always", cache=True, nogil=True)
def _tile_taps(grid, n, p0, pn, y_axis, x_axis, width, one, padding_mode, align_corners,
               xi, wx, sx, yi, wy, sy, index, weight):
    """The 16 flat tap indices and weights (wy[j] * wx[i], ``k = 4j + i``) of
    pixels p0 .. p0+pn, and the per-axis weights and slopes."""
    for t in range(pn):
        _cubic_axis(grid[n, p0 + t, 0], x_axis, 1, padding_mode, align_corners, one, t, xi, wx,
                    sx)
        _cubic_axis(grid[n, p0 + t, 1], y_axis, width, padding_mode, align_corners, one, t, yi,
                    wy, sy)
        for j in range(4):
            for i in range(4):
                index[t, 4 * j + i] = yi[t, j] + xi[t, i]
                weight[t, 4 * j + i] = wy[t, j] * wx[t, i]


@njit(cache=True, nogil=True)
def grid_sample_bicubic(inp, y_axis, x_axis, width, one, grid, padding_mode, align_corners,
                        pixel_blocks, tile, out, item_lo, item_hi):
    """Fill ``out`` (N, C, P) with the bicubic samples of every channel, for
    work items ``item_lo .. item_hi - 1`` of ``N * pixel_blocks``."""
    npix = grid.shape[1]
    channels = inp.shape[1]
    per_block = (npix + pixel_blocks - 1) // pixel_blocks
    for item in range(item_lo, item_hi):
        n = item // pixel_blocks
        p_lo = (item % pixel_blocks) * per_block
        p_hi = min(p_lo + per_block, npix)
        xi = np.empty((tile, 4), np.int64)
        yi = np.empty((tile, 4), np.int64)
        wx = np.empty((tile, 4), out.dtype)
        wy = np.empty((tile, 4), out.dtype)
        sx = np.empty((tile, 4), out.dtype)
        sy = np.empty((tile, 4), out.dtype)
        index = np.empty((tile, 16), np.int64)
        weight = np.empty((tile, 16), out.dtype)
        for p0 in range(p_lo, p_hi, tile):
            pn = min(tile, p_hi - p0)
            _tile_taps(grid, n, p0, pn, y_axis, x_axis, width, one, padding_mode, align_corners,
                       xi, wx, sx, yi, wy, sy, index, weight)
            # channels in fours: each tap's index and weight is loaded once for four
            c4 = channels - channels % 4
            for c in range(0, c4, 4):
                plane_a = inp[n, c]
                plane_b = inp[n, c + 1]
                plane_c = inp[n, c + 2]
                plane_d = inp[n, c + 3]
                for t in range(pn):
                    q = index[t, 0]
                    w = weight[t, 0]
                    total_a = w * plane_a[q]
                    total_b = w * plane_b[q]
                    total_c = w * plane_c[q]
                    total_d = w * plane_d[q]
                    for k in range(1, 16):
                        q = index[t, k]
                        w = weight[t, k]
                        total_a += w * plane_a[q]
                        total_b += w * plane_b[q]
                        total_c += w * plane_c[q]
                        total_d += w * plane_d[q]
                    out[n, c, p0 + t] = total_a
                    out[n, c + 1, p0 + t] = total_b
                    out[n, c + 2, p0 + t] = total_c
                    out[n, c + 3, p0 + t] = total_d
            for c in range(c4, channels):
                plane = inp[n, c]
                row = out[n, c]
                for t in range(pn):
                    total = weight[t, 0] * plane[index[t, 0]]
                    for k in range(1, 16):
                        total += weight[t, k] * plane[index[t, k]]
                    row[p0 + t] = total


@njit(cache=True, nogil=True)
def grid_sample_bicubic_backward(grad_out, inp, y_axis, x_axis, width, one, grid, padding_mode,
                                 align_corners, want_input, want_grid, channel_blocks,
                                 pixel_blocks, tile, grad_inp, grid_partials, item_lo, item_hi):
    """Input gradient into ``grad_inp`` (N, C, H*W), scattered to the bounded
    taps (a single pixel block when ``want_input``), and grid gradient shares
    into ``grid_partials`` (N, channel_blocks, P, 2), float64, summed by the
    caller in a fixed order; for work items ``item_lo .. item_hi - 1`` of
    ``N * channel_blocks * pixel_blocks``."""
    npix = grid.shape[1]
    channels = inp.shape[1]
    c_per_block = (channels + channel_blocks - 1) // channel_blocks
    p_per_block = (npix + pixel_blocks - 1) // pixel_blocks
    for item in range(item_lo, item_hi):
        n = item // (channel_blocks * pixel_blocks)
        cb = (item // pixel_blocks) % channel_blocks
        c_lo = cb * c_per_block
        c_hi = min(c_lo + c_per_block, channels)
        p_lo = (item % pixel_blocks) * p_per_block
        p_hi = min(p_lo + p_per_block, npix)
        xi = np.empty((tile, 4), np.int64)
        yi = np.empty((tile, 4), np.int64)
        wx = np.empty((tile, 4), grad_out.dtype)
        wy = np.empty((tile, 4), grad_out.dtype)
        sx = np.empty((tile, 4), grad_out.dtype)
        sy = np.empty((tile, 4), grad_out.dtype)
        index = np.empty((tile, 16), np.int64)
        weight = np.empty((tile, 16), grad_out.dtype)
        slope_x = np.empty((tile, 16), grad_out.dtype)
        slope_y = np.empty((tile, 16), grad_out.dtype)
        acc = np.empty((tile, 2), np.float64)
        for p0 in range(p_lo, p_hi, tile):
            pn = min(tile, p_hi - p0)
            _tile_taps(grid, n, p0, pn, y_axis, x_axis, width, one, padding_mode, align_corners,
                       xi, wx, sx, yi, wy, sy, index, weight)
            if want_grid:
                for t in range(pn):
                    for j in range(4):
                        for i in range(4):
                            slope_x[t, 4 * j + i] = wy[t, j] * sx[t, i]
                            slope_y[t, 4 * j + i] = sy[t, j] * wx[t, i]
            acc[:pn] = 0.0
            for c in range(c_lo, c_hi):
                g_row = grad_out[n, c]
                if want_input:
                    g_plane = grad_inp[n, c]
                    for t in range(pn):
                        g = g_row[p0 + t]
                        for k in range(16):
                            g_plane[index[t, k]] += weight[t, k] * g
                if want_grid:
                    plane = inp[n, c]
                    for t in range(pn):
                        v = plane[index[t, 0]]
                        dx = slope_x[t, 0] * v
                        dy = slope_y[t, 0] * v
                        for k in range(1, 16):
                            v = plane[index[t, k]]
                            dx += slope_x[t, k] * v
                            dy += slope_y[t, k] * v
                        g = g_row[p0 + t]
                        acc[t, 0] += g * dx
                        acc[t, 1] += g * dy
            if want_grid:
                for t in range(pn):
                    grid_partials[n, cb, p0 + t, 0] = acc[t, 0]
                    grid_partials[n, cb, p0 + t, 1] = acc[t, 1]

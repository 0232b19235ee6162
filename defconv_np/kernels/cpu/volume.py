"""5-D grid_sample on CPU: trilinear and nearest sampling of volumes, the
input adjoint and the grid gradient.

Volumes are read from (and input gradients written to) zero-padded copies
``(N, C, (D+3)*(H+3)*(W+3))`` (``_planes.zero_padded_volume``), with
``row_stride = W + 3`` and ``plane_stride = (H + 3) * (W + 3)``. The grid is
flattened to ``(N, P, 3)`` with (x, y, z) last; outputs are ``(N, C, P)``.
The work split and tiles are those of ``kernels.cpu.grid_sample``: the cell,
weights and derivative factors of a tile of pixels are computed once and
reused for every channel; outside samples point at ``base = 0``, a cell of
padding, so the channel loops have no bounds branch.
"""

import numpy as np
from numba import njit

from .device import (
    grid_nearest_tap_3d,
    grid_trilinear_tap,
    trilinear_coordinate_grads,
    trilinear_weights,
)
from .grid_sample import _source_coordinate


@njit(inline="always", cache=True, nogil=True)
def _tile_taps(grid, n, p0, pn, z_axis, y_axis, x_axis, row_stride, plane_stride, one, nearest,
               padding_mode, align_corners, base, frac, inside, factor):
    """Cell (or nearest voxel), fractions (z, y, x) and derivative factors
    (x, y, z) of pixels p0 .. p0+pn."""
    for t in range(pn):
        x, factor[t, 0] = _source_coordinate(grid[n, p0 + t, 0], x_axis, padding_mode,
                                             align_corners, one)
        y, factor[t, 1] = _source_coordinate(grid[n, p0 + t, 1], y_axis, padding_mode,
                                             align_corners, one)
        z, factor[t, 2] = _source_coordinate(grid[n, p0 + t, 2], z_axis, padding_mode,
                                             align_corners, one)
        if nearest:
            base[t], inside[t] = grid_nearest_tap_3d(z, y, x, z_axis[4], y_axis[4], x_axis[4],
                                                     row_stride, plane_stride, one)
            frac[t, 0] = 0.0
            frac[t, 1] = 0.0
            frac[t, 2] = 0.0
        else:
            base[t], frac[t, 0], frac[t, 1], frac[t, 2], inside[t] = grid_trilinear_tap(
                z, y, x, z_axis[4], y_axis[4], x_axis[4], row_stride, plane_stride, one)


@njit(inline="always", cache=True, nogil=True)
def _corner_offsets(row_stride, plane_stride):
    offsets = np.empty(8, np.int64)
    for k in range(8):
        offsets[k] = (k >> 2) * plane_stride + ((k >> 1) & 1) * row_stride + (k & 1)
    return offsets


@njit(cache=True, nogil=True)
def grid_sample_3d(inp_pad, z_axis, y_axis, x_axis, row_stride, plane_stride, one, grid, nearest,
                   padding_mode, align_corners, pixel_blocks, tile, out, item_lo, item_hi):
    """Fill ``out`` (N, C, P) with the samples of every channel at the grid,
    for work items ``item_lo .. item_hi - 1`` of ``N * pixel_blocks``."""
    npix = grid.shape[1]
    channels = inp_pad.shape[1]
    per_block = (npix + pixel_blocks - 1) // pixel_blocks
    offsets = _corner_offsets(row_stride, plane_stride)
    for item in range(item_lo, item_hi):
        n = item // pixel_blocks
        p_lo = (item % pixel_blocks) * per_block
        p_hi = min(p_lo + per_block, npix)
        base = np.empty(tile, np.int64)
        frac = np.empty((tile, 3), np.float64)
        inside = np.empty(tile, np.bool_)
        factor = np.empty((tile, 3), np.float64)
        w = np.empty((tile, 8), out.dtype)
        for p0 in range(p_lo, p_hi, tile):
            pn = min(tile, p_hi - p0)
            _tile_taps(grid, n, p0, pn, z_axis, y_axis, x_axis, row_stride, plane_stride, one,
                       nearest, padding_mode, align_corners, base, frac, inside, factor)
            if nearest:
                for c in range(channels):
                    volume = inp_pad[n, c]
                    row = out[n, c]
                    for t in range(pn):
                        row[p0 + t] = volume[base[t]]
            else:
                for t in range(pn):
                    (w[t, 0], w[t, 1], w[t, 2], w[t, 3], w[t, 4], w[t, 5], w[t, 6],
                     w[t, 7]) = trilinear_weights(frac[t, 0], frac[t, 1], frac[t, 2], 1.0)
                for c in range(channels):
                    volume = inp_pad[n, c]
                    row = out[n, c]
                    for t in range(pn):
                        q = base[t]
                        acc = w[t, 0] * volume[q]
                        for k in range(1, 8):
                            acc += w[t, k] * volume[q + offsets[k]]
                        row[p0 + t] = acc


@njit(cache=True, nogil=True)
def grid_sample_3d_backward(grad_out, inp_pad, z_axis, y_axis, x_axis, row_stride, plane_stride,
                            one, grid, nearest, padding_mode, align_corners, want_input,
                            want_grid, channel_blocks, pixel_blocks, tile, grad_pad,
                            grid_partials, item_lo, item_hi):
    """Input gradient into ``grad_pad`` (N, C, padded volume) and grid
    gradient shares into ``grid_partials`` (N, channel_blocks, P, 3), float64,
    for work items ``item_lo .. item_hi - 1`` of ``N * channel_blocks *
    pixel_blocks``,
    as ``kernels.cpu.grid_sample.grid_sample_backward`` does for planes (a
    single pixel block when ``want_input``; the caller sums the channel
    blocks in a fixed order)."""
    npix = grid.shape[1]
    channels = inp_pad.shape[1]
    c_per_block = (channels + channel_blocks - 1) // channel_blocks
    p_per_block = (npix + pixel_blocks - 1) // pixel_blocks
    offsets = _corner_offsets(row_stride, plane_stride)
    grid_terms = want_grid and not nearest
    for item in range(item_lo, item_hi):
        n = item // (channel_blocks * pixel_blocks)
        cb = (item // pixel_blocks) % channel_blocks
        c_lo = cb * c_per_block
        c_hi = min(c_lo + c_per_block, channels)
        p_lo = (item % pixel_blocks) * p_per_block
        p_hi = min(p_lo + p_per_block, npix)
        base = np.empty(tile, np.int64)
        frac = np.empty((tile, 3), np.float64)
        inside = np.empty(tile, np.bool_)
        factor = np.empty((tile, 3), np.float64)
        w = np.empty((tile, 8), grad_out.dtype)
        acc = np.empty((tile, 3), np.float64)
        for p0 in range(p_lo, p_hi, tile):
            pn = min(tile, p_hi - p0)
            _tile_taps(grid, n, p0, pn, z_axis, y_axis, x_axis, row_stride, plane_stride, one,
                       nearest, padding_mode, align_corners, base, frac, inside, factor)
            for t in range(pn):
                (w[t, 0], w[t, 1], w[t, 2], w[t, 3], w[t, 4], w[t, 5], w[t, 6],
                 w[t, 7]) = trilinear_weights(frac[t, 0], frac[t, 1], frac[t, 2], 1.0)
            acc[:pn] = 0.0
            for c in range(c_lo, c_hi):
                g_row = grad_out[n, c]
                if want_input:
                    # outside samples land on padding, which the caller crops
                    g_volume = grad_pad[n, c]
                    if nearest:
                        for t in range(pn):
                            g_volume[base[t]] += g_row[p0 + t]
                    else:
                        for t in range(pn):
                            g = g_row[p0 + t]
                            q = base[t]
                            for k in range(8):
                                g_volume[q + offsets[k]] += w[t, k] * g
                if grid_terms:
                    volume = inp_pad[n, c]
                    for t in range(pn):
                        q = base[t]
                        dz, dy, dx = trilinear_coordinate_grads(
                            volume[q], volume[q + offsets[1]], volume[q + offsets[2]],
                            volume[q + offsets[3]], volume[q + offsets[4]],
                            volume[q + offsets[5]], volume[q + offsets[6]],
                            volume[q + offsets[7]], frac[t, 0], frac[t, 1], frac[t, 2], 1.0)
                        g = g_row[p0 + t]
                        acc[t, 0] += g * dx
                        acc[t, 1] += g * dy
                        acc[t, 2] += g * dz
            if grid_terms:
                for t in range(pn):
                    for k in range(3):
                        grid_partials[n, cb, p0 + t, k] = acc[t, k] * factor[t, k] if inside[t] \
                            else 0.0

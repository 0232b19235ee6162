"""Bicubic grid_sample (4-D) on CUDA: sampling, its input adjoint and its grid
gradient, as PyTorch computes them.

Same layouts as ``kernels.cpu.bicubic``: unpadded planes ``(N, C, H * W)``,
the grid ``(N, P, 2)`` (x first), outputs ``(N, C, P)``. One thread handles
one output pixel and loops over the channels; the 4 x 4 taps are unrolled
(tuples indexed by constants stay in registers).
"""

from numba import cuda

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


@cuda.jit(device=True, inline="always")
def _folded_tap(coord, weight, slope, axis, padding_mode, stride, usable, one):
    """(offset, weight, slope) of one tap: PyTorch's ``compute_coordinates``
    then ``within_bounds``; a tap outside gets offset 0 and zero weights."""
    size, size_m1, low, span, limit = axis
    if padding_mode == PADDING_BORDER:
        coord, _ = clip_coordinate(coord, size_m1, one)
    elif padding_mode == PADDING_REFLECTION:
        coord, _ = reflect_coordinate(coord, low, span, one)
        coord, _ = clip_coordinate(coord, size_m1, one)
    index, ok = bounded_index(coord, size_m1, one)
    zero = one - one
    if ok and usable:
        return index * stride, weight, slope
    return index * stride, zero, zero


@cuda.jit(device=True, inline="always")
def _cubic_axis(coord, axis, stride, padding_mode, align_corners, one):
    """Tap offsets, weights and weight slopes (d/d coord) along one axis."""
    size, size_m1, low, span, limit = axis
    pixel, factor = grid_unnormalize(coord, size, size_m1, align_corners, one)
    start, frac = cubic_split(pixel, one)
    c0, c1, c2, c3 = cubic_coefficients(frac, one)
    g0, g1, g2, g3 = cubic_coefficient_grads(frac, one)
    usable = frac == frac  # a non-finite pixel coordinate: all weights 0
    i0, w0, s0 = _folded_tap(start - one, c0, g0 * factor, axis, padding_mode, stride, usable, one)
    i1, w1, s1 = _folded_tap(start, c1, g1 * factor, axis, padding_mode, stride, usable, one)
    i2, w2, s2 = _folded_tap(start + one, c2, g2 * factor, axis, padding_mode, stride, usable,
                             one)
    i3, w3, s3 = _folded_tap(start + one + one, c3, g3 * factor, axis, padding_mode, stride,
                             usable, one)
    return (i0, i1, i2, i3), (w0, w1, w2, w3), (s0, s1, s2, s3)


@cuda.jit(device=True, inline="always")
def _row(inp, n, c, r, xi, wx):
    return (wx[0] * inp[n, c, r + xi[0]] + wx[1] * inp[n, c, r + xi[1]]
            + wx[2] * inp[n, c, r + xi[2]] + wx[3] * inp[n, c, r + xi[3]])


@cuda.jit
def grid_sample_bicubic(inp, y_axis, x_axis, width, one, grid, padding_mode, align_corners, total,
                        out):
    npix = grid.shape[1]
    channels = inp.shape[1]
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        p = idx % npix
        n = idx // npix
        xi, wx, sx = _cubic_axis(grid[n, p, 0], x_axis, 1, padding_mode, align_corners, one)
        yi, wy, sy = _cubic_axis(grid[n, p, 1], y_axis, width, padding_mode, align_corners, one)
        for c in range(channels):
            out[n, c, p] = (wy[0] * _row(inp, n, c, yi[0], xi, wx)
                            + wy[1] * _row(inp, n, c, yi[1], xi, wx)
                            + wy[2] * _row(inp, n, c, yi[2], xi, wx)
                            + wy[3] * _row(inp, n, c, yi[3], xi, wx))


@cuda.jit(device=True, inline="always")
def _scatter_row(grad, n, c, r, xi, wx, g):
    cuda.atomic.add(grad, (n, c, r + xi[0]), wx[0] * g)
    cuda.atomic.add(grad, (n, c, r + xi[1]), wx[1] * g)
    cuda.atomic.add(grad, (n, c, r + xi[2]), wx[2] * g)
    cuda.atomic.add(grad, (n, c, r + xi[3]), wx[3] * g)


@cuda.jit
def grid_sample_bicubic_backward(grad_out, inp, y_axis, x_axis, width, one, grid, padding_mode,
                                 align_corners, want_input, want_grid, total, grad_inp,
                                 grad_grid):
    """Grid gradient (written per pixel) and, if ``want_input``, the input
    gradient by atomic scatter-add onto the bounded taps."""
    npix = grid.shape[1]
    channels = inp.shape[1]
    zero = one - one
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        p = idx % npix
        n = idx // npix
        xi, wx, sx = _cubic_axis(grid[n, p, 0], x_axis, 1, padding_mode, align_corners, one)
        yi, wy, sy = _cubic_axis(grid[n, p, 1], y_axis, width, padding_mode, align_corners, one)
        acc_x = zero
        acc_y = zero
        for c in range(channels):
            g = grad_out[n, c, p]
            if want_input:
                _scatter_row(grad_inp, n, c, yi[0], xi, wx, wy[0] * g)
                _scatter_row(grad_inp, n, c, yi[1], xi, wx, wy[1] * g)
                _scatter_row(grad_inp, n, c, yi[2], xi, wx, wy[2] * g)
                _scatter_row(grad_inp, n, c, yi[3], xi, wx, wy[3] * g)
            if want_grid:
                r0 = _row(inp, n, c, yi[0], xi, wx)
                r1 = _row(inp, n, c, yi[1], xi, wx)
                r2 = _row(inp, n, c, yi[2], xi, wx)
                r3 = _row(inp, n, c, yi[3], xi, wx)
                d0 = _row(inp, n, c, yi[0], xi, sx)
                d1 = _row(inp, n, c, yi[1], xi, sx)
                d2 = _row(inp, n, c, yi[2], xi, sx)
                d3 = _row(inp, n, c, yi[3], xi, sx)
                acc_x += g * (wy[0] * d0 + wy[1] * d1 + wy[2] * d2 + wy[3] * d3)
                acc_y += g * (sy[0] * r0 + sy[1] * r1 + sy[2] * r2 + sy[3] * r3)
        if want_grid:
            grad_grid[n, p, 0] = acc_x
            grad_grid[n, p, 1] = acc_y


@cuda.jit(device=True, inline="always")
def _add_row(grad, n, c, r, xi, wx, g):
    grad[n, c, r + xi[0]] += wx[0] * g
    grad[n, c, r + xi[1]] += wx[1] * g
    grad[n, c, r + xi[2]] += wx[2] * g
    grad[n, c, r + xi[3]] += wx[3] * g


@cuda.jit
def grid_sample_bicubic_input_grad_ordered(grad_out, inp, y_axis, x_axis, width, one, grid,
                                           padding_mode, align_corners, total, grad_inp):
    """Deterministic input gradient: one thread owns one (image, channel)
    plane and adds the pixels' contributions in pixel order."""
    npix = grid.shape[1]
    channels = inp.shape[1]
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        c = idx % channels
        n = idx // channels
        for p in range(npix):
            xi, wx, sx = _cubic_axis(grid[n, p, 0], x_axis, 1, padding_mode, align_corners, one)
            yi, wy, sy = _cubic_axis(grid[n, p, 1], y_axis, width, padding_mode, align_corners,
                                     one)
            g = grad_out[n, c, p]
            _add_row(grad_inp, n, c, yi[0], xi, wx, wy[0] * g)
            _add_row(grad_inp, n, c, yi[1], xi, wx, wy[1] * g)
            _add_row(grad_inp, n, c, yi[2], xi, wx, wy[2] * g)
            _add_row(grad_inp, n, c, yi[3], xi, wx, wy[3] * g)

"""grid_sample on CUDA: sampling, its input adjoint and its grid gradient.

Same layouts as ``kernels.cpu.grid_sample``: padded planes ``(N, C, (H+3)*(W+3))``,
the grid flattened to ``(N, P, 2)`` (x first), outputs ``(N, C, P)``. One thread
handles one output pixel of one image and loops over the channels, as PyTorch's
kernel does, so the coordinate maths runs once per pixel; the pixel index is
fastest, so output and output-gradient accesses are coalesced.
"""

from numba import cuda

from ..sampling import PADDING_BORDER, PADDING_REFLECTION
from .device import (
    bilinear_coordinate_grads,
    bilinear_weights,
    clip_coordinate,
    grid_bilinear_tap,
    grid_nearest_tap,
    grid_unnormalize,
    reflect_coordinate,
)


@cuda.jit(device=True, inline="always")
def _source_coordinate(coord, axis, padding_mode, align_corners, one):
    """Pixel coordinate of a grid coordinate after the padding mode folded it
    into the image, and d(pixel) / d(coord) (PyTorch's chain of factors).
    ``axis`` is ``_planes.grid_axis``: (size, size - 1, low, span, limit),
    each rounded once from exact integers."""
    size, size_m1, low, span, limit = axis
    pixel, factor = grid_unnormalize(coord, size, size_m1, align_corners, one)
    if padding_mode == PADDING_BORDER:
        pixel, clip_factor = clip_coordinate(pixel, size_m1, one)
        factor *= clip_factor
    elif padding_mode == PADDING_REFLECTION:
        pixel, reflect_factor = reflect_coordinate(pixel, low, span, one)
        pixel, clip_factor = clip_coordinate(pixel, size_m1, one)
        factor *= reflect_factor * clip_factor
    return pixel, factor


@cuda.jit(device=True, inline="always")
def _tap(grid, n, p, y_axis, x_axis, row_stride, one, nearest, padding_mode, align_corners):
    """Cell (or nearest pixel), fractions and derivative factors of one sample."""
    x, x_factor = _source_coordinate(grid[n, p, 0], x_axis, padding_mode, align_corners, one)
    y, y_factor = _source_coordinate(grid[n, p, 1], y_axis, padding_mode, align_corners, one)
    zero = one - one
    if nearest:
        q, inside = grid_nearest_tap(y, x, y_axis[4], x_axis[4], row_stride, one)
        return q, zero, zero, inside, y_factor, x_factor
    q, ly, lx, inside = grid_bilinear_tap(y, x, y_axis[4], x_axis[4], row_stride, one)
    return q, ly, lx, inside, y_factor, x_factor


@cuda.jit
def grid_sample(inp_pad, y_axis, x_axis, row_stride, one, grid, nearest, padding_mode,
                align_corners, total, out):
    npix = grid.shape[1]
    channels = inp_pad.shape[1]
    rs = row_stride
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        p = idx % npix
        n = idx // npix
        q, ly, lx, inside, y_factor, x_factor = _tap(grid, n, p, y_axis, x_axis, rs, one,
                                                     nearest, padding_mode, align_corners)
        if nearest:
            for c in range(channels):
                out[n, c, p] = inp_pad[n, c, q]
        else:
            w00, w01, w10, w11 = bilinear_weights(ly, lx, one)
            for c in range(channels):
                out[n, c, p] = (w00 * inp_pad[n, c, q] + w01 * inp_pad[n, c, q + 1]
                                + w10 * inp_pad[n, c, q + rs] + w11 * inp_pad[n, c, q + rs + 1])


@cuda.jit
def grid_sample_backward(grad_out, inp_pad, y_axis, x_axis, row_stride, one, grid, nearest,
                         padding_mode, align_corners, want_input, want_grid, total, grad_pad,
                         grad_grid):
    """Grid gradient (written per pixel) and, if ``want_input``, the input
    gradient by atomic scatter-add (summation order depends on scheduling)."""
    npix = grid.shape[1]
    channels = inp_pad.shape[1]
    rs = row_stride
    zero = one - one
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        p = idx % npix
        n = idx // npix
        q, ly, lx, inside, y_factor, x_factor = _tap(grid, n, p, y_axis, x_axis, rs, one,
                                                     nearest, padding_mode, align_corners)
        w00, w01, w10, w11 = bilinear_weights(ly, lx, one)
        acc_y = zero
        acc_x = zero
        for c in range(channels):
            g = grad_out[n, c, p]
            if want_input:
                # outside samples land on padding, which the caller crops
                if nearest:
                    cuda.atomic.add(grad_pad, (n, c, q), g)
                else:
                    cuda.atomic.add(grad_pad, (n, c, q), w00 * g)
                    cuda.atomic.add(grad_pad, (n, c, q + 1), w01 * g)
                    cuda.atomic.add(grad_pad, (n, c, q + rs), w10 * g)
                    cuda.atomic.add(grad_pad, (n, c, q + rs + 1), w11 * g)
            if want_grid and not nearest and inside:
                dy, dx = bilinear_coordinate_grads(
                    inp_pad[n, c, q], inp_pad[n, c, q + 1], inp_pad[n, c, q + rs],
                    inp_pad[n, c, q + rs + 1], ly, lx, one)
                acc_y += g * dy
                acc_x += g * dx
        if want_grid:
            grad_grid[n, p, 0] = acc_x * x_factor if inside else zero
            grad_grid[n, p, 1] = acc_y * y_factor if inside else zero


@cuda.jit
def grid_sample_input_grad_ordered(grad_out, inp_pad, y_axis, x_axis, row_stride, one, grid,
                                   nearest, padding_mode, align_corners, total, grad_pad):
    """Deterministic input gradient: one thread owns one (image, channel) plane
    and adds the pixels' contributions in pixel order."""
    npix = grid.shape[1]
    channels = inp_pad.shape[1]
    rs = row_stride
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        c = idx % channels
        n = idx // channels
        for p in range(npix):
            q, ly, lx, inside, y_factor, x_factor = _tap(grid, n, p, y_axis, x_axis, rs, one,
                                                         nearest, padding_mode, align_corners)
            g = grad_out[n, c, p]
            if nearest:
                grad_pad[n, c, q] += g
            else:
                w00, w01, w10, w11 = bilinear_weights(ly, lx, one)
                grad_pad[n, c, q] += w00 * g
                grad_pad[n, c, q + 1] += w01 * g
                grad_pad[n, c, q + rs] += w10 * g
                grad_pad[n, c, q + rs + 1] += w11 * g

"""5-D grid_sample on CUDA: trilinear and nearest sampling of volumes, the
input adjoint and the grid gradient.

Same layouts as ``kernels.cpu.volume``: padded volumes
``(N, C, (D+3)*(H+3)*(W+3))``, the grid flattened to ``(N, P, 3)`` (x, y, z),
outputs ``(N, C, P)``. One thread handles one output pixel of one image and
loops over the channels (as PyTorch's kernel does), so the coordinate maths
runs once per pixel.
"""

from numba import cuda

from .device import (
    grid_nearest_tap_3d,
    grid_trilinear_tap,
    trilinear_coordinate_grads,
    trilinear_weights,
)
from .grid_sample import _source_coordinate


@cuda.jit(device=True, inline="always")
def _tap(grid, n, p, z_axis, y_axis, x_axis, rs, ps, one, nearest, padding_mode, align_corners):
    """Cell (or nearest voxel), fractions and derivative factors of one sample."""
    x, x_factor = _source_coordinate(grid[n, p, 0], x_axis, padding_mode, align_corners, one)
    y, y_factor = _source_coordinate(grid[n, p, 1], y_axis, padding_mode, align_corners, one)
    z, z_factor = _source_coordinate(grid[n, p, 2], z_axis, padding_mode, align_corners, one)
    zero = one - one
    if nearest:
        q, inside = grid_nearest_tap_3d(z, y, x, z_axis[4], y_axis[4], x_axis[4], rs, ps, one)
        return q, zero, zero, zero, inside, z_factor, y_factor, x_factor
    q, lz, ly, lx, inside = grid_trilinear_tap(z, y, x, z_axis[4], y_axis[4], x_axis[4], rs, ps,
                                               one)
    return q, lz, ly, lx, inside, z_factor, y_factor, x_factor


@cuda.jit
def grid_sample_3d(inp_pad, z_axis, y_axis, x_axis, row_stride, plane_stride, one, grid, nearest,
                   padding_mode, align_corners, total, out):
    npix = grid.shape[1]
    channels = inp_pad.shape[1]
    rs = row_stride
    ps = plane_stride
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        p = idx % npix
        n = idx // npix
        q, lz, ly, lx, inside, fz, fy, fx = _tap(grid, n, p, z_axis, y_axis, x_axis, rs, ps, one,
                                                 nearest, padding_mode, align_corners)
        if nearest:
            for c in range(channels):
                out[n, c, p] = inp_pad[n, c, q]
        else:
            w0, w1, w2, w3, w4, w5, w6, w7 = trilinear_weights(lz, ly, lx, one)
            for c in range(channels):
                out[n, c, p] = (w0 * inp_pad[n, c, q] + w1 * inp_pad[n, c, q + 1]
                                + w2 * inp_pad[n, c, q + rs] + w3 * inp_pad[n, c, q + rs + 1]
                                + w4 * inp_pad[n, c, q + ps] + w5 * inp_pad[n, c, q + ps + 1]
                                + w6 * inp_pad[n, c, q + ps + rs]
                                + w7 * inp_pad[n, c, q + ps + rs + 1])


@cuda.jit(device=True, inline="always")
def _scatter(grad_pad, n, c, q, rs, ps, g, w0, w1, w2, w3, w4, w5, w6, w7):
    cuda.atomic.add(grad_pad, (n, c, q), w0 * g)
    cuda.atomic.add(grad_pad, (n, c, q + 1), w1 * g)
    cuda.atomic.add(grad_pad, (n, c, q + rs), w2 * g)
    cuda.atomic.add(grad_pad, (n, c, q + rs + 1), w3 * g)
    cuda.atomic.add(grad_pad, (n, c, q + ps), w4 * g)
    cuda.atomic.add(grad_pad, (n, c, q + ps + 1), w5 * g)
    cuda.atomic.add(grad_pad, (n, c, q + ps + rs), w6 * g)
    cuda.atomic.add(grad_pad, (n, c, q + ps + rs + 1), w7 * g)


@cuda.jit
def grid_sample_3d_backward(grad_out, inp_pad, z_axis, y_axis, x_axis, row_stride, plane_stride,
                            one, grid, nearest, padding_mode, align_corners, want_input,
                            want_grid, total, grad_pad, grad_grid):
    """Grid gradient (written per pixel) and, if ``want_input``, the input
    gradient by atomic scatter-add (summation order depends on scheduling)."""
    npix = grid.shape[1]
    channels = inp_pad.shape[1]
    rs = row_stride
    ps = plane_stride
    zero = one - one
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        p = idx % npix
        n = idx // npix
        q, lz, ly, lx, inside, fz, fy, fx = _tap(grid, n, p, z_axis, y_axis, x_axis, rs, ps, one,
                                                 nearest, padding_mode, align_corners)
        w0, w1, w2, w3, w4, w5, w6, w7 = trilinear_weights(lz, ly, lx, one)
        acc_z = zero
        acc_y = zero
        acc_x = zero
        for c in range(channels):
            g = grad_out[n, c, p]
            if want_input:
                # outside samples land on padding, which the caller crops
                if nearest:
                    cuda.atomic.add(grad_pad, (n, c, q), g)
                else:
                    _scatter(grad_pad, n, c, q, rs, ps, g, w0, w1, w2, w3, w4, w5, w6, w7)
            if want_grid and not nearest and inside:
                dz, dy, dx = trilinear_coordinate_grads(
                    inp_pad[n, c, q], inp_pad[n, c, q + 1], inp_pad[n, c, q + rs],
                    inp_pad[n, c, q + rs + 1], inp_pad[n, c, q + ps], inp_pad[n, c, q + ps + 1],
                    inp_pad[n, c, q + ps + rs], inp_pad[n, c, q + ps + rs + 1], lz, ly, lx, one)
                acc_z += g * dz
                acc_y += g * dy
                acc_x += g * dx
        if want_grid:
            grad_grid[n, p, 0] = acc_x * fx if inside else zero
            grad_grid[n, p, 1] = acc_y * fy if inside else zero
            grad_grid[n, p, 2] = acc_z * fz if inside else zero


@cuda.jit
def grid_sample_3d_input_grad_ordered(grad_out, inp_pad, z_axis, y_axis, x_axis, row_stride,
                                      plane_stride, one, grid, nearest, padding_mode,
                                      align_corners, total, grad_pad):
    """Deterministic input gradient: one thread owns one (image, channel)
    volume and adds the pixels' contributions in pixel order."""
    npix = grid.shape[1]
    channels = inp_pad.shape[1]
    rs = row_stride
    ps = plane_stride
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        c = idx % channels
        n = idx // channels
        for p in range(npix):
            q, lz, ly, lx, inside, fz, fy, fx = _tap(grid, n, p, z_axis, y_axis, x_axis, rs, ps,
                                                     one, nearest, padding_mode, align_corners)
            g = grad_out[n, c, p]
            if nearest:
                grad_pad[n, c, q] += g
            else:
                w0, w1, w2, w3, w4, w5, w6, w7 = trilinear_weights(lz, ly, lx, one)
                grad_pad[n, c, q] += w0 * g
                grad_pad[n, c, q + 1] += w1 * g
                grad_pad[n, c, q + rs] += w2 * g
                grad_pad[n, c, q + rs + 1] += w3 * g
                grad_pad[n, c, q + ps] += w4 * g
                grad_pad[n, c, q + ps + 1] += w5 * g
                grad_pad[n, c, q + ps + rs] += w6 * g
                grad_pad[n, c, q + ps + rs + 1] += w7 * g

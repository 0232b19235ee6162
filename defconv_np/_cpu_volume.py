"""CPU launchers of 5-D grid_sample (``kernels.cpu.volume``) and bicubic
grid_sample (``kernels.cpu.bicubic``); the same interface as ``_cpu.GridSampler``,
their serial kernels' work items shared over the lanes (``_cpu.run_items``)."""

import numpy as np

from . import config
from ._cpu import kernel_operand, run_items, work_blocks
from ._planes import cropped_volume, grid_geometry, volume_geometry, zero_padded_volume
from .kernels.cpu import bicubic as bicubic_kernels
from .kernels.cpu import volume as volume_kernels


def _backward_split(n, c, npix, want_input):
    """(channel blocks, pixel blocks): a work item owns whole gradient planes
    when the input gradient is wanted, so then split channels, not pixels."""
    if want_input:
        return work_blocks(n, c), 1
    return 1, work_blocks(n, npix)


class VolumeSampler:
    """5-D grid_sample and its adjoints (input, grid) for one (input, grid) pair."""

    def __init__(self, input, grid, nearest, padding_mode, align_corners, deterministic=False):
        # the CPU kernels own whole gradient volumes: always deterministic
        n, c = input.shape[:2]
        self.input_shape = input.shape
        self.inp_pad = zero_padded_volume(np, input)
        self.grid = kernel_operand(grid).reshape(n, -1, 3)
        self.geometry = volume_geometry(input, align_corners)
        self.modes = (nearest, padding_mode, align_corners)

    def sample(self, out):
        """Write the samples into ``out`` (N, C, Dg, Hg, Wg), C-contiguous."""
        n, npix = self.grid.shape[:2]
        blocks = work_blocks(n, npix)
        out3 = out.reshape(n, out.shape[1], -1)
        run_items(n * blocks, lambda lo, hi: volume_kernels.grid_sample_3d(
            self.inp_pad, *self.geometry, self.grid, *self.modes, blocks,
            config.cpu_tile_pixels, out3, lo, hi))

    def backward(self, grad_output, grad_input, grad_grid):
        n, c = self.input_shape[:2]
        npix = self.grid.shape[1]
        want_input, want_grid = grad_input is not None, grad_grid is not None
        blocks_c, blocks_p = _backward_split(n, c, npix, want_input)
        grad_pad = (np.zeros_like(self.inp_pad) if want_input
                    else np.zeros((1, 1, 1), self.inp_pad.dtype))
        partials = np.zeros((n, blocks_c, npix, 3) if want_grid else (1, 1, 1, 3), np.float64)
        go = kernel_operand(grad_output).reshape(n, c, npix)
        run_items(n * blocks_c * blocks_p, lambda lo, hi: volume_kernels.grid_sample_3d_backward(
            go, self.inp_pad, *self.geometry, self.grid, *self.modes, want_input, want_grid,
            blocks_c, blocks_p, config.cpu_tile_pixels, grad_pad, partials, lo, hi))
        if want_input:
            grad_input[...] = cropped_volume(np, grad_pad, self.input_shape)
        if want_grid:
            grad_grid[...] = partials.sum(axis=1).reshape(grad_grid.shape)


class BicubicSampler:
    """Bicubic 4-D grid_sample and its adjoints (input, grid)."""

    def __init__(self, input, grid, padding_mode, align_corners, deterministic=False):
        n, c, _, width = input.shape
        self.input_shape = input.shape
        self.inp = kernel_operand(input).reshape(n, c, -1)
        self.grid = kernel_operand(grid).reshape(n, -1, 2)
        y_axis, x_axis, _, one = grid_geometry(input, align_corners)
        self.geometry = (y_axis, x_axis, width, one)
        self.modes = (padding_mode, align_corners)

    def sample(self, out):
        n, npix = self.grid.shape[:2]
        blocks = work_blocks(n, npix)
        out3 = out.reshape(n, out.shape[1], -1)
        run_items(n * blocks, lambda lo, hi: bicubic_kernels.grid_sample_bicubic(
            self.inp, *self.geometry, self.grid, *self.modes, blocks, config.cpu_tile_pixels,
            out3, lo, hi))

    def backward(self, grad_output, grad_input, grad_grid):
        n, c = self.input_shape[:2]
        npix = self.grid.shape[1]
        want_input, want_grid = grad_input is not None, grad_grid is not None
        blocks_c, blocks_p = _backward_split(n, c, npix, want_input)
        grad_inp = np.zeros_like(self.inp) if want_input else np.zeros((1, 1, 1), self.inp.dtype)
        partials = np.zeros((n, blocks_c, npix, 2) if want_grid else (1, 1, 1, 2), np.float64)
        go = kernel_operand(grad_output).reshape(n, c, npix)
        kernel = bicubic_kernels.grid_sample_bicubic_backward
        run_items(n * blocks_c * blocks_p, lambda lo, hi: kernel(
            go, self.inp, *self.geometry, self.grid, *self.modes, want_input, want_grid,
            blocks_c, blocks_p, config.cpu_tile_pixels, grad_inp, partials, lo, hi))
        if want_input:
            grad_input[...] = grad_inp.reshape(self.input_shape)
        if want_grid:
            grad_grid[...] = partials.sum(axis=1).reshape(grad_grid.shape)

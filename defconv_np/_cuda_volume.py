"""CUDA launchers of 5-D grid_sample (``kernels.cuda.volume``) and bicubic
grid_sample (``kernels.cuda.bicubic``); the interface of ``_cuda.GridSampler``."""

import numpy as np

from ._cuda import _Launch
from ._planes import cropped_volume, grid_geometry, volume_geometry, zero_padded_volume
from .kernels.cuda import bicubic as bicubic_kernels
from .kernels.cuda import volume as volume_kernels


class _Sampler:
    """What the two samplers share: the launch, the grid, and the backward's
    choice between the atomic kernel and the ordered input-gradient kernel."""

    dims = None
    sample_kernel = backward_kernel = ordered_kernel = None

    def __init__(self, input, grid, deterministic):
        self.launch = _Launch(input)
        self.xp = self.launch.xp
        self.input_shape = input.shape
        self.grid = self.launch.operand(grid).reshape(input.shape[0], -1, self.dims)
        self.deterministic = deterministic

    def sample(self, out):
        """Write the samples into ``out`` (N, C, ...grid), C-contiguous."""
        n, npix = self.grid.shape[:2]
        total = np.int64(n) * npix
        self.launch(self.sample_kernel, total, self.planes, *self.arguments, total,
                    out.reshape(n, out.shape[1], -1))

    def backward(self, grad_output, grad_input, grad_grid):
        xp = self.xp
        n, c = self.input_shape[:2]
        npix = self.grid.shape[1]
        grad_out = self.launch.operand(grad_output).reshape(n, c, npix)
        want_input, want_grid = grad_input is not None, grad_grid is not None
        grad_planes = (xp.zeros_like(self.planes) if want_input
                       else xp.zeros((1, 1, 1), grad_out.dtype))
        grid_out = (xp.empty((n, npix, self.dims), grad_out.dtype) if want_grid
                    else xp.zeros((1, 1, self.dims), grad_out.dtype))
        ordered = want_input and self.deterministic
        if want_grid or (want_input and not ordered):
            total = np.int64(n) * npix
            self.launch(self.backward_kernel, total, grad_out, self.planes, *self.arguments,
                        want_input and not ordered, want_grid, total, grad_planes, grid_out)
        if ordered:
            total = np.int64(n) * c
            self.launch(self.ordered_kernel, total, grad_out, self.planes, *self.arguments,
                        total, grad_planes)
        if want_input:
            grad_input[...] = self.cropped(grad_planes)
        if want_grid:
            grad_grid[...] = grid_out.reshape(grad_grid.shape)


class VolumeSampler(_Sampler):
    """5-D grid_sample and its adjoints (input, grid) for one (input, grid) pair."""

    dims = 3
    sample_kernel = volume_kernels.grid_sample_3d
    backward_kernel = volume_kernels.grid_sample_3d_backward
    ordered_kernel = volume_kernels.grid_sample_3d_input_grad_ordered

    def __init__(self, input, grid, nearest, padding_mode, align_corners, deterministic=False):
        super().__init__(input, grid, deterministic)
        self.planes = zero_padded_volume(self.xp, input)
        self.arguments = (*volume_geometry(input, align_corners), self.grid, nearest,
                          padding_mode, align_corners)

    def cropped(self, grad_planes):
        return cropped_volume(self.xp, grad_planes, self.input_shape)


class BicubicSampler(_Sampler):
    """Bicubic 4-D grid_sample and its adjoints (input, grid)."""

    dims = 2
    sample_kernel = bicubic_kernels.grid_sample_bicubic
    backward_kernel = bicubic_kernels.grid_sample_bicubic_backward
    ordered_kernel = bicubic_kernels.grid_sample_bicubic_input_grad_ordered

    def __init__(self, input, grid, padding_mode, align_corners, deterministic=False):
        super().__init__(input, grid, deterministic)
        n, c, _, width = input.shape
        self.planes = self.launch.operand(input).reshape(n, c, -1)
        y_axis, x_axis, _, one = grid_geometry(input, align_corners)
        self.arguments = (y_axis, x_axis, width, one, self.grid, padding_mode, align_corners)

    def cropped(self, grad_planes):
        return grad_planes.reshape(self.input_shape)

"""CUDA launchers: the same interface as ``_cpu`` (``DenseColumns``,
``DeformColumns``), launching ``kernels.cuda`` on CuPy's current stream and on
the device that holds the arrays.

The array module is normally CuPy. Under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) the tests route NumPy arrays here instead (see
``_backends``): the kernels then run on the CPU, unchanged, and GEMMs use NumPy.
"""

import contextlib

import numpy as np

if not hasattr(np, "row_stack"):
    # numba-cuda (0.30.4 and earlier) registers an overload of np.row_stack
    # while loading its typing, at the first kernel compile; NumPy 2.5 removed
    # that alias of np.vstack, and every compile then fails with
    # "module 'numpy' has no attribute 'row_stack'" (seen on an H200 image
    # with NumPy 2.5.2). Restoring the alias is the smallest fix.
    np.row_stack = np.vstack

from numba import cuda  # noqa: E402

from . import _columns, config
from ._arrays import array_module
from ._cpu import kernel_operand
from ._planes import SAMPLING_PAD, cropped, deform_sampling, grid_geometry, zero_padded
from .kernels.cuda import deform as deform_kernels
from .kernels.cuda import grid_sample as grid_sample_kernels
from .kernels.cuda import im2col as im2col_kernels


def launch_shape(total):
    """(blocks, threads) for ``total`` work items, as Python ints: numba-cuda
    hands them to ``cuda.core.LaunchConfig``, which rejects NumPy integers."""
    threads = int(config.cuda_threads_per_block)
    blocks = max(1, min(int(config.cuda_max_blocks), -(-int(total) // threads)))
    return blocks, threads


#: Numba stream objects by (device, CuPy stream pointer): numba-cuda caches
#: launch configurations per stream object, so one object per stream is reused.
_streams = {}


def _numba_stream(xp, device_id):
    ptr = xp.cuda.get_current_stream().ptr
    key = (device_id, ptr)
    if key not in _streams:
        with cuda.gpus[device_id]:
            _streams[key] = cuda.external_stream(ptr)
    return _streams[key]


class _Launch:
    """Stream, device and launch shape for the arrays of one op.

    The public ops run with the arrays' device current (``_arrays.on_arrays_device``),
    so CuPy's current stream and allocations are that device's.
    """

    def __init__(self, like):
        self.xp = array_module(like=like)
        if self.xp is np:
            self.stream = 0
            self.device = contextlib.nullcontext()
        else:
            self.device = cuda.gpus[like.device.id]
            self.stream = _numba_stream(self.xp, like.device.id)

    def __call__(self, kernel, total, *args):
        """Launch ``kernel`` over ``total`` work items; ``args`` must hold
        ``total`` where the kernel's signature wants it."""
        if total <= 0:
            return
        blocks, threads = launch_shape(total)
        with self.device:
            kernel[blocks, threads, self.stream](*(self._device(a) for a in args))

    def _device(self, arg):
        if self.xp is not np and hasattr(arg, "__cuda_array_interface__"):
            # launched on the arrays' own stream: no host synchronisation needed
            return cuda.as_cuda_array(arg, sync=False)
        return arg

    def operand(self, array):
        """``array`` as a kernel reads it: C-contiguous (and, for the
        simulator's NumPy arrays, writeable: it copies every argument back)."""
        if self.xp is np:
            return kernel_operand(array)
        return self.xp.ascontiguousarray(array)


def column_budget(buffers=1):
    """Bytes of column scratch a conv may hold on the GPU, however many
    column-sized buffers (``buffers``) it holds."""
    return config.cuda_column_budget_bytes


def column_lanes():
    """One stream, one lane: chunks run in order and queue on the stream."""
    return 1




class DenseColumns(_columns.SeparateBackward):
    """im2col / col2im of a plain strided, dilated, padded conv2d."""

    layout = _columns.ChannelsFirst
    run_chunks = staticmethod(_columns.run_in_order)

    def __init__(self, input, kernel, stride, padding, dilation, out_w, weight_groups):
        # ``weight_groups``: part of the launcher interface; channels-first
        # columns need not know them
        self.launch = _Launch(input)
        self.xp = self.launch.xp
        self.padding = padding
        self.shape_args = (*kernel, *stride, *dilation)
        self.out_w = out_w
        self.input_shape = input.shape
        self.inp_pad = zero_padded(self.xp, input, padding, padding)

    def fill(self, chunk, cols):
        total = np.int64(cols.size)
        self.launch(im2col_kernels.im2col, total, self.inp_pad, chunk.n0, chunk.r0, self.out_w,
                    *self.shape_args, total, cols)

    def start_backward(self, want_input):
        self.grad_pad = self.xp.zeros_like(self.inp_pad) if want_input else None

    def scatter_input_grad(self, chunk, grad_cols):
        total = np.int64(chunk.n1 - chunk.n0) * int(np.prod(self.grad_pad.shape[1:]))
        self.launch(im2col_kernels.col2im, total, grad_cols, chunk.n0, chunk.r0, chunk.r1,
                    self.out_w, *self.shape_args, total, self.grad_pad)

    def input_grad(self):
        return cropped(self.xp, self.grad_pad, self.input_shape, self.padding, self.padding)


class DeformColumns:
    """Deformable im2col and its adjoints (input, offset, mask)."""

    layout = _columns.ChannelsFirst
    run_chunks = staticmethod(_columns.run_in_order)

    def __init__(self, input, offset, mask, kernel, stride, padding, dilation, weight_groups,
                 deterministic=False):
        self.launch = _Launch(input)
        xp = self.xp = self.launch.xp
        n, c = input.shape[:2]
        self.input_shape = input.shape
        self.inp_pad = zero_padded(xp, input, *SAMPLING_PAD).reshape(n, c, -1)
        self.sampling = deform_sampling(xp, input, offset, mask, kernel, stride, padding,
                                        dilation, self.launch.operand)
        self.one = input.dtype.type(1)
        self.n_k = kernel[0] * kernel[1]
        self.deterministic = deterministic

    def _samples(self, cols):
        """Samples in a chunk: images x (groups x kernel points) x chunk pixels."""
        return np.int64(cols.shape[0]) * (self.sampling.offset.shape[1] // 2) * cols.shape[2]

    def _blocked(self, cols, block):
        """(block, total) for kernels that give each sample's channels of its
        offset group to threads ``block`` channels at a time."""
        groups = self.sampling.offset.shape[1] // (2 * self.n_k)
        per_group = self.inp_pad.shape[1] // groups
        block = per_group if block is None else max(1, min(int(block), per_group))
        return np.int64(block), self._samples(cols) * (-(-per_group // block))

    def _common(self, chunk):
        s = self.sampling
        return (s.height, s.width, s.row_stride, s.offset, s.mask, s.use_mask, chunk.n0, chunk.r0,
                s.y_base, s.x_base, self.one)

    def fill(self, chunk, cols):
        block, total = self._blocked(cols, config.cuda_channels_per_thread)
        self.launch(deform_kernels.deform_im2col, total, self.inp_pad, *self._common(chunk),
                    block, total, cols)

    def start_backward(self, want_input, grad_offset, grad_mask):
        """Where the backward writes: the input gradient (an own buffer, if
        ``want_input``) and the given offset and mask gradients (or None)."""
        self.grad_pad = self.xp.zeros_like(self.inp_pad) if want_input else None
        self.grad_offset, self.grad_mask = grad_offset, grad_mask

    def backward_chunk(self, chunk, cols, grad_cols):
        """Rebuild the chunk's columns into ``cols`` (if given) and turn
        ``grad_cols`` (if given) into input, offset and mask gradients."""
        if cols is not None:
            self.fill(chunk, cols)
        if grad_cols is None:
            return
        if self.grad_pad is not None:
            self.scatter_input_grad(chunk, grad_cols)
        if self.grad_offset is not None or self.grad_mask is not None:
            self.coordinate_grads(chunk, grad_cols, self.grad_offset, self.grad_mask)

    def scatter_input_grad(self, chunk, grad_cols):
        if self.deterministic:
            total = np.int64(grad_cols.shape[0]) * self.inp_pad.shape[1]
            self.launch(deform_kernels.deform_col2im_ordered, total, grad_cols,
                        *self._common(chunk), total, self.grad_pad)
        else:
            block, total = self._blocked(grad_cols, config.cuda_channels_per_thread)
            self.launch(deform_kernels.deform_col2im_atomic, total, grad_cols,
                        *self._common(chunk), block, total, self.grad_pad)

    def input_grad(self):
        return cropped(self.xp, self.grad_pad, self.input_shape, *SAMPLING_PAD)

    def coordinate_grads(self, chunk, grad_cols, grad_offset, grad_mask):
        """Offset and/or mask gradient for the chunk (either target may be None)."""
        dummy = self.xp.zeros((1, 1, 1, 1), grad_cols.dtype)
        # deterministic: one block per group, so each sum is formed by one
        # thread in a fixed order and written, never added atomically
        per_thread = self.inp_pad.shape[1] if self.deterministic else config.cuda_channels_per_thread
        block, total = self._blocked(grad_cols, per_thread)
        self.launch(deform_kernels.deform_coordinate_grads, total, grad_cols, self.inp_pad,
                    *self._common(chunk), block, total, grad_offset is not None,
                    grad_mask is not None,
                    dummy if grad_offset is None else grad_offset,
                    dummy if grad_mask is None else grad_mask)


class GridSampler:
    """grid_sample and its adjoints (input, grid) for one (input, grid) pair."""

    def __init__(self, input, grid, nearest, padding_mode, align_corners, deterministic=False):
        self.launch = _Launch(input)
        xp = self.xp = self.launch.xp
        n, c = input.shape[:2]
        self.input_shape = input.shape
        self.inp_pad = zero_padded(xp, input, *SAMPLING_PAD).reshape(n, c, -1)
        self.grid = self.launch.operand(grid).reshape(n, -1, 2)
        # sample positions are formed in the input dtype, as PyTorch forms them
        self.geometry = grid_geometry(input, align_corners)
        self.modes = (nearest, padding_mode, align_corners)
        self.deterministic = deterministic

    def sample(self, out):
        """Write the samples into ``out`` (N, C, Hg, Wg), C-contiguous."""
        n, npix = self.grid.shape[:2]
        total = np.int64(n) * npix
        self.launch(grid_sample_kernels.grid_sample, total, self.inp_pad, *self.geometry,
                    self.grid, *self.modes, total, out.reshape(n, out.shape[1], -1))

    def backward(self, grad_output, grad_input, grad_grid):
        """Write the input and/or grid gradients into the arrays given (either may be None)."""
        xp = self.xp
        n, c, h, w = self.input_shape
        npix = self.grid.shape[1]
        grad_out = self.launch.operand(grad_output).reshape(n, c, npix)
        want_input, want_grid = grad_input is not None, grad_grid is not None
        grad_pad = xp.zeros_like(self.inp_pad) if want_input else xp.zeros((1, 1, 1), grad_out.dtype)
        grid_out = (xp.empty((n, npix, 2), grad_out.dtype) if want_grid
                    else xp.zeros((1, 1, 2), grad_out.dtype))
        ordered = want_input and self.deterministic
        if want_grid or (want_input and not ordered):
            total = np.int64(n) * npix
            self.launch(grid_sample_kernels.grid_sample_backward, total, grad_out, self.inp_pad,
                        *self.geometry, self.grid, *self.modes, want_input and not ordered,
                        want_grid, total, grad_pad, grid_out)
        if ordered:
            total = np.int64(n) * c
            self.launch(grid_sample_kernels.grid_sample_input_grad_ordered, total, grad_out,
                        self.inp_pad, *self.geometry, self.grid, *self.modes, total, grad_pad)
        if want_input:
            grad_input[...] = cropped(xp, grad_pad, self.input_shape, *SAMPLING_PAD)
        if want_grid:
            grad_grid[...] = grid_out.reshape(grad_grid.shape)


from ._cuda_active import ActiveColumns  # noqa: E402,F401  (imports this module's _Launch)
from ._cuda_volume import BicubicSampler, VolumeSampler  # noqa: E402,F401  (imports this module)

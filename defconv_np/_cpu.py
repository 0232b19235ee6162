"""CPU launchers: lay out the padded planes, pick the parallel work split, and
call the Numba kernels in ``kernels.cpu`` for one chunk at a time.

Numba's default ``workqueue`` threading layer aborts the process when two
Python threads enter parallel regions at once, so every parallel kernel call
takes ``_launch_lock``. The kernels already use every core, so serialising them
costs nothing; the GEMMs between them still run concurrently.
"""

import threading

import numba
import numpy as np

from . import config
from .kernels import sampling
from .kernels.cpu import deform as deform_kernels
from .kernels.cpu import im2col as im2col_kernels

_launch_lock = threading.Lock()


def zero_padded(array, pad_before, pad_after):
    """Contiguous copy of ``array`` (N, C, H, W) with zero borders; converts any
    layout (Fortran, negative strides, read-only) in the same pass."""
    (tb, lb), (ta, la) = pad_before, pad_after
    n, c, h, w = array.shape
    out = np.zeros((n, c, h + tb + ta, w + lb + la), array.dtype)
    out[:, :, tb:tb + h, lb:lb + w] = array
    return out


def channel_blocks(work_items, channels_per_group):
    """Split each group's channels so that every thread gets several items."""
    target = numba.get_num_threads() * config.cpu_items_per_thread
    return max(1, min(channels_per_group, -(-target // max(1, work_items))))


class DenseColumns:
    """im2col / col2im of a plain strided, dilated, padded conv2d."""

    def __init__(self, input, kernel, stride, padding, dilation, out_w):
        self.padding = padding
        self.geometry = (kernel, stride, dilation)
        self.out_w = out_w
        self.input_shape = input.shape
        self.inp_pad = zero_padded(input, padding, padding)

    def fill(self, chunk, cols):
        with _launch_lock:
            im2col_kernels.im2col(self.inp_pad, chunk.n0, chunk.r0, self.out_w, *self.geometry, cols)

    def new_input_grad(self):
        self.grad_pad = np.zeros_like(self.inp_pad)

    def scatter_input_grad(self, chunk, grad_cols):
        with _launch_lock:
            im2col_kernels.col2im(grad_cols, chunk.n0, chunk.r0, self.out_w, *self.geometry,
                                  self.grad_pad)

    def input_grad(self):
        ph, pw = self.padding
        h, w = self.input_shape[2:]
        return np.ascontiguousarray(self.grad_pad[:, :, ph:ph + h, pw:pw + w])


class DeformColumns:
    """Deformable im2col and its adjoints (input, offset, mask)."""

    def __init__(self, input, offset, mask, kernel, stride, padding, dilation):
        n, c, h, w = input.shape
        self.height, self.width = h, w
        self.input_shape = input.shape
        before, after = sampling.PAD_BEFORE, sampling.PAD_AFTER
        self.inp_pad = zero_padded(input, (before, before), (after, after)).reshape(n, c, -1)
        self.offset = np.ascontiguousarray(offset)
        self.use_mask = mask is not None
        self.mask = (np.ascontiguousarray(mask) if mask is not None
                     else np.ones((1, 1, 1, 1), input.dtype))
        self.geometry = (kernel, stride, padding, dilation)
        self.groups = offset.shape[1] // (2 * kernel[0] * kernel[1])
        self.per_group = c // self.groups

    def _blocks(self, chunk):
        return channel_blocks((chunk.n1 - chunk.n0) * self.groups, self.per_group)

    def fill(self, chunk, cols):
        with _launch_lock:
            deform_kernels.deform_im2col(
                self.inp_pad, self.height, self.width, self.offset, self.mask, self.use_mask,
                chunk.n0, chunk.r0, *self.geometry, self._blocks(chunk), config.cpu_tile_pixels,
                cols)

    def new_input_grad(self):
        self.grad_pad = np.zeros_like(self.inp_pad)

    def scatter_input_grad(self, chunk, grad_cols):
        with _launch_lock:
            deform_kernels.deform_col2im(
                grad_cols, self.height, self.width, self.offset, self.mask, self.use_mask,
                chunk.n0, chunk.r0, *self.geometry, self._blocks(chunk), config.cpu_tile_pixels,
                self.grad_pad)

    def input_grad(self):
        n, c, h, w = self.input_shape
        before = sampling.PAD_BEFORE
        plane = self.grad_pad.reshape(n, c, h + 3, w + 3)
        return np.ascontiguousarray(plane[:, :, before:before + h, before:before + w])

    def coordinate_grads(self, chunk, grad_cols, grad_offset, grad_mask):
        """Offset and/or mask gradient for the chunk (either target may be None)."""
        dummy = np.zeros((1, 1, 1, 1), grad_cols.dtype)
        with _launch_lock:
            deform_kernels.deform_coordinate_grads(
                grad_cols, self.inp_pad, self.height, self.width, self.offset, self.mask,
                self.use_mask, chunk.n0, chunk.r0, *self.geometry, config.cpu_tile_pixels,
                grad_offset is not None, grad_mask is not None,
                dummy if grad_offset is None else grad_offset,
                dummy if grad_mask is None else grad_mask)

"""CUDA launcher of active convolution's four-tap columns (``kernels.cuda.active``)."""

import numpy as np

from . import _columns
from ._cuda import _Launch
from ._planes import cropped, zero_padded
from .kernels.cuda import active as active_kernels

#: Partial sums per (image, column row) of the offset gradient: one warp's
#: worth, so a warp reads 32 neighbouring columns (coalesced) and the partials
#: stay small (nb * C*K * 32 * 2 values: 19 MB for 16 images, C=256, 3x3),
#: with over a million threads at that shape.
OFFSET_LANES = 32


class ActiveColumns:
    """Four-tap im2col of one ``_stencil.ActiveStencil`` and its adjoints
    (input, offset), channels-first like the dense conv."""

    layout = _columns.ChannelsFirst
    run_chunks = staticmethod(_columns.run_in_order)

    def __init__(self, input, stencil, n_k, stride, out_w):
        self.launch = _Launch(input)
        xp = self.xp = self.launch.xp
        self.input_shape = input.shape
        self.pad = (stencil.before, stencil.after)
        self.inp_pad = zero_padded(xp, input, *self.pad)
        self.points = stencil.present.shape[0]
        groups = self.points // n_k
        self.out_w = out_w
        self.shape_args = (n_k, *stride)
        self.stencil_args = (xp.asarray(stencil.taps), xp.asarray(stencil.fracs),
                             xp.asarray(stencil.present), input.shape[1] // groups,
                             input.dtype.type(1))

    def fill(self, chunk, cols):
        total = np.int64(cols.size)
        self.launch(active_kernels.active_im2col, total, self.inp_pad, chunk.n0, chunk.r0,
                    self.out_w, *self.shape_args, *self.stencil_args, total, cols)

    def start_backward(self, want_input, want_offset):
        xp = self.xp
        self.grad_pad = xp.zeros_like(self.inp_pad) if want_input else None
        self.offset_sum = xp.zeros((self.points, 2), np.float64) if want_offset else None

    def backward_chunk(self, chunk, cols, grad_cols):
        """Rebuild the chunk's columns into ``cols`` (if given) and turn
        ``grad_cols`` (if given) into input and offset gradients."""
        if cols is not None:
            self.fill(chunk, cols)
        if grad_cols is None:
            return
        if self.grad_pad is not None:
            total = np.int64(chunk.n1 - chunk.n0) * int(np.prod(self.grad_pad.shape[1:]))
            self.launch(active_kernels.active_col2im, total, grad_cols, chunk.n0, chunk.r0,
                        chunk.r1, self.out_w, *self.shape_args, *self.stencil_args, total,
                        self.grad_pad)
        if self.offset_sum is not None:
            self.add_offset_grad(chunk, grad_cols)

    def add_offset_grad(self, chunk, grad_cols):
        """Add the chunk's offset gradient, from per-thread partial sums."""
        nb, rows_k, npix = grad_cols.shape
        lanes = min(OFFSET_LANES, npix)
        partials = self.xp.empty((nb, rows_k, lanes, 2), grad_cols.dtype)
        total = np.int64(partials.size // 2)
        self.launch(active_kernels.active_offset_partials, total, grad_cols, self.inp_pad,
                    chunk.n0, chunk.r0, self.out_w, *self.shape_args, *self.stencil_args,
                    total, partials)
        n_k = self.shape_args[0]
        per_point = partials.reshape(nb, self.points // n_k, -1, n_k, lanes, 2)
        self.offset_sum += per_point.sum(axis=(0, 2, 4), dtype=np.float64).reshape(-1, 2)

    def input_grad(self):
        return cropped(self.xp, self.grad_pad, self.input_shape, *self.pad)

    def offset_grad(self):
        return self.offset_sum.reshape(-1).astype(self.inp_pad.dtype)

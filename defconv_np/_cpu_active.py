"""CPU launcher of active convolution's four-tap columns (``kernels.cpu.active``)."""

import numpy as np

from . import _columns, _cpu_blas
from ._cpu import run_chunks
from ._planes import cropped, zero_padded
from .kernels.cpu import active as active_kernels


class ActiveColumns:
    """Four-tap im2col of one ``_stencil.ActiveStencil`` and its adjoints
    (input, offset), channels-first like the dense conv."""

    layout = _columns.ChannelsFirst
    run_chunks = staticmethod(run_chunks)
    matmul_for = staticmethod(_cpu_blas.lane_matmul)

    def __init__(self, input, stencil, n_k, stride, out_w):
        self.input_shape = input.shape
        self.pad = (stencil.before, stencil.after)
        self.inp_pad = zero_padded(np, input, *self.pad)
        groups = stencil.present.shape[0] // n_k
        # column stride None for 1: the kernels then compile with contiguous slices
        col_step = None if stride[1] == 1 else stride[1]
        self.common = (out_w, n_k, stride[0], col_step, stencil.taps, stencil.fracs,
                       stencil.present, input.shape[1] // groups, input.dtype.type(1))

    def fill(self, chunk, cols):
        active_kernels.active_im2col(self.inp_pad, chunk.n0, chunk.r0, *self.common, cols)

    def start_backward(self, want_input, want_offset):
        self.grad_pad = np.zeros_like(self.inp_pad) if want_input else None
        self.want_offset = want_offset
        self.offset_sums = {}

    def backward_chunk(self, chunk, cols, grad_cols):
        """Rebuild the columns into ``cols`` (if given) and turn ``grad_cols``
        (if given) into input and offset gradients, in one pass."""
        want_grads = grad_cols is not None
        want_offset = want_grads and self.want_offset
        sums = np.zeros((self.common[5].shape[0], 2), np.float64) if want_offset else None
        active_kernels.active_backward(
            grad_cols, self.inp_pad, chunk.n0, chunk.r0, *self.common, cols,
            self.grad_pad if want_grads else None, sums)
        if want_offset:
            self.offset_sums[(chunk.n0, chunk.r0)] = sums

    def input_grad(self):
        return cropped(np, self.grad_pad, self.input_shape, *self.pad)

    def offset_grad(self):
        """(G*K*2,) offset gradient: the chunks' float64 sums added in chunk
        order (independent of which worker ran which chunk)."""
        total = np.zeros((self.common[5].shape[0], 2), np.float64)
        for key in sorted(self.offset_sums):
            total += self.offset_sums[key]
        return total.reshape(-1).astype(self.inp_pad.dtype)

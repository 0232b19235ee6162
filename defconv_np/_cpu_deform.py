"""CPU launcher of deform_conv2d's fused tiles (``kernels/cpu/deform_tiles.py``):
sampling and our own GEMM one tile of output rows at a time, on the lanes.

``_cpu.DeformColumns.fused_tiles`` hands ``_columns.forward`` and
``_columns.backward`` a ``DeformTiles`` where our GEMM may run the lanes'
products (``_cpu_blas.fuses``) and the call uses the lanes; otherwise
the column path runs. The chunks are those of the column path: images are
copied channels-last per run (``_cpu.LaneImages``), row chunks of one image
stay on one lane; each lane's scratch is one tile's columns
(``config.cpu_deform_tile_bytes``), not a chunk's, with the forward's
product of a tile (``tile_rows * Wo * O``) and the backward's partial weight
gradient.
"""

import numpy as np

from . import _columns, config
from .kernels.cpu import deform_tiles as kernels


def tile_rows(out_w, rows_k, itemsize):
    """Output rows per tile: a tile's columns within
    ``config.cpu_deform_tile_bytes``, at least one row."""
    per_row = max(1, out_w * rows_k * itemsize)
    return max(1, config.cpu_deform_tile_bytes // per_row)


class DeformTiles:
    """Forward and backward of one deform_conv2d call as fused tiles, over the
    images, offsets and masks of ``columns`` (a ``_cpu.DeformColumns``)."""

    layout = _columns.PixelsFirst

    def __init__(self, columns, dtype):
        self.columns = columns
        self.like = np.zeros(1, dtype)[0]

    def forward(self, out, weight, groups, chunks):
        """``out`` (N, O, Ho, Wo), C-contiguous, = the deformable conv."""
        columns, lanes = self.columns, self.columns.lanes
        w_t = self.layout.forward_weight(
            np.ascontiguousarray(self.layout.weight_matrix(weight, groups)))
        rows_k = groups * w_t.shape[1]
        out_w = out.shape[3]
        rows = tile_rows(out_w, rows_k, out.itemsize)

        def new_state():
            return (np.empty(rows * out_w * rows_k, out.dtype),
                    np.empty(rows * out_w * out.shape[1], out.dtype))

        def work(chunk, state):
            cols, prod = state
            kernels.deform_forward_tiles(self.like, w_t, lanes.images(), *columns.common(chunk),
                                         chunk.r1, rows, out, cols, prod)

        columns.run_chunks(chunks, work, new_state)

    def backward(self, grad_output, weight, groups, chunks, want_weight, want_columns):
        """The weight gradient (or None unless ``want_weight``), and, if
        ``want_columns``, the input, offset and mask gradients where
        ``columns.start_backward`` asked for them."""
        columns, lanes = self.columns, self.columns.lanes
        w = np.ascontiguousarray(self.layout.weight_matrix(weight, groups))
        rows_k = groups * w.shape[2]
        out_w = grad_output.shape[3]
        n, n_out, out_h = grad_output.shape[:3]
        go = np.ascontiguousarray(grad_output).reshape(n, n_out, out_h * out_w)
        rows = tile_rows(out_w, rows_k, w.itemsize)

        def new_state():
            return {"scratch": np.empty(rows * out_w * rows_k, w.dtype),
                    "grad_w": np.zeros_like(w) if want_weight else np.zeros((1, 1, 1), w.dtype)}

        def work(chunk, state):
            # without ``want_columns``, ``start_backward`` asked for none of them
            kernels.deform_backward_tiles(
                self.like, go, w, lanes.images(), *columns.common(chunk), chunk.r1, rows,
                want_weight, *columns.gradient_targets(w.dtype), state["grad_w"],
                state["scratch"])

        states = columns.run_chunks(chunks, work, new_state)
        if not want_weight:
            return None
        return _columns.summed_weight_grad(np, self.layout, states, weight.shape)

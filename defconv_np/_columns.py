"""The im2col + GEMM skeleton shared by conv2d and deform_conv2d, on any backend.

A backend supplies a columns provider (kernels that fill a chunk's column
buffer and consume its gradient, a column ``layout``, and a way to run chunks),
plus a column budget and a number of concurrent lanes. This module splits the
batch into chunks under that budget and runs the GEMMs through the array
module's ``matmul`` (NumPy's BLAS, or cuBLAS through CuPy), or through the
provider's ``matmul_for(dtype)`` where it has one (the CPU lanes' choice of
BLAS, ``_cpu_blas.lane_matmul``). The two layouts, ``ChannelsFirst``
(torchvision's) and ``PixelsFirst`` (channels-last), each say how the weight
multiplies their columns, group by group.
"""

from typing import NamedTuple


class Chunk(NamedTuple):
    """Images ``n0:n1``, output rows ``r0:r1`` (either one image, or whole images)."""

    n0: int
    n1: int
    r0: int
    r1: int


def plan_chunks(batch, out_h, out_w, bytes_per_pixel, budget, lanes=1):
    """Split (batch, out_h) into chunks whose scratch fits in ``budget`` bytes.

    Whole images are grouped while they fit, at most ``ceil(batch / lanes)``
    to a chunk, so that a batch of small images still gives each of the
    ``lanes`` workers a chunk; an image that alone exceeds the
    budget is split by output rows into the fewest chunks that fit, of equal
    heights to within one row (a last chunk of a few rows would run its GEMM
    at a fraction of the rate of the others), at least one row per chunk, so
    a single row wider than the budget still runs, at its own size.
    """
    per_row = out_w * bytes_per_pixel
    per_image = out_h * per_row
    if per_image <= budget:
        step = max(1, min(budget // per_image, -(-batch // max(1, lanes))))
        return [Chunk(n0, min(batch, n0 + step), 0, out_h) for n0 in range(0, batch, step)]
    count = -(-out_h // max(1, budget // per_row))
    bounds = [out_h * i // count for i in range(count + 1)]
    return [Chunk(n, n + 1, r0, r1) for n in range(batch) for r0, r1 in zip(bounds, bounds[1:])]


def chunks_for(geom, dtype, buffers, backend):
    """Chunks of a conv of geometry ``geom`` where each of the backend's
    concurrent lanes holds ``buffers`` column-sized scratch buffers, all
    together under the backend's column budget."""
    buffers = max(1, buffers)
    bytes_per_pixel = buffers * geom.channels * geom.kernel_points * dtype.itemsize
    lanes = max(1, backend.column_lanes())
    return plan_chunks(geom.batch, geom.out_h, geom.out_w, bytes_per_pixel,
                       backend.column_budget(buffers) // lanes, lanes)


class SeparateBackward:
    """``backward_chunk`` for column providers without a fused backward kernel:
    rebuild the columns with ``fill`` and scatter the column gradient with
    ``scatter_input_grad`` (the dense convs, on either backend)."""

    def backward_chunk(self, chunk, cols, grad_cols):
        if cols is not None:
            self.fill(chunk, cols)
        if grad_cols is not None:
            self.scatter_input_grad(chunk, grad_cols)


def run_in_order(chunks, work, new_state):
    """Run ``work(chunk, state)`` on every chunk, in order, with one state.
    Returns the list of states (here one), as a parallel runner would."""
    state = new_state()
    for chunk in chunks:
        work(chunk, state)
    return [state]


def largest(chunks, out_w):
    """Largest number of (image, pixel) columns in any chunk."""
    return max(((c.n1 - c.n0) * (c.r1 - c.r0) * out_w for c in chunks), default=0)


class ChannelsFirst:
    """Columns stored as (nb, C*K, P) with row ``c*K + k``: the row order of
    ``weight.reshape(O, C/groups*K)``, as torchvision lays them out."""

    @staticmethod
    def physical(buffer, nb, rows_k, npix):
        return buffer[: nb * rows_k * npix].reshape(nb, rows_k, npix)

    @staticmethod
    def logical(cols, groups):
        nb, rows_k, npix = cols.shape
        return cols.reshape(nb, groups, rows_k // groups, npix)

    @staticmethod
    def weight_matrix(weight, groups):
        return weight.reshape(groups, weight.shape[0] // groups, -1)

    @staticmethod
    def weight_from_matrix(matrix, shape):
        return matrix.reshape(shape)

    @staticmethod
    def product(matmul, w, cols, groups, out=None):
        """``w @ cols`` per group, as (nb, groups, O/groups, P); written into
        ``out`` (C-contiguous, that shape) when given."""
        return matmul(w, ChannelsFirst.logical(cols, groups), out=out)

    @staticmethod
    def forward_weight(w):
        """The weight matrices as ``write_product`` takes them: ``w`` itself."""
        return w

    @staticmethod
    def write_product(matmul, w, cols, groups, target, store_transposed):
        """``target`` (nb, O, rows, Wo) = ``w @ cols`` per group; the GEMM
        writes in place when ``target`` is C-contiguous (whole images)."""
        nb, n_out = target.shape[:2]
        npix = cols.shape[2]
        if target.flags.c_contiguous:
            ChannelsFirst.product(matmul, w, cols, groups,
                                  out=target.reshape(nb, groups, n_out // groups, npix))
        else:
            target[...] = ChannelsFirst.product(matmul, w, cols, groups).reshape(target.shape)

    @staticmethod
    def column_grads(matmul, w, go, grad_cols, groups):
        """grad_cols = w^T @ go, per group."""
        matmul(w.transpose(0, 2, 1), go, out=ChannelsFirst.logical(grad_cols, groups))


class PixelsFirst:
    """Columns stored as (nb, P, groups*K*C/groups), channel fastest within
    (weight group, kernel point): sampling kernels then run contiguously over
    channels (vectorised loads and stores), as DCNv4 does on GPUs."""

    @staticmethod
    def physical(buffer, nb, rows_k, npix):
        return buffer[: nb * rows_k * npix].reshape(nb, npix, rows_k)

    @staticmethod
    def logical(cols, groups):
        nb, npix, rows_k = cols.shape
        return cols.reshape(nb, npix, groups, rows_k // groups).transpose(0, 2, 3, 1)

    @staticmethod
    def weight_matrix(weight, groups):
        out_ch = weight.shape[0]
        return weight.transpose(0, 2, 3, 1).reshape(groups, out_ch // groups, -1)

    @staticmethod
    def weight_from_matrix(matrix, shape):
        out_ch, per_group, kh, kw = shape
        return matrix.reshape(out_ch, kh, kw, per_group).transpose(0, 3, 1, 2)

    @staticmethod
    def forward_weight(w):
        """The weight matrices as ``write_product`` takes them: transposed,
        (groups, C/groups*K, O/groups), contiguous, so that the GEMM's second
        operand has contiguous rows, which ``_cpu_blas.NumbaGemm`` needs."""
        return w.transpose(0, 2, 1).copy()

    @staticmethod
    def write_product(matmul, w_t, cols, groups, target, store_transposed):
        """``target`` (nb, O, rows, Wo) = ``w @ cols`` per group, formed as
        ``cols^T @ w^T`` (nb, groups, P, O/groups; ``w_t`` is
        ``forward_weight(w)``) and written into the NCHW rows by
        ``store_transposed`` (the backend's transposing copy). BLAS runs
        faster with the pixels as the long, row-major side: 196 vs 134 GFLOP/s
        for a 1024-pixel, 64x576 tile on one core (OpenBLAS SkylakeX kernel)."""
        nb, npix, rows_k = cols.shape
        rows = cols.reshape(nb, npix, groups, rows_k // groups).transpose(0, 2, 1, 3)
        store_transposed(matmul(rows, w_t), target)

    @staticmethod
    def column_grads(matmul, w, go, grad_cols, groups):
        """grad_cols^T = go^T @ w, per group, written in place (row-major output)."""
        nb, npix, rows_k = grad_cols.shape
        out = grad_cols.reshape(nb, npix, groups, rows_k // groups).transpose(0, 2, 1, 3)
        matmul(go.transpose(0, 1, 3, 2), w, out=out)


def _matmul_for(xp, columns, dtype):
    """The provider's ``matmul`` for this call (``matmul_for``), else ``xp``'s."""
    chooser = getattr(columns, "matmul_for", None)
    return xp.matmul if chooser is None else chooser(dtype)


def _fused_tiles(columns, dtype, chunks):
    """The provider's fused runner of this call (``fused_tiles``: the CPU
    deformable conv's tiles of sampling and GEMM), or None for the column path."""
    chooser = getattr(columns, "fused_tiles", None)
    return None if chooser is None else chooser(dtype, chunks)


def forward(xp, out, weight, groups, chunks, columns):
    """``out[n, o, ho, wo] = sum_r weight[o, r] * cols[n, r, (ho, wo)]`` per group.

    ``columns.fill(chunk, cols)`` writes a chunk's columns in ``columns.layout``;
    ``columns.run_chunks`` decides how chunks are spread over workers.
    """
    tiles = _fused_tiles(columns, out.dtype, chunks)
    if tiles is not None:
        tiles.forward(out, weight, groups, chunks)
        return
    layout = columns.layout
    matmul = _matmul_for(xp, columns, out.dtype)
    out_w = out.shape[3]
    w = xp.ascontiguousarray(layout.weight_matrix(weight, groups))
    rows_k = groups * w.shape[2]
    size = largest(chunks, out_w) * rows_k
    w = layout.forward_weight(w)

    def work(chunk, scratch):
        nb, npix = chunk.n1 - chunk.n0, (chunk.r1 - chunk.r0) * out_w
        cols = layout.physical(scratch, nb, rows_k, npix)
        columns.fill(chunk, cols)
        layout.write_product(matmul, w, cols, groups,
                             out[chunk.n0:chunk.n1, :, chunk.r0:chunk.r1, :],
                             getattr(columns, "store_transposed", None))

    columns.run_chunks(chunks, work, lambda: xp.empty(size, out.dtype))


def backward(xp, grad_output, weight, groups, chunks, columns, want_weight, want_columns):
    """Weight gradient (if ``want_weight``) and, if ``want_columns``, the column
    gradient of every chunk.

    Per chunk: the column gradient ``w^T @ grad_output`` is formed first, then
    ``columns.backward_chunk(chunk, cols, grad_cols)`` rebuilds the columns
    into ``cols`` (None unless the weight gradient is wanted) and consumes
    ``grad_cols`` (None unless wanted) in whatever way the backend likes best,
    then the weight gradient ``grad_output @ cols^T`` is accumulated. Each
    worker sums its own chunks; the workers' sums are added in worker order, so
    the result does not depend on scheduling. Returns the weight gradient (or None).
    """
    tiles = _fused_tiles(columns, grad_output.dtype, chunks)
    if tiles is not None:
        return tiles.backward(grad_output, weight, groups, chunks, want_weight, want_columns)
    layout = columns.layout
    matmul = _matmul_for(xp, columns, grad_output.dtype)
    n_out, out_w = grad_output.shape[1], grad_output.shape[3]
    w = xp.ascontiguousarray(layout.weight_matrix(weight, groups))
    rows_k = groups * w.shape[2]
    size = largest(chunks, out_w) * rows_k

    def new_state():
        return {"cols": xp.empty(size, w.dtype) if want_weight else None,
                "grad_cols": xp.empty(size, w.dtype) if want_columns else None,
                "grad_w": xp.zeros_like(w) if want_weight else None}

    def work(chunk, state):
        nb, npix = chunk.n1 - chunk.n0, (chunk.r1 - chunk.r0) * out_w
        go = xp.ascontiguousarray(
            grad_output[chunk.n0:chunk.n1, :, chunk.r0:chunk.r1, :]
        ).reshape(nb, groups, n_out // groups, npix)
        cols = grad_cols = None
        if want_columns:
            grad_cols = layout.physical(state["grad_cols"], nb, rows_k, npix)
            layout.column_grads(matmul, w, go, grad_cols, groups)
        if want_weight:
            cols = layout.physical(state["cols"], nb, rows_k, npix)
        columns.backward_chunk(chunk, cols, grad_cols)
        if want_weight:
            state["grad_w"] += matmul(
                go, layout.logical(cols, groups).transpose(0, 1, 3, 2)).sum(axis=0)

    states = columns.run_chunks(chunks, work, new_state)
    return summed_weight_grad(xp, layout, states, weight.shape) if want_weight else None


def summed_weight_grad(xp, layout, states, shape):
    """The weight gradient of ``shape`` from the workers' partial sums
    (``state["grad_w"]`` in ``layout``'s weight matrices), added in worker
    order, so that it does not depend on scheduling."""
    grad_w = states[0]["grad_w"]
    for state in states[1:]:
        grad_w += state["grad_w"]
    return xp.ascontiguousarray(layout.weight_from_matrix(grad_w, shape))

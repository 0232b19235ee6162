"""CPU launcher of conv2d with stride 1 as an implicit GEMM: no column matrix.

With stride 1, a band of the zero-padded NCHW image, each channel's rows
``Wp`` apart, holds every tap's operand already: output pixel ``(y, x)``, at
column ``m = y*Wp + x`` of a result whose rows are ``Wp`` apart, reads tap
``(i, j)`` at column ``m + i*dh*Wp + j*dw`` of the band. So the conv of a
band of output rows is ``kh*kw`` GEMMs per group,
``(O/groups, C/groups) @ (C/groups, M)``, each reading a window of the band
in place and accumulating (``beta = 1``) into one result, whose columns
``x >= Wo`` of each row are computed and dropped (``(kw-1)*dw`` of every
``Wp``). No im2col copy and no transposes: the band is a plain row copy, and
the result is already in NCHW order. At (8, 64, 64x64, 3x3), on one core
(OpenBLAS SkylakeX), the nine K=64 GEMMs of a 16-row band take 2.45 ms per
image, against 2.36 for the single K=576 GEMM of the column path, which also
pays the channels-last copy (0.3 ms), the column copy (0.35) and the
transposing store (0.2).

The backward runs the same band GEMMs the other way round: the column
gradient never exists either.

The GEMMs go straight to a CBLAS (``_cpu_blas``): NumPy's own BLAS, or on
the worker lanes the one ``config.cpu_blas`` chooses (by default MKL where
installed, else our own where the CPU has AVX-512). Ours sums a band's
kh*kw taps in registers in one call (``NumbaGemm.taps``), forward and input
gradient, and runs the weight gradient from pixels-first gradient rows,
whose contiguous rows it needs. ``numpy.matmul`` can neither accumulate nor
start a matrix at an arbitrary element. Where that interface is not found,
or groups are too narrow for GEMMs to pay, the entry points decline (False,
None) and the column path runs.
"""

import numpy as np

from . import _columns, config
from ._cpu_blas import NO_TRANS, ROW_MAJOR, TRANS, fits, gemm, in_lane, lane_gemm
from .kernels.cpu import layout as layout_kernels


class _Bands:
    """Geometry of one implicit-GEMM conv: bands of output rows, the padded
    input rows each reads, and the taps' offsets into them."""

    def __init__(self, input, weight, geom, fns, backward=False):
        # (NumPy's GEMM, the lanes' GEMM), resolved once for the whole call
        self.fns = fns
        self.input = _cpu.kernel_operand(input)
        n, self.channels, h, w = input.shape
        self.out_ch, self.per_group, kh, kw = weight.shape
        (self.pad_h, self.pad_w), (dh, dw) = geom.padding, geom.dilation
        self.width_p = w + 2 * self.pad_w
        self.out_h, self.out_w = geom.out_h, geom.out_w
        self.groups = geom.groups
        self.out_per_group = self.out_ch // self.groups
        self.halo = (kh - 1) * dh
        self.itemsize = input.dtype.itemsize
        self.taps = [i * dh * self.width_p + j * dw for i in range(kh) for j in range(kw)]
        self.shifts = np.array(self.taps, np.int64)  # for ``NumbaGemm.taps``
        #: the farthest tap's shift: the zero margin on each side of the
        #: gradient rows, from which ``band_grad``'s taps read (adjoint shifts)
        self.span = max(self.taps)
        self.adjoint_shifts = self.span - self.shifts
        # (kh*kw, O, C/groups): each tap's weight matrix, contiguous
        self.weight = np.ascontiguousarray(weight.transpose(2, 3, 0, 1)).reshape(
            kh * kw, self.out_ch, self.per_group)
        # a row of the band and of the result; in a backward, of the band, the
        # gradient rows and their pixels-first copy, the margins aside
        outputs = 2 * self.out_ch if backward else self.out_ch
        per_row = (self.channels + outputs) * self.width_p * self.itemsize
        fixed = self.halo * self.channels * self.width_p
        if backward:
            fixed += 2 * self.span * self.out_ch
        budget = max(0, config.cpu_conv_band_bytes - fixed * self.itemsize)
        # one image per chunk at most: a lane runs its images one by one
        # anyway, and single images deal evenly over the lanes
        self.chunks = [_columns.Chunk(n0, n0 + 1, c.r0, c.r1) for n0 in range(n)
                       for c in _columns.plan_chunks(1, self.out_h, 1, per_row, budget)]
        self.rows = max((c.r1 - c.r0 for c in self.chunks), default=0)

    def gemm(self):
        """This thread's GEMM: the lanes' on a worker lane, NumPy's elsewhere."""
        return self.fns[1] if in_lane.active else self.fns[0]

    def result_width(self, rows):
        """Columns of the result of ``rows`` output rows: the last row's
        unused columns left out, so that no tap reads past the band."""
        return (rows - 1) * self.width_p + self.out_w

    def _band_size(self, rows):
        """Elements of the band that ``rows`` output rows read."""
        return self.channels * (rows + self.halo) * self.width_p

    def new_state(self):
        dtype = self.input.dtype
        return {"band": np.empty(self._band_size(self.rows), dtype),
                "result": np.empty(self.out_ch * self.rows * self.width_p, dtype)}

    def new_backward_state(self):
        """A lane's buffers for the backward: the band, gradient rows with
        ``span`` zero columns on each side (``grad_view``), and a slot for
        them pixels-first (``grad_t_view``, made on first use)."""
        dtype = self.input.dtype
        return {"band": np.empty(self._band_size(self.rows), dtype),
                "grad": np.zeros(self.out_ch * (self.rows * self.width_p + 2 * self.span),
                                 dtype),
                "grad_t": None}

    def grad_t_view(self, state, chunk):
        """The lane's buffer for ``chunk``'s gradient rows pixels-first,
        (rows*Wp, O), allocated on the first call (our own GEMM only)."""
        if state["grad_t"] is None:
            state["grad_t"] = np.empty(self.rows * self.width_p * self.out_ch, self.input.dtype)
        rows = chunk.r1 - chunk.r0
        return state["grad_t"][:rows * self.width_p * self.out_ch].reshape(
            rows * self.width_p, self.out_ch)

    def grad_view(self, state, chunk):
        """The lane's gradient buffer for ``chunk``: (O, rows*Wp + 2*span),
        its margins zero; the gradient rows go to columns ``span`` on
        (``[:, span:-span]``, a result's layout)."""
        width = (chunk.r1 - chunk.r0) * self.width_p + 2 * self.span
        padded = state["grad"][:self.out_ch * width].reshape(self.out_ch, width)
        padded[:, :self.span] = 0
        padded[:, width - self.span:] = 0
        return padded

    def band(self, state, chunk):
        """The lane's band buffer for ``chunk``, (C, rows + halo, Wp), contiguous."""
        size = self._band_size(chunk.r1 - chunk.r0)
        return state["band"][:size].reshape(self.channels, -1, self.width_p)

    def result(self, state, chunk):
        """The lane's result buffer for ``chunk``, (O, rows*Wp), contiguous."""
        size = self.out_ch * (chunk.r1 - chunk.r0) * self.width_p
        return state["result"][:size].reshape(self.out_ch, -1)

    def load(self, n, chunk, band, check=False):
        """Fill ``band`` with the padded input rows that output rows
        ``chunk.r0:chunk.r1`` of image ``n`` read; with ``check``, return
        whether they are all finite."""
        return layout_kernels.padded_rows(self.input[n], chunk.r0 - self.pad_h, self.pad_w,
                                          band, check)

    def forward(self, band, result, rows):
        """``result`` (O, rows*Wp) = the conv of ``band`` (kh*kw GEMMs per group,
        or with our own GEMM one call summing all taps in registers; the
        unused columns are dropped, whatever they hold)."""
        fn = self.gemm()
        isz, cg, og = self.itemsize, self.per_group, self.out_per_group
        m = self.result_width(rows)
        ld_band, ld_result = band.strides[0] // isz, result.strides[0] // isz
        b_base, c_base, w_base = band.ctypes.data, result.ctypes.data, self.weight.ctypes.data
        taps = getattr(fn, "taps", None)
        if taps is not None:
            for g in range(self.groups):
                taps(og, m, cg, w_base + g * og * cg * isz, cg, 1, self.out_ch * cg,
                     b_base + g * cg * ld_band * isz, ld_band, self.shifts,
                     c_base + g * og * ld_result * isz, ld_result)
            return
        for g in range(self.groups):
            for t, shift in enumerate(self.taps):
                fn(ROW_MAJOR, NO_TRANS, NO_TRANS, og, m, cg, 1.0,
                   w_base + (t * self.out_ch + g * og) * cg * isz, cg,
                   b_base + (g * cg * ld_band + shift) * isz, ld_band,
                   0.0 if t == 0 else 1.0, c_base + g * og * ld_result * isz, ld_result)

    def grad_rows(self, grad_output, n, chunk, grad):
        """``grad_output`` rows ``chunk.r0:chunk.r1`` of image ``n`` as a result
        (O, rows*Wp), into ``grad``: the unused columns zero, so they add nothing."""
        rows = chunk.r1 - chunk.r0
        shaped = grad.reshape(self.out_ch, rows, self.width_p)
        shaped[:, :, :self.out_w] = grad_output[n, :, chunk.r0:chunk.r1, :]
        shaped[:, :, self.out_w:] = 0
        return grad

    def segments(self, rows, exact):
        """(first column, columns) of the result spans the backward GEMMs run
        over: all ``rows`` rows at once, unused columns included (they hold
        zeros there), or with ``exact``, row by row without them. The unused
        columns meet input values (weight gradient) and weights (input
        gradient) that no tap of theirs reads, and ``0 * inf`` would turn
        those into NaN: a band holding a non-finite input, or a non-finite
        weight, is run row by row, as the column path would sum it."""
        if exact:
            return [(r * self.width_p, self.out_w) for r in range(rows)]
        return [(0, self.result_width(rows))]

    def transposed_weight_grad(self):
        """Whether this thread's GEMM is our own, which runs the weight
        gradient from pixels-first gradient rows (``weight_grad_t``)."""
        return hasattr(self.gemm(), "taps")

    def weight_grad_t(self, band, grad_t, rows, grad_weight_t):
        """``grad_weight_t[t, g]`` (C/g, O/g) += ``window_t(band) @ grad_t``
        per group, ``grad_t`` the gradient rows pixels-first (rows*Wp, O)
        (``layout.pixels_first_rows``, the unused columns zero): the product
        ``weight_grad`` forms, transposed, so that its second operand has
        contiguous rows (our own GEMM's). The band must be finite: its
        unused columns meet zeros."""
        fn = self.gemm()
        isz, cg, og = self.itemsize, self.per_group, self.out_per_group
        ld_band = band.strides[0] // isz
        b_base, w_base = band.ctypes.data, grad_weight_t.ctypes.data
        m = self.result_width(rows)
        for g in range(self.groups):
            for t, shift in enumerate(self.taps):
                fn(ROW_MAJOR, NO_TRANS, NO_TRANS, cg, og, m, 1.0,
                   b_base + (g * cg * ld_band + shift) * isz, ld_band,
                   grad_t.ctypes.data + g * og * isz, self.out_ch,
                   1.0, w_base + (t * self.groups + g) * cg * og * isz, og)

    def weight_grad(self, band, grad, grad_weight, exact):
        """``grad_weight[t]`` += ``grad @ window_t(band)^T`` per group."""
        fn = self.gemm()
        isz, cg, og = self.itemsize, self.per_group, self.out_per_group
        ld_band, ld_grad = band.strides[0] // isz, grad.strides[0] // isz
        b_base, g_base, w_base = band.ctypes.data, grad.ctypes.data, grad_weight.ctypes.data
        for first, m in self.segments(grad.shape[1] // self.width_p, exact):
            for g in range(self.groups):
                for t, shift in enumerate(self.taps):
                    fn(ROW_MAJOR, NO_TRANS, TRANS, og, cg, m, 1.0,
                       g_base + (g * og * ld_grad + first) * isz, ld_grad,
                       b_base + (g * cg * ld_band + shift + first) * isz, ld_band,
                       1.0, w_base + (t * self.out_ch + g * og) * cg * isz, cg)

    def weight_from_transposed(self, total):
        """``weight_grad_t``'s (kh*kw, groups, C/g, O/g) as (kh*kw, O, C/g)."""
        taps = total.shape[0]
        return total.reshape(taps, self.groups, self.per_group, self.out_per_group).transpose(
            0, 1, 3, 2).reshape(taps, self.out_ch, self.per_group)

    def band_grad(self, padded, band_grad, exact):
        """``band_grad`` (C, rows_in, Wp) = the adjoint of ``forward``: each
        tap's ``weight_t^T @ grad`` added onto its window, ``grad`` the
        gradient rows inside ``padded`` (``grad_view``). With our own GEMM and
        not ``exact``, one call per group: band column ``q`` sums tap ``t``'s
        products with gradient column ``q - shift_t``, which the zero margins
        of ``padded`` give where it falls outside the rows."""
        fn = self.gemm()
        isz, cg, og = self.itemsize, self.per_group, self.out_per_group
        ld_band, ld_grad = band_grad.strides[0] // isz, padded.strides[0] // isz
        w_base = self.weight.ctypes.data
        taps = getattr(fn, "taps", None)
        if taps is not None and not exact:
            width = band_grad.shape[1] * band_grad.shape[2]
            for g in range(self.groups):
                taps(cg, width, og, w_base + g * og * cg * isz, 1, cg, self.out_ch * cg,
                     padded.ctypes.data + g * og * ld_grad * isz, ld_grad, self.adjoint_shifts,
                     band_grad.ctypes.data + g * cg * ld_band * isz, ld_band)
            return
        grad = padded[:, self.span:padded.shape[1] - self.span]
        s_base, g_base = band_grad.ctypes.data, grad.ctypes.data
        band_grad[...] = 0
        for first, m in self.segments(grad.shape[1] // self.width_p, exact):
            for g in range(self.groups):
                for t, shift in enumerate(self.taps):
                    fn(ROW_MAJOR, TRANS, NO_TRANS, cg, m, og, 1.0,
                       w_base + (t * self.out_ch + g * og) * cg * isz, cg,
                       g_base + (g * og * ld_grad + first) * isz, ld_grad,
                       1.0, s_base + (g * cg * ld_band + shift + first) * isz, ld_band)


def _gemms_for(input, weight, geom):
    """(NumPy's GEMM, the lanes' GEMM) to run this conv with, both resolved
    now for the whole call, or None where the implicit path does not apply
    (stride other than 1, groups too thin, or a GEMM missing or too narrow
    in its integers for the sizes)."""
    if geom.stride != (1, 1) or input.shape[0] == 0:
        return None
    narrowest = min(weight.shape[1], weight.shape[0] // geom.groups)
    if narrowest < config.cpu_implicit_conv_min_channels:
        return None
    h, w = input.shape[2] + 2 * geom.padding[0], input.shape[3] + 2 * geom.padding[1]
    size = h * w * max(input.shape[1], weight.shape[0])
    fns = (gemm(input.dtype), lane_gemm(input.dtype))
    if all(fn is not None and fits(fn, size) for fn in fns):
        return fns
    return None


def implicit_conv2d_forward(input, weight, bias, geom, out):
    """Write conv2d of ``input`` by ``weight`` plus ``bias`` (or None) into
    ``out`` as implicit GEMMs and return True, or return False (nothing
    written) where this path does not apply. The bias is added as the result
    is copied out, not in a pass of its own."""
    fns = _gemms_for(input, weight, geom)
    if fns is None:
        return False
    bands = _Bands(input, weight, geom, fns)
    bias = None if bias is None else np.asarray(bias).reshape(-1, 1, 1)

    def work(chunk, state):
        rows = chunk.r1 - chunk.r0
        band, result = bands.band(state, chunk), bands.result(state, chunk)
        for n in range(chunk.n0, chunk.n1):
            bands.load(n, chunk, band)
            bands.forward(band, result, rows)
            rows_out = result.reshape(bands.out_ch, rows, bands.width_p)[:, :, :bands.out_w]
            if bias is None:
                out[n, :, chunk.r0:chunk.r1, :] = rows_out
            else:
                np.add(rows_out, bias, out=out[n, :, chunk.r0:chunk.r1, :])

    _cpu.run_chunks(bands.chunks, work, bands.new_state)
    return True


def implicit_conv2d_backward(grad_output, input, weight, geom, want_input, want_weight):
    """``(grad_input, grad_weight)`` of conv2d as implicit GEMMs (None for one
    not wanted), or None where this path does not apply. Each lane sums the
    weight gradient of its images; the lanes' sums are added in lane order,
    so the result does not depend on scheduling."""
    fns = _gemms_for(input, weight, geom) if (want_input or want_weight) else None
    if fns is None:
        return None
    bands = _Bands(input, weight, geom, fns, backward=True)
    grad_input = np.zeros(input.shape, input.dtype) if want_input else None
    finite_weight = bool(np.isfinite(bands.weight).all())
    if want_weight:
        grad_output = _cpu.kernel_operand(grad_output)  # read by pixels_first_rows
    shape_t = (len(bands.taps), bands.groups, bands.per_group, bands.out_per_group)

    def new_state():
        state = bands.new_backward_state()
        state["grad_weight"] = np.zeros_like(bands.weight) if want_weight else None
        # with our own GEMM, finite bands add their transposed products here
        state["grad_weight_t"] = np.zeros(shape_t, weight.dtype) if want_weight else None
        return state

    def work(chunk, state):
        band, padded = bands.band(state, chunk), bands.grad_view(state, chunk)
        grad = padded[:, bands.span:padded.shape[1] - bands.span]
        for n in range(chunk.n0, chunk.n1):
            bands.grad_rows(grad_output, n, chunk, grad)
            if want_weight:
                finite = bands.load(n, chunk, band, check=True)
                if finite and bands.transposed_weight_grad():
                    rows = chunk.r1 - chunk.r0
                    grad_t = bands.grad_t_view(state, chunk)
                    layout_kernels.pixels_first_rows(grad_output[n], chunk.r0, rows,
                                                     bands.width_p, grad_t)
                    bands.weight_grad_t(band, grad_t, rows, state["grad_weight_t"])
                else:
                    bands.weight_grad(band, grad, state["grad_weight"], not finite)
            if want_input:
                band_grad = band  # the band is read by then: reuse its buffer
                bands.band_grad(padded, band_grad, not finite_weight)
                layout_kernels.add_padded_rows(band_grad, chunk.r0 - bands.pad_h,
                                               bands.pad_w, grad_input[n])

    states = _cpu.run_chunks(bands.chunks, work, new_state)
    grad_weight = None
    if want_weight:
        total, total_t = states[0]["grad_weight"], states[0]["grad_weight_t"]
        for state in states[1:]:
            total += state["grad_weight"]
            total_t += state["grad_weight_t"]
        total += bands.weight_from_transposed(total_t)
        kh, kw = weight.shape[2:]
        grad_weight = np.ascontiguousarray(total.reshape(
            kh, kw, *total.shape[1:]).transpose(2, 3, 0, 1))
    return grad_input, grad_weight


# last: ``_cpu`` imports this module's entry points at its own end
from . import _cpu  # noqa: E402

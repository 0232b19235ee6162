"""Deformable im2col, its input adjoint, and the offset/mask gradient on CPU,
channels-last.

The input is read from (and its gradient written to) a zero-padded
channels-last copy of the chunk's images ``(nb, (H + 3) * (W + 3), C)``
(``inp[b]`` is image ``n0 + b``; offsets and masks are indexed by ``n0 + b``)
laid out as
``kernels.sampling`` describes (``row_stride = W + 3``), so the four corners of
a sample are four contiguous channel vectors. Columns are pixels-first,
``cols[b, p, (gw*K + k)*Cg + cg]`` for weight group ``gw`` and its channel
``cg`` (``_columns.PixelsFirst``). The per-channel inner loops are therefore
unit-stride and vectorise; the sampling cells and weights of a whole output
row are computed first (``_row_taps``) and each is reused for every channel
of its offset group.

The kernels are serial and release the GIL: the CPU launcher runs chunks on
one worker thread per core (``_cpu.run_chunks``), each with single-threaded
BLAS, so kernels and GEMMs never compete for cores. Both let LLVM vectorise
their channel loops with 512-bit vectors where the CPU has them
(``simd.prefer_wide_vectors``): the backward's 65 -> 58 ns a sample (C = 64,
one core), deformable conv v2 forward+backward at N=8, C=O=64, 64x64 on
MKL lanes 46.7-47.7 -> 44.8-45.6 ms; the forward's sampling 18.7 -> 18.0
ns a sample (its per-sample work dominates).

Offsets are (N, 2*G*K, Ho, Wo) with (dy, dx) interleaved per kernel point;
masks (N, G*K, Ho, Wo) are ignored unless ``use_mask``. The undeformed grid
arrives as ``y_base[ho, i] = ho*sh - ph + i*dh`` (Ho, kh) and ``x_base[wo, j]``
(Wo, kw) in the input dtype, so a sample position is formed in the input
precision, as torchvision forms it; ``height`` and ``width`` are floats of that
dtype too (they are only compared with positions).
"""

import numpy as np
from numba import njit, uint64

from .device import bilinear_coordinate_grads, bilinear_value, bilinear_weights, deform_tap
from .simd import prefer_wide_vectors

# NaN and infinities keep their IEEE meaning, which the boundary rules rely
# on. No "reassoc": with it LLVM distributes the mask over the corner sums
# (``m * (a + b)`` into ``m*a + m*b``, hoisting ``m * w``), which overflows
# where torchvision's ``mask * sample`` does not (mask 1e38 over corners +10
# and -10 gave inf instead of 0).
_FASTMATH = {"contract", "nsz", "arcp"}


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
def _channel_sum(terms, count, zero):
    """Sum of ``terms[:count]`` in their own precision (``zero`` is a zero of
    it), reassociated so that it vectorises: partial sums in vector lanes,
    then a tree, far fewer roundings in a row than torchvision's sequential
    sum in the input precision.

    A function of its own, never inlined into the kernels: its additions carry
    "reassoc", the kernels' products do not, so the compiler cannot factor the
    mask back out of the per-channel terms (which torchvision multiplies
    term by term). Summed in float64 instead, the deformable backward took
    61-67 ns a sample against 52-61 (C = 64, one core)."""
    acc = zero
    for i in range(count):
        acc += terms[i]
    return acc


#: Planes of the per-row tap table (7, samples, Wo): the four corner weights,
#: the cell fractions ly and lx, and the mask value, each in the input dtype.
_W00, _W01, _W10, _W11, _LY, _LX, _MASK = range(7)


@njit(inline="always", cache=True, nogil=True)
def _row_taps(offset, mask, use_mask, n, ho, height, width, row_stride, y_base, x_rows, base,
              taps, inside):
    """Cell, corner weights, fractions and mask value of every sample of
    output row ``ho``: for sample ``s = g*K + k`` (offset group ``g``, kernel
    point ``k``) and column ``wo``, ``base[s, wo]``, ``inside[s, wo]`` and
    ``taps[:, s, wo]`` (``_W00`` .. ``_MASK``). ``x_rows[j, wo]`` is the
    undeformed column of kernel column ``j`` (``x_base`` transposed).

    One pass over a row, before the channel loops, along the contiguous last
    axis of the offsets and of every table: the loop over ``wo`` has no
    branches (``sampling.deform_tap`` selects) and vectorises. Every array
    is indexed whole, not through row views: with a view per table row the
    loop ran scalar (5.9 against 1.6 ns a sample). The maths runs in
    float64 and is stored in the input dtype, which keeps the channel loops
    in float32 for float32 inputs. The weights are unmasked: the mask
    multiplies the finished sample, as torchvision does.
    """
    kw = x_rows.shape[0]
    n_k = y_base.shape[1] * kw
    n_s, out_w = base.shape
    for s in range(n_s):
        k = s % n_k
        ki = k // kw
        kj = k - ki * kw
        y0 = y_base[ho, ki]
        for wo in range(out_w):
            q, ly, lx, is_in = deform_tap(y0 + offset[n, 2 * s, ho, wo],
                                          x_rows[kj, wo] + offset[n, 2 * s + 1, ho, wo],
                                          height, width, row_stride, 1.0)
            w00, w01, w10, w11 = bilinear_weights(ly, lx, 1.0)
            base[s, wo] = q
            inside[s, wo] = is_in
            taps[_W00, s, wo] = w00
            taps[_W01, s, wo] = w01
            taps[_W10, s, wo] = w10
            taps[_W11, s, wo] = w11
            taps[_LY, s, wo] = ly
            taps[_LX, s, wo] = lx
        if use_mask:
            for wo in range(out_w):
                taps[_MASK, s, wo] = mask[n, s, ho, wo]
        else:
            for wo in range(out_w):
                taps[_MASK, s, wo] = 1.0


@njit(inline="always", cache=True, nogil=True)
def _channel_runs(groups, weight_groups, channels, n_k):
    """The channel runs of each offset group: the channels one offset group
    shares with one weight group. Run ``j`` of offset group ``g``
    (``first[g] <= j < first[g + 1]``) covers channels ``lo[j] : lo[j] +
    count[j]``, and its column entries for kernel point ``k`` start at
    ``dst[j] + k * Cw`` (``cols[..., (gw*K + k)*Cw + c - gw*Cw]``, ``Cw`` the
    channels of a weight group).

    Formed once per kernel call: the divisions that find the runs would
    otherwise cost more per sample than its channel loop. ``nested`` says
    every offset group lies inside one weight group (one run each, run ``g``
    for group ``g``), the usual case, which the kernels take without a loop
    over runs."""
    per_group = channels // groups
    per_wgroup = channels // weight_groups
    first = np.zeros(groups + 1, np.int64)
    lo = np.empty(groups + weight_groups, np.int64)
    count = np.empty(groups + weight_groups, np.uint64)
    dst = np.empty(groups + weight_groups, np.int64)
    j = 0
    for g in range(groups):
        first[g] = j
        for gw in range(g * per_group // per_wgroup, ((g + 1) * per_group - 1) // per_wgroup + 1):
            start = max(g * per_group, gw * per_wgroup)
            stop = min((g + 1) * per_group, (gw + 1) * per_wgroup)
            lo[j] = start
            count[j] = stop - start
            dst[j] = gw * (n_k - 1) * per_wgroup + start
            j += 1
    first[groups] = j
    return first, lo, count, dst, per_wgroup, per_wgroup % per_group == 0


@njit(inline="always", cache=True, nogil=True)
def _sample_run(flat_cols, o, flat_inp, i00, right, down, count, w00, w01, w10, w11, m):
    """``count`` column entries from ``o`` on: the masked bilinear samples of
    the corner vectors at ``i00``, ``+ right``, ``+ down``, ``+ down + right``.
    Flat arrays and unsigned indices: a signed index costs a wraparound check
    that blocks vectorisation, and a slice costs Numba reference counting."""
    i01 = i00 + right
    i10 = i00 + down
    i11 = i10 + right
    for i in range(count):
        flat_cols[o + i] = m * (w00 * flat_inp[i00 + i] + w01 * flat_inp[i01 + i]
                                + w10 * flat_inp[i10 + i] + w11 * flat_inp[i11 + i])


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def deform_im2col(inp, height, width, row_stride, offset, mask, use_mask, n0, r0, y_base, x_base,
                  weight_groups, cols):
    """Fill pixels-first ``cols`` (nb, P, C*K) of images ``n0 .. n0+nb`` with
    bilinear samples times their mask (``m * sample``; an outside sample reads
    the all-zero cell at ``q = 0``, so it is ``m * 0``). ``inp`` holds those
    images only, ``inp[b]`` for image ``n0 + b``."""
    prefer_wide_vectors()
    n_k = y_base.shape[1] * x_base.shape[1]
    plane, channels = inp.shape[1], inp.shape[2]
    groups = offset.shape[1] // (2 * n_k)
    out_w = offset.shape[3]
    nb, npix, rows_k = cols.shape
    flat_inp = inp.reshape(-1)
    flat_cols = cols.reshape(-1)
    x_rows = np.ascontiguousarray(x_base.T)
    base = np.empty((groups * n_k, out_w), np.int64)
    taps = np.empty((7, groups * n_k, out_w), cols.dtype)
    inside = np.empty((groups * n_k, out_w), np.bool_)
    first, lo, count, dst, per_wgroup, nested = _channel_runs(groups, weight_groups, channels, n_k)
    right, down = uint64(channels), uint64(row_stride * channels)
    for b in range(nb):
        n = n0 + b
        for r in range(npix // out_w):
            _row_taps(offset, mask, use_mask, n, r0 + r, height, width, row_stride, y_base,
                      x_rows, base, taps, inside)
            for wo in range(out_w):
                row = (b * npix + r * out_w + wo) * rows_k
                for g in range(groups):
                    for k in range(n_k):
                        s = g * n_k + k
                        w00, w01 = taps[_W00, s, wo], taps[_W01, s, wo]
                        w10, w11 = taps[_W10, s, wo], taps[_W11, s, wo]
                        m = taps[_MASK, s, wo]
                        corner = (b * plane + base[s, wo]) * channels
                        if nested:
                            _sample_run(flat_cols, uint64(row + dst[g] + k * per_wgroup),
                                        flat_inp, uint64(corner + lo[g]), right, down, count[g],
                                        w00, w01, w10, w11, m)
                        else:
                            for j in range(first[g], first[g + 1]):
                                _sample_run(flat_cols, uint64(row + dst[j] + k * per_wgroup),
                                            flat_inp, uint64(corner + lo[j]), right, down,
                                            count[j], w00, w01, w10, w11, m)


@njit(inline="always", cache=True, nogil=True)
def _backward_run(flat_gcols, o, flat_inp, flat_grad, i00, right, down, count, mw00, mw01, mw10,
                  mw11, ly, lx, m, want_input, want_terms, one, t_dy, t_dx, t_v):
    """One run of one sample in the backward pass: scatter ``(m * w) * grad``
    onto the four corner vectors (if ``want_input``), and form the run's
    per-channel offset and mask terms into ``t_dy``, ``t_dx``, ``t_v`` (if
    ``want_terms``), with the mask in each term (torchvision's order)."""
    i01 = i00 + right
    i10 = i00 + down
    i11 = i10 + right
    if want_input:
        # a loop per corner: one store stream each
        for i in range(count):
            flat_grad[i00 + i] += mw00 * flat_gcols[o + i]
        for i in range(count):
            flat_grad[i01 + i] += mw01 * flat_gcols[o + i]
        for i in range(count):
            flat_grad[i10 + i] += mw10 * flat_gcols[o + i]
        for i in range(count):
            flat_grad[i11 + i] += mw11 * flat_gcols[o + i]
    if want_terms:
        for i in range(count):
            a, bq = flat_inp[i00 + i], flat_inp[i01 + i]
            cq, d = flat_inp[i10 + i], flat_inp[i11 + i]
            gv = flat_gcols[o + i]
            dy, dx = bilinear_coordinate_grads(a, bq, cq, d, ly, lx, one)
            t_dy[i] = (m * dy) * gv
            t_dx[i] = (m * dx) * gv
            t_v[i] = gv * bilinear_value(a, bq, cq, d, ly, lx, one)


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def deform_backward(grad_cols, inp, height, width, row_stride, offset, mask, use_mask, n0, r0,
                    y_base, x_base, weight_groups, want_input, want_offset, want_mask, grad_inp,
                    grad_offset, grad_mask):
    """The gradients of one chunk's samples from its column gradient, in one
    pass (the columns themselves are rebuilt by ``deform_im2col``).

    Each sample's cell and weights are computed once, and its four corner
    vectors read once, for up to three results (each skipped unless wanted):

    * ``grad_inp``: ``(mask * weight) * grad_cols`` scatter-added onto the
      corners, the exact adjoint of ``deform_im2col``, into the padded
      channels-last gradient (of the chunk's images only, as ``inp``);
    * ``grad_offset``: per sample, the sum over the channels of its offset
      group of ``(mask * d sample / dy) * grad_cols`` (and dx), the derivative
      taken in the floor cell (torchvision's rule and order,
      ``sampling.bilinear_coordinate_grads``);
    * ``grad_mask``: the sum of ``grad_cols * sample``.

    Outside samples get exactly 0 offset and mask gradients and scatter
    nothing. The channel sums of the offset and mask gradients run in the
    input precision, in vector lanes then a tree (``_channel_sum``), and
    across weight groups' runs in float64; everything runs in a fixed order,
    so the results do not depend on scheduling.
    """
    prefer_wide_vectors()
    n_k = y_base.shape[1] * x_base.shape[1]
    plane, channels = inp.shape[1], inp.shape[2]
    groups = offset.shape[1] // (2 * n_k)
    out_w = offset.shape[3]
    nb, npix, rows_k = grad_cols.shape
    dtype = grad_cols.dtype
    flat_inp = inp.reshape(-1)
    flat_grad = grad_inp.reshape(-1)
    flat_gcols = grad_cols.reshape(-1)
    x_rows = np.ascontiguousarray(x_base.T)
    base = np.empty((groups * n_k, out_w), np.int64)
    taps = np.empty((7, groups * n_k, out_w), dtype)
    inside = np.empty((groups * n_k, out_w), np.bool_)
    first, lo, count, dst, per_wgroup, _ = _channel_runs(groups, weight_groups, channels, n_k)
    right, down = uint64(channels), uint64(row_stride * channels)
    one = np.ones(1, dtype)[0]
    zero = one - one
    want_terms = want_offset or want_mask
    # per-channel terms of the offset and mask sums, formed in the channel
    # loop with the mask in each term (torchvision's order), then summed by
    # ``_channel_sum``
    terms = np.empty((3, channels // groups), dtype)
    t_dy, t_dx, t_v = terms[0], terms[1], terms[2]
    for b in range(nb):
        n = n0 + b
        for r in range(npix // out_w):
            ho = r0 + r
            _row_taps(offset, mask, use_mask, n, ho, height, width, row_stride, y_base, x_rows,
                      base, taps, inside)
            for wo in range(out_w):
                row = (b * npix + r * out_w + wo) * rows_k
                for g in range(groups):
                    for k in range(n_k):
                        s = g * n_k + k
                        acc_dy = 0.0
                        acc_dx = 0.0
                        acc_v = 0.0
                        if inside[s, wo]:
                            ly, lx = taps[_LY, s, wo], taps[_LX, s, wo]
                            m = taps[_MASK, s, wo]
                            mw00, mw01 = m * taps[_W00, s, wo], m * taps[_W01, s, wo]
                            mw10, mw11 = m * taps[_W10, s, wo], m * taps[_W11, s, wo]
                            corner = (b * plane + base[s, wo]) * channels
                            for j in range(first[g], first[g + 1]):
                                _backward_run(flat_gcols, uint64(row + dst[j] + k * per_wgroup),
                                              flat_inp, flat_grad, uint64(corner + lo[j]), right,
                                              down, count[j], mw00, mw01, mw10, mw11, ly, lx, m,
                                              want_input, want_terms, one, t_dy, t_dx, t_v)
                                if want_offset:
                                    acc_dy += _channel_sum(t_dy, count[j], zero)
                                    acc_dx += _channel_sum(t_dx, count[j], zero)
                                if want_mask:
                                    acc_v += _channel_sum(t_v, count[j], zero)
                        if want_offset:
                            grad_offset[n, 2 * s, ho, wo] = acc_dy
                            grad_offset[n, 2 * s + 1, ho, wo] = acc_dx
                        if want_mask:
                            grad_mask[n, s, ho, wo] = acc_v

"""Deformable im2col, its input adjoint, and the offset/mask gradient on CPU,
channels-last.

The input is read from (and its gradient written to) a zero-padded
channels-last copy ``(N, (H + 3) * (W + 3), C)`` laid out as
``kernels.sampling`` describes (``row_stride = W + 3``), so the four corners of
a sample are four contiguous channel vectors. Columns are pixels-first,
``cols[b, p, (gw*K + k)*Cg + cg]`` for weight group ``gw`` and its channel
``cg`` (``_columns.PixelsFirst``). The per-channel inner loops are therefore
unit-stride and vectorise; the sampling cell and weights of a sample are
computed once and reused for every channel of its offset group.

The kernels are serial and release the GIL: the CPU launcher runs chunks on
one worker thread per core (``_cpu.run_chunks``), each with single-threaded
BLAS, so kernels and GEMMs never compete for cores.

Offsets are (N, 2*G*K, Ho, Wo) with (dy, dx) interleaved per kernel point;
masks (N, G*K, Ho, Wo) are ignored unless ``use_mask``. The undeformed grid
arrives as ``y_base[ho, i] = ho*sh - ph + i*dh`` (Ho, kh) and ``x_base[wo, j]``
(Wo, kw) in the input dtype, so a sample position is formed in the input
precision, as torchvision forms it; ``height`` and ``width`` are floats of that
dtype too (they are only compared with positions).
"""

import numpy as np
from numba import njit

from .device import bilinear_coordinate_grads, bilinear_value, bilinear_weights, deform_tap

# NaN and infinities keep their IEEE meaning, which the boundary rules rely
# on. No "reassoc": with it LLVM distributes the mask over the corner sums
# (``m * (a + b)`` into ``m*a + m*b``, hoisting ``m * w``), which overflows
# where torchvision's ``mask * sample`` does not (mask 1e38 over corners +10
# and -10 gave inf instead of 0).
_FASTMATH = {"contract", "nsz", "arcp"}


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
def _channel_sum(terms, count):
    """Sum of ``terms[:count]`` in float64, reassociated so that it vectorises.

    A function of its own, never inlined into the kernels: its additions carry
    "reassoc", the kernels' products do not, so the compiler cannot factor the
    mask back out of the per-channel terms (which torchvision multiplies
    term by term)."""
    acc = 0.0
    for i in range(count):
        acc += terms[i]
    return acc


@njit(inline="always", cache=True, nogil=True)
def _sample(offset, mask, use_mask, n, g, k, ho, wo, height, width, row_stride, y_base, x_base,
            typed):
    """Cell, fraction, corner weights and mask value of one sample.

    ``typed`` is a scratch array of the input dtype: values stored there come
    back in that dtype, which keeps the channel loops in float32 for float32
    inputs (the per-sample maths itself runs in float64). The weights are
    unmasked: the mask multiplies the finished sample, as torchvision does.
    """
    kw = x_base.shape[1]
    n_k = y_base.shape[1] * kw
    ki = k // kw
    ch = 2 * (g * n_k + k)
    y = y_base[ho, ki] + offset[n, ch, ho, wo]
    x = x_base[wo, k - ki * kw] + offset[n, ch + 1, ho, wo]
    q, ly, lx, inside = deform_tap(y, x, height, width, row_stride, 1.0)
    w00, w01, w10, w11 = bilinear_weights(ly, lx, 1.0)
    m = mask[n, g * n_k + k, ho, wo] if use_mask else 1.0
    typed[0] = w00
    typed[1] = w01
    typed[2] = w10
    typed[3] = w11
    typed[4] = ly
    typed[5] = lx
    typed[6] = m
    typed[7] = 1.0
    return q, inside


@njit(inline="always", cache=True, nogil=True)
def _run(g, gw, k, per_group, per_wgroup, n_k):
    """The channels ``lo:hi`` shared by offset group ``g`` and weight group
    ``gw``, and where their column entries for kernel point ``k`` start
    (``(gw*K + k)*Cg + (lo - gw*Cg)``). Loops then index from 0, which Numba
    can vectorise (a possibly negative index costs a wraparound check)."""
    lo = max(g * per_group, gw * per_wgroup)
    hi = min((g + 1) * per_group, (gw + 1) * per_wgroup)
    return lo, hi, (gw * (n_k - 1) + k) * per_wgroup + lo


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def deform_im2col(inp, height, width, row_stride, offset, mask, use_mask, n0, r0, y_base, x_base,
                  weight_groups, cols):
    """Fill pixels-first ``cols`` (nb, P, C*K) with bilinear samples times
    their mask (``m * sample``; an outside sample reads the all-zero cell at
    ``q = 0``, so it is ``m * 0``)."""
    n_k = y_base.shape[1] * x_base.shape[1]
    channels = inp.shape[2]
    groups = offset.shape[1] // (2 * n_k)
    per_group = channels // groups
    per_wgroup = channels // weight_groups
    out_w = offset.shape[3]
    nb, npix, _ = cols.shape
    rs = row_stride
    typed = np.empty(8, cols.dtype)
    for b in range(nb):
        n = n0 + b
        for p in range(npix):
            r = p // out_w
            wo = p - r * out_w
            row = cols[b, p]
            for g in range(groups):
                for k in range(n_k):
                    q, inside = _sample(offset, mask, use_mask, n, g, k, r0 + r, wo, height,
                                        width, rs, y_base, x_base, typed)
                    w00, w01, w10, w11 = typed[0], typed[1], typed[2], typed[3]
                    m = typed[6]
                    for gw in range(g * per_group // per_wgroup,
                                    ((g + 1) * per_group - 1) // per_wgroup + 1):
                        lo, hi, dst = _run(g, gw, k, per_group, per_wgroup, n_k)
                        out = row[dst:dst + hi - lo]
                        v00, v01 = inp[n, q, lo:hi], inp[n, q + 1, lo:hi]
                        v10, v11 = inp[n, q + rs, lo:hi], inp[n, q + rs + 1, lo:hi]
                        for i in range(hi - lo):
                            out[i] = m * (w00 * v00[i] + w01 * v01[i] + w10 * v10[i]
                                          + w11 * v11[i])


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def deform_backward(grad_cols, inp, height, width, row_stride, offset, mask, use_mask, n0, r0,
                    y_base, x_base, weight_groups, want_cols, want_input, want_offset, want_mask,
                    cols, grad_inp, grad_offset, grad_mask):
    """Everything the backward needs from one pass over the chunk's samples.

    Each sample's cell and weights are computed once, and its four corner
    vectors read once, for up to four results (each skipped unless wanted):

    * ``cols``: the columns again, as ``deform_im2col`` writes them (for the
      weight gradient);
    * ``grad_inp``: ``(mask * weight) * grad_cols`` scatter-added onto the
      corners, the exact adjoint of ``deform_im2col``, into the padded
      channels-last gradient;
    * ``grad_offset``: per sample, the sum over the channels of its offset
      group of ``(mask * d sample / dy) * grad_cols`` (and dx), the derivative
      taken in the floor cell (torchvision's rule and order,
      ``sampling.bilinear_coordinate_grads``);
    * ``grad_mask``: the sum of ``grad_cols * sample``.

    Outside samples get exactly 0 offset and mask gradients and scatter
    nothing. Offset and mask sums are kept in float64; everything runs in a
    fixed order, so the results do not depend on scheduling.
    """
    n_k = y_base.shape[1] * x_base.shape[1]
    channels = inp.shape[2]
    groups = offset.shape[1] // (2 * n_k)
    per_group = channels // groups
    per_wgroup = channels // weight_groups
    out_w = offset.shape[3]
    nb, npix, _ = grad_cols.shape
    rs = row_stride
    typed = np.empty(8, grad_cols.dtype)
    # per-channel terms of the offset and mask sums, formed in the channel
    # loop with the mask in each term (torchvision's order), then summed by
    # ``_channel_sum``
    terms = np.empty((3, per_group), grad_cols.dtype)
    t_dy, t_dx, t_v = terms[0], terms[1], terms[2]
    want_grads = want_input or want_offset or want_mask
    for b in range(nb):
        n = n0 + b
        for p in range(npix):
            r = p // out_w
            ho = r0 + r
            wo = p - r * out_w
            g_row = grad_cols[b, p]
            c_row = cols[b, p] if want_cols else g_row
            for g in range(groups):
                for k in range(n_k):
                    q, inside = _sample(offset, mask, use_mask, n, g, k, ho, wo, height, width,
                                        rs, y_base, x_base, typed)
                    w00, w01, w10, w11 = typed[0], typed[1], typed[2], typed[3]
                    ly, lx, m, one = typed[4], typed[5], typed[6], typed[7]
                    mw00, mw01, mw10, mw11 = m * w00, m * w01, m * w10, m * w11
                    scatter = want_input and inside
                    acc_dy = 0.0
                    acc_dx = 0.0
                    acc_v = 0.0
                    for gw in range(g * per_group // per_wgroup,
                                    ((g + 1) * per_group - 1) // per_wgroup + 1):
                        lo, hi, dst = _run(g, gw, k, per_group, per_wgroup, n_k)
                        v00, v01 = inp[n, q, lo:hi], inp[n, q + 1, lo:hi]
                        v10, v11 = inp[n, q + rs, lo:hi], inp[n, q + rs + 1, lo:hi]
                        out = c_row[dst:dst + hi - lo]
                        gcol = g_row[dst:dst + hi - lo]
                        g00, g01 = grad_inp[n, q, lo:hi], grad_inp[n, q + 1, lo:hi]
                        g10, g11 = grad_inp[n, q + rs, lo:hi], grad_inp[n, q + rs + 1, lo:hi]
                        for i in range(hi - lo):
                            a, bq, cq, d = v00[i], v01[i], v10[i], v11[i]
                            if want_cols:
                                out[i] = m * (w00 * a + w01 * bq + w10 * cq + w11 * d)
                            if want_grads and inside:
                                gv = gcol[i]
                                if scatter:
                                    g00[i] += mw00 * gv
                                    g01[i] += mw01 * gv
                                    g10[i] += mw10 * gv
                                    g11[i] += mw11 * gv
                                if want_offset:
                                    dy, dx = bilinear_coordinate_grads(a, bq, cq, d, ly, lx, one)
                                    t_dy[i] = (m * dy) * gv
                                    t_dx[i] = (m * dx) * gv
                                if want_mask:
                                    t_v[i] = gv * bilinear_value(a, bq, cq, d, ly, lx, one)
                        if inside and want_offset:
                            acc_dy += _channel_sum(t_dy, hi - lo)
                            acc_dx += _channel_sum(t_dx, hi - lo)
                        if inside and want_mask:
                            acc_v += _channel_sum(t_v, hi - lo)
                    if want_offset:
                        ch = 2 * (g * n_k + k)
                        grad_offset[n, ch, ho, wo] = acc_dy if inside else 0.0
                        grad_offset[n, ch + 1, ho, wo] = acc_dx if inside else 0.0
                    if want_mask:
                        grad_mask[n, g * n_k + k, ho, wo] = acc_v if inside else 0.0

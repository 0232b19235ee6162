"""Deformable im2col, its input adjoint, and the offset/mask gradient on CPU.

Every kernel walks the chunk in tiles of output pixels: the sampling position,
cell and bilinear weights of a tile are computed once per (image, offset group,
kernel point) and reused for every input channel of that offset group.

Planes are read from (and input gradients written to) zero-padded copies laid
out as ``kernels.sampling`` describes: ``(N, C, (H + 3) * (W + 3))``, with
``row_stride = W + 3``. ``height`` and ``width`` arrive as floats of the input
dtype: they are only compared with sample positions.
Offsets are (N, 2*G*K, Ho, Wo) with (dy, dx) interleaved per kernel point;
masks are (N, G*K, Ho, Wo) and are ignored unless ``use_mask``. The undeformed
sampling grid arrives as ``y_base[ho, i] = ho*sh - ph + i*dh`` (Ho, kh) and
``x_base[wo, j]`` (Wo, kw) in the input dtype, so a sample position is formed
in the input precision, as torchvision forms it (see ``sampling_bases``).
"""

import numpy as np
from numba import njit, prange

from .device import bilinear_coordinate_grads, bilinear_value, bilinear_weights, deform_tap


@njit(inline="always", cache=True, nogil=True)
def _tile_taps(offset, n, g, k, p0, pn, r0, out_w, height, width, row_stride, kernel_w, y_base,
               x_base, base, ly, lx, inside):
    """Sampling cell of pixels p0 .. p0+pn of the chunk for kernel point k of group g."""
    ki = k // kernel_w
    kj = k - ki * kernel_w
    ch = 2 * (g * y_base.shape[1] * kernel_w + k)
    for t in range(pn):
        p = p0 + t
        r = p // out_w
        wo = p - r * out_w
        ho = r0 + r
        y = y_base[ho, ki] + offset[n, ch, ho, wo]
        x = x_base[wo, kj] + offset[n, ch + 1, ho, wo]
        base[t], ly[t], lx[t], inside[t] = deform_tap(y, x, height, width, row_stride, 1.0)


@njit(parallel=True, cache=True, nogil=True)
def deform_im2col(inp_pad, height, width, row_stride, offset, mask, use_mask, n0, r0, y_base, x_base,
                  channel_blocks, tile, cols):
    """Fill ``cols`` (nb, C*K, rows*Wo) with (masked) bilinear samples."""
    n_k = y_base.shape[1] * x_base.shape[1]
    channels = inp_pad.shape[1]
    groups = offset.shape[1] // (2 * n_k)
    per_group = channels // groups
    block = (per_group + channel_blocks - 1) // channel_blocks
    out_w = offset.shape[3]
    nb, _, npix = cols.shape
    rs = row_stride
    for item in prange(nb * groups * channel_blocks):
        b = item // (groups * channel_blocks)
        g = (item // channel_blocks) % groups
        c_lo = g * per_group + (item % channel_blocks) * block
        c_hi = min(c_lo + block, (g + 1) * per_group)
        n = n0 + b
        base = np.empty(tile, np.int64)
        ly = np.empty(tile, np.float64)
        lx = np.empty(tile, np.float64)
        inside = np.empty(tile, np.bool_)
        w00 = np.empty(tile, cols.dtype)
        w01 = np.empty(tile, cols.dtype)
        w10 = np.empty(tile, cols.dtype)
        w11 = np.empty(tile, cols.dtype)
        for k in range(n_k):
            for p0 in range(0, npix, tile):
                pn = min(tile, npix - p0)
                _tile_taps(offset, n, g, k, p0, pn, r0, out_w, height, width, rs, x_base.shape[1],
                           y_base, x_base, base, ly, lx, inside)
                for t in range(pn):
                    a, bb, c, d = bilinear_weights(ly[t], lx[t], 1.0)
                    if use_mask:
                        p = p0 + t
                        r = p // out_w
                        m = mask[n, g * n_k + k, r0 + r, p - r * out_w]
                        a, bb, c, d = a * m, bb * m, c * m, d * m
                    if not inside[t]:
                        # zero weights on the all-zero cell at base 0; a NaN
                        # mask still propagates, as torchvision's m * 0 does
                        a, bb, c, d = a * 0.0, bb * 0.0, c * 0.0, d * 0.0
                    w00[t], w01[t], w10[t], w11[t] = a, bb, c, d
                for c in range(c_lo, c_hi):
                    plane = inp_pad[n, c]
                    row = cols[b, c * n_k + k]
                    for t in range(pn):
                        q = base[t]
                        row[p0 + t] = (w00[t] * plane[q] + w01[t] * plane[q + 1]
                                       + w10[t] * plane[q + rs] + w11[t] * plane[q + rs + 1])


@njit(parallel=True, cache=True, nogil=True)
def deform_col2im(grad_cols, height, width, row_stride, offset, mask, use_mask, n0, r0, y_base, x_base,
                  channel_blocks, tile, grad_pad):
    """Scatter-add ``grad_cols`` into the padded input gradient (the exact
    adjoint of ``deform_im2col``). Each work item owns whole channel planes of
    one image, so no atomics are needed and the result is deterministic."""
    n_k = y_base.shape[1] * x_base.shape[1]
    channels = grad_pad.shape[1]
    groups = offset.shape[1] // (2 * n_k)
    per_group = channels // groups
    block = (per_group + channel_blocks - 1) // channel_blocks
    out_w = offset.shape[3]
    nb, _, npix = grad_cols.shape
    rs = row_stride
    for item in prange(nb * groups * channel_blocks):
        b = item // (groups * channel_blocks)
        g = (item // channel_blocks) % groups
        c_lo = g * per_group + (item % channel_blocks) * block
        c_hi = min(c_lo + block, (g + 1) * per_group)
        n = n0 + b
        base = np.empty(tile, np.int64)
        ly = np.empty(tile, np.float64)
        lx = np.empty(tile, np.float64)
        inside = np.empty(tile, np.bool_)
        w00 = np.empty(tile, grad_cols.dtype)
        w01 = np.empty(tile, grad_cols.dtype)
        w10 = np.empty(tile, grad_cols.dtype)
        w11 = np.empty(tile, grad_cols.dtype)
        for k in range(n_k):
            for p0 in range(0, npix, tile):
                pn = min(tile, npix - p0)
                _tile_taps(offset, n, g, k, p0, pn, r0, out_w, height, width, rs, x_base.shape[1],
                           y_base, x_base, base, ly, lx, inside)
                for t in range(pn):
                    a, bb, c, d = bilinear_weights(ly[t], lx[t], 1.0)
                    if use_mask:
                        p = p0 + t
                        r = p // out_w
                        m = mask[n, g * n_k + k, r0 + r, p - r * out_w]
                        a, bb, c, d = a * m, bb * m, c * m, d * m
                    w00[t], w01[t], w10[t], w11[t] = a, bb, c, d
                for c in range(c_lo, c_hi):
                    plane = grad_pad[n, c]
                    row = grad_cols[b, c * n_k + k]
                    for t in range(pn):
                        if inside[t]:
                            gv = row[p0 + t]
                            q = base[t]
                            plane[q] += w00[t] * gv
                            plane[q + 1] += w01[t] * gv
                            plane[q + rs] += w10[t] * gv
                            plane[q + rs + 1] += w11[t] * gv


@njit(parallel=True, cache=True, nogil=True)
def deform_coordinate_grads(grad_cols, inp_pad, height, width, row_stride, offset, mask, use_mask, n0, r0,
                            y_base, x_base, tile, want_offset, want_mask,
                            grad_offset, grad_mask):
    """Offset and mask gradients for the chunk.

    For each sample, sums over the channels of its offset group the column
    gradient times the derivative of the bilinear sample (torchvision's
    floor-cell rule, ``sampling.bilinear_coordinate_grads``) for the offset, and
    times the unmasked sample for the mask. Outside samples get exactly 0.
    Parallel over (image, offset group, kernel point): each work item owns its
    output channels, so there are no write conflicts. Sums are kept in float64.
    """
    n_k = y_base.shape[1] * x_base.shape[1]
    channels = inp_pad.shape[1]
    groups = offset.shape[1] // (2 * n_k)
    per_group = channels // groups
    out_w = offset.shape[3]
    nb, _, npix = grad_cols.shape
    rs = row_stride
    for item in prange(nb * groups * n_k):
        b = item // (groups * n_k)
        g = (item // n_k) % groups
        k = item % n_k
        n = n0 + b
        base = np.empty(tile, np.int64)
        ly = np.empty(tile, np.float64)
        lx = np.empty(tile, np.float64)
        inside = np.empty(tile, np.bool_)
        acc_dy = np.empty(tile, np.float64)
        acc_dx = np.empty(tile, np.float64)
        acc_v = np.empty(tile, np.float64)
        for p0 in range(0, npix, tile):
            pn = min(tile, npix - p0)
            _tile_taps(offset, n, g, k, p0, pn, r0, out_w, height, width, rs, x_base.shape[1],
                       y_base, x_base, base, ly, lx, inside)
            acc_dy[:pn] = 0.0
            acc_dx[:pn] = 0.0
            acc_v[:pn] = 0.0
            for c in range(g * per_group, (g + 1) * per_group):
                plane = inp_pad[n, c]
                row = grad_cols[b, c * n_k + k]
                for t in range(pn):
                    q = base[t]
                    v00 = plane[q]
                    v01 = plane[q + 1]
                    v10 = plane[q + rs]
                    v11 = plane[q + rs + 1]
                    gv = row[p0 + t]
                    if want_offset:
                        dy, dx = bilinear_coordinate_grads(v00, v01, v10, v11, ly[t], lx[t], 1.0)
                        acc_dy[t] += gv * dy
                        acc_dx[t] += gv * dx
                    if want_mask:
                        acc_v[t] += gv * bilinear_value(v00, v01, v10, v11, ly[t], lx[t], 1.0)
            for t in range(pn):
                p = p0 + t
                r = p // out_w
                ho = r0 + r
                wo = p - r * out_w
                if want_offset:
                    gy = 0.0
                    gx = 0.0
                    if inside[t]:
                        m = mask[n, g * n_k + k, ho, wo] if use_mask else 1.0
                        gy = m * acc_dy[t]
                        gx = m * acc_dx[t]
                    ch = 2 * (g * n_k + k)
                    grad_offset[n, ch, ho, wo] = gy
                    grad_offset[n, ch + 1, ho, wo] = gx
                if want_mask:
                    grad_mask[n, g * n_k + k, ho, wo] = acc_v[t] if inside[t] else 0.0

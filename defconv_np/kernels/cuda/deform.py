"""Deformable im2col, its input adjoint, and the offset/mask gradient on CUDA.

Same layouts as ``kernels.cpu.deform`` (padded planes, interleaved offsets,
``y_base``/``x_base`` in the input dtype). ``one`` is 1 in the input dtype, so
float32 kernels stay in float32. One thread handles one sample (image, offset
group, kernel point, output pixel) for one block of ``block`` channels of its
offset group, reusing the cell and weights across the block; the pixel index is
fastest, so column reads and writes are coalesced. Splitting the channels keeps
enough threads in flight when there are few samples (a small batch or many
channels per group: a thread per sample alone left most of an H200 idle).
Flat indices are int64 grid-stride loops.
"""

from numba import cuda

from .device import bilinear_coordinate_grads, bilinear_value, bilinear_weights, deform_tap


@cuda.jit(device=True, inline="always")
def _blocked_index(idx, npix, n_k, blocks, groups):
    """(image in chunk, group, channel block, kernel point, pixel) of a flat
    index, pixel fastest."""
    p = idx % npix
    k = (idx // npix) % n_k
    j = (idx // (npix * n_k)) % blocks
    g = (idx // (npix * n_k * blocks)) % groups
    b = idx // (npix * n_k * blocks * groups)
    return b, g, j, k, p


@cuda.jit(device=True, inline="always")
def _sample(offset, mask, use_mask, n, g, k, p, r0, height, width, row_stride, y_base, x_base,
            one):
    """Everything about one sample: its cell ``q``, whether it is inside the
    window, its fractions, its mask value ``m``, the (unmasked) corner
    weights, and its output pixel. The mask multiplies the finished sample,
    as torchvision does; an outside sample reads the all-zero cell at q = 0."""
    kw = x_base.shape[1]
    n_k = y_base.shape[1] * kw
    out_w = offset.shape[3]
    r = p // out_w
    wo = p - r * out_w
    ho = r0 + r
    ki = k // kw
    ch = 2 * (g * n_k + k)
    y = y_base[ho, ki] + offset[n, ch, ho, wo]
    x = x_base[wo, k - ki * kw] + offset[n, ch + 1, ho, wo]
    q, ly, lx, inside = deform_tap(y, x, height, width, row_stride, one)
    w00, w01, w10, w11 = bilinear_weights(ly, lx, one)
    m = mask[n, g * n_k + k, ho, wo] if use_mask else one
    return q, inside, ly, lx, m, w00, w01, w10, w11, ho, wo


@cuda.jit
def deform_im2col(inp_pad, height, width, row_stride, offset, mask, use_mask, n0, r0, y_base, x_base,
                  one, block, total, cols):
    n_k = y_base.shape[1] * x_base.shape[1]
    groups = offset.shape[1] // (2 * n_k)
    per_group = inp_pad.shape[1] // groups
    blocks = (per_group + block - 1) // block
    npix = cols.shape[2]
    rs = row_stride
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        b, g, j, k, p = _blocked_index(idx, npix, n_k, blocks, groups)
        n = n0 + b
        q, inside, ly, lx, m, w00, w01, w10, w11, ho, wo = _sample(
            offset, mask, use_mask, n, g, k, p, r0, height, width, rs, y_base, x_base, one)
        c0 = g * per_group + j * block
        for c in range(c0, min(c0 + block, (g + 1) * per_group)):
            cols[b, c * n_k + k, p] = m * (w00 * inp_pad[n, c, q] + w01 * inp_pad[n, c, q + 1]
                                           + w10 * inp_pad[n, c, q + rs]
                                           + w11 * inp_pad[n, c, q + rs + 1])


@cuda.jit
def deform_col2im_atomic(grad_cols, height, width, row_stride, offset, mask, use_mask, n0, r0,
                         y_base, x_base, one, block, total, grad_pad):
    """Input gradient by atomic scatter-add: fast, but the float summation order
    (and so the last bits) depends on scheduling."""
    n_k = y_base.shape[1] * x_base.shape[1]
    groups = offset.shape[1] // (2 * n_k)
    per_group = grad_pad.shape[1] // groups
    blocks = (per_group + block - 1) // block
    npix = grad_cols.shape[2]
    rs = row_stride
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        b, g, j, k, p = _blocked_index(idx, npix, n_k, blocks, groups)
        n = n0 + b
        q, inside, ly, lx, m, w00, w01, w10, w11, ho, wo = _sample(
            offset, mask, use_mask, n, g, k, p, r0, height, width, rs, y_base, x_base, one)
        if not inside:
            continue
        # torchvision's order: (mask * weight) * column gradient
        w00, w01, w10, w11 = m * w00, m * w01, m * w10, m * w11
        c0 = g * per_group + j * block
        for c in range(c0, min(c0 + block, (g + 1) * per_group)):
            gv = grad_cols[b, c * n_k + k, p]
            cuda.atomic.add(grad_pad, (n, c, q), w00 * gv)
            cuda.atomic.add(grad_pad, (n, c, q + 1), w01 * gv)
            cuda.atomic.add(grad_pad, (n, c, q + rs), w10 * gv)
            cuda.atomic.add(grad_pad, (n, c, q + rs + 1), w11 * gv)


@cuda.jit
def deform_col2im_ordered(grad_cols, height, width, row_stride, offset, mask, use_mask, n0, r0,
                          y_base, x_base, one, total, grad_pad):
    """Deterministic input gradient: one thread owns one (image, channel) plane
    and adds its samples in a fixed order (kernel point, then pixel)."""
    n_k = y_base.shape[1] * x_base.shape[1]
    groups = offset.shape[1] // (2 * n_k)
    channels = grad_pad.shape[1]
    per_group = channels // groups
    npix = grad_cols.shape[2]
    rs = row_stride
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        c = idx % channels
        b = idx // channels
        n = n0 + b
        g = c // per_group
        for k in range(n_k):
            for p in range(npix):
                q, inside, ly, lx, m, w00, w01, w10, w11, ho, wo = _sample(
                    offset, mask, use_mask, n, g, k, p, r0, height, width, rs, y_base, x_base,
                    one)
                if not inside:
                    continue
                gv = grad_cols[b, c * n_k + k, p]
                grad_pad[n, c, q] += (m * w00) * gv
                grad_pad[n, c, q + 1] += (m * w01) * gv
                grad_pad[n, c, q + rs] += (m * w10) * gv
                grad_pad[n, c, q + rs + 1] += (m * w11) * gv


@cuda.jit
def deform_coordinate_grads(grad_cols, inp_pad, height, width, row_stride, offset, mask,
                            use_mask, n0, r0, y_base, x_base, one, block, total, want_offset,
                            want_mask, grad_offset, grad_mask):
    """Offset and mask gradients (torchvision's floor-cell rule); outside
    samples get 0. Each thread sums one channel block of one sample. With one
    block per group (``block >= C/G``) it writes the sums, in a fixed order;
    with several, the blocks' sums are added atomically into the zeroed
    gradients (order, and so the last bits, then depend on scheduling)."""
    n_k = y_base.shape[1] * x_base.shape[1]
    groups = offset.shape[1] // (2 * n_k)
    per_group = inp_pad.shape[1] // groups
    blocks = (per_group + block - 1) // block
    npix = grad_cols.shape[2]
    rs = row_stride
    zero = one - one
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        b, g, j, k, p = _blocked_index(idx, npix, n_k, blocks, groups)
        n = n0 + b
        q, inside, ly, lx, m, w00, w01, w10, w11, ho, wo = _sample(
            offset, mask, use_mask, n, g, k, p, r0, height, width, rs, y_base, x_base, one)
        acc_dy = zero
        acc_dx = zero
        acc_v = zero
        if inside:
            c0 = g * per_group + j * block
            for c in range(c0, min(c0 + block, (g + 1) * per_group)):
                v00 = inp_pad[n, c, q]
                v01 = inp_pad[n, c, q + 1]
                v10 = inp_pad[n, c, q + rs]
                v11 = inp_pad[n, c, q + rs + 1]
                gv = grad_cols[b, c * n_k + k, p]
                if want_offset:
                    # torchvision's order: (mask * coordinate weight) * column gradient
                    dy, dx = bilinear_coordinate_grads(v00, v01, v10, v11, ly, lx, one)
                    acc_dy += (m * dy) * gv
                    acc_dx += (m * dx) * gv
                if want_mask:
                    acc_v += gv * bilinear_value(v00, v01, v10, v11, ly, lx, one)
        ch = 2 * (g * n_k + k)
        if blocks == 1:
            if want_offset:
                grad_offset[n, ch, ho, wo] = acc_dy
                grad_offset[n, ch + 1, ho, wo] = acc_dx
            if want_mask:
                grad_mask[n, g * n_k + k, ho, wo] = acc_v
        elif inside:
            if want_offset:
                cuda.atomic.add(grad_offset, (n, ch, ho, wo), acc_dy)
                cuda.atomic.add(grad_offset, (n, ch + 1, ho, wo), acc_dx)
            if want_mask:
                cuda.atomic.add(grad_mask, (n, g * n_k + k, ho, wo), acc_v)

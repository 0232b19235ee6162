"""Active convolution's four-tap im2col and its adjoints on CUDA.

Same column layout and stencil as ``kernels.cpu.active`` (channels-first
columns, the input zero-padded so that every tap is inside, ``taps``/``fracs``
/``present`` per kernel point ``gk = g*K + k``). Every kernel is a grid-stride
loop over an int64 flat index with the pixel fastest; ``one`` is 1 in the
input dtype, so float32 kernels do float32 arithmetic. Nothing is added
atomically: the input gradient is a gather (one thread per padded input
pixel) and the offset gradient is written as per-thread partial sums that the
launcher adds, so results never depend on scheduling.
"""

from numba import cuda

from .device import bilinear_coordinate_grads, bilinear_value


@cuda.jit
def active_im2col(inp_pad, n0, r0, out_w, n_k, sh, sw, taps, fracs, present, per_group, one,
                  total, cols):
    """cols[b, c*K + k, p] = the four-tap blend of kernel point k at pixel p."""
    npix = cols.shape[2]
    rows_k = cols.shape[1]
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for idx in range(start, total, step):
        p = idx % npix
        row = (idx // npix) % rows_k
        b = idx // (npix * rows_k)
        c = row // n_k
        gk = (c // per_group) * n_k + row - c * n_k
        value = one - one
        if present[gk]:
            r = p // out_w
            y = (r0 + r) * sh + taps[gk, 0]
            x = (p - r * out_w) * sw + taps[gk, 1]
            value = bilinear_value(inp_pad[n0 + b, c, y, x], inp_pad[n0 + b, c, y, x + 1],
                                   inp_pad[n0 + b, c, y + 1, x], inp_pad[n0 + b, c, y + 1, x + 1],
                                   fracs[gk, 0], fracs[gk, 1], one)
        cols[b, row, p] = value


@cuda.jit
def active_col2im(grad_cols, n0, r0, r1, out_w, n_k, sh, sw, taps, fracs, present, per_group,
                  one, total, grad_pad):
    """grad_pad[n0 + b, c, yy, xx] += every tap weight times the column
    gradient entry that read that padded pixel, gathered in a fixed order."""
    hp = grad_pad.shape[2]
    wp = grad_pad.shape[3]
    channels = grad_pad.shape[1]
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for idx in range(start, total, step):
        xx = idx % wp
        yy = (idx // wp) % hp
        c = (idx // (wp * hp)) % channels
        b = idx // (wp * hp * channels)
        g = c // per_group
        acc = grad_pad[n0 + b, c, yy, xx]
        for k in range(n_k):
            gk = g * n_k + k
            if not present[gk]:
                continue
            ly = fracs[gk, 0]
            lx = fracs[gk, 1]
            row = c * n_k + k
            for ty in range(2):
                t = yy - ty - taps[gk, 0]
                if t < 0 or t % sh != 0:
                    continue
                ho = t // sh
                if ho < r0 or ho >= r1:
                    continue
                wy = ly if ty == 1 else one - ly
                for tx in range(2):
                    u = xx - tx - taps[gk, 1]
                    if u < 0 or u % sw != 0:
                        continue
                    wo = u // sw
                    if wo >= out_w:
                        continue
                    wx = lx if tx == 1 else one - lx
                    acc += (wy * wx) * grad_cols[b, row, (ho - r0) * out_w + wo]
        grad_pad[n0 + b, c, yy, xx] = acc


@cuda.jit
def active_offset_partials(grad_cols, inp_pad, n0, r0, out_w, n_k, sh, sw, taps, fracs, present,
                           per_group, one, total, partials):
    """partials[b, c*K + k, lane, :] = sum over the chunk's pixels
    ``p = lane, lane + lanes, ...`` of grad_cols times the floor-cell
    derivative of the sample in y and x (0 for absent kernel points).

    Neighbouring threads take neighbouring lanes, so their reads of a column
    row are coalesced; the launcher sums lanes, images and channels.
    """
    npix = grad_cols.shape[2]
    rows_k = grad_cols.shape[1]
    lanes = partials.shape[2]
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for idx in range(start, total, step):
        lane = idx % lanes
        row = (idx // lanes) % rows_k
        b = idx // (lanes * rows_k)
        c = row // n_k
        gk = (c // per_group) * n_k + row - c * n_k
        sum_y = one - one
        sum_x = one - one
        if present[gk]:
            ly = fracs[gk, 0]
            lx = fracs[gk, 1]
            for p in range(lane, npix, lanes):
                r = p // out_w
                y = (r0 + r) * sh + taps[gk, 0]
                x = (p - r * out_w) * sw + taps[gk, 1]
                dy, dx = bilinear_coordinate_grads(
                    inp_pad[n0 + b, c, y, x], inp_pad[n0 + b, c, y, x + 1],
                    inp_pad[n0 + b, c, y + 1, x], inp_pad[n0 + b, c, y + 1, x + 1], ly, lx, one)
                g = grad_cols[b, row, p]
                sum_y += dy * g
                sum_x += dx * g
        partials[b, row, lane, 0] = sum_y
        partials[b, row, lane, 1] = sum_x

"""Dense im2col and a gather-based col2im for conv2d on CUDA.

Columns channels-first, as torchvision lays them out
(``_columns.ChannelsFirst``). Every kernel is a grid-stride loop over an int64
flat index (sizes can pass 2**31), with the pixel index fastest so that
neighbouring threads touch neighbouring columns.
"""

from numba import cuda


@cuda.jit
def im2col(inp_pad, n0, r0, out_w, kh, kw, sh, sw, dh, dw, total, cols):
    """cols[b, c*K + k, p] = inp_pad[n0 + b, c, ho*sh + i*dh, wo*sw + j*dw]."""
    npix = cols.shape[2]
    n_k = kh * kw
    rows_k = cols.shape[1]
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for idx in range(start, total, step):
        p = idx % npix
        row = (idx // npix) % rows_k
        b = idx // (npix * rows_k)
        c = row // n_k
        k = row - c * n_k
        i = k // kw
        j = k - i * kw
        r = p // out_w
        wo = p - r * out_w
        cols[b, row, p] = inp_pad[n0 + b, c, (r0 + r) * sh + i * dh, wo * sw + j * dw]


@cuda.jit
def col2im(grad_cols, n0, r0, r1, out_w, kh, kw, sh, sw, dh, dw, total, grad_pad):
    """grad_pad[n0 + b, c, yy, xx] += every column entry that read that pixel.

    One thread per padded input pixel gathers its contributions in a fixed
    order: no atomics, so the result never depends on scheduling.
    """
    hp = grad_pad.shape[2]
    wp = grad_pad.shape[3]
    channels = grad_pad.shape[1]
    n_k = kh * kw
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for idx in range(start, total, step):
        xx = idx % wp
        yy = (idx // wp) % hp
        c = (idx // (wp * hp)) % channels
        b = idx // (wp * hp * channels)
        acc = grad_pad[n0 + b, c, yy, xx]
        for i in range(kh):
            t = yy - i * dh
            if t < 0 or t % sh != 0:
                continue
            ho = t // sh
            if ho < r0 or ho >= r1:
                continue
            for j in range(kw):
                u = xx - j * dw
                if u < 0 or u % sw != 0:
                    continue
                wo = u // sw
                if wo >= out_w:
                    continue
                acc += grad_cols[b, c * n_k + i * kw + j, (ho - r0) * out_w + wo]
        grad_pad[n0 + b, c, yy, xx] = acc

"""Dense im2col / col2im for conv2d on CPU, channels-last and pixels-first.

The input arrives as a channels-last copy ``(N, Hp, Wp, C)`` zero-padded by
the convolution's own padding, so every tap of every output pixel is in
bounds, the loops have no branches, and each tap is a contiguous channel
vector.

The kernels are serial and release the GIL: the CPU launcher runs chunks on
one worker thread per core (see ``_cpu.run_chunks``), each with single-threaded
BLAS, so kernels and GEMMs never compete for cores.

Column layout (``_columns.PixelsFirst``, shared with the deformable kernels):
``cols[b, p, (gw*K + k)*Cg + cg]`` for image ``n0 + b``, chunk pixel
``p = (ho - r0) * Wo + wo``, weight group ``gw``, kernel point
``k = i * kw + j`` and channel ``cg`` of that group. The GEMM then has the
pixels as its long, row-major side, which OpenBLAS runs fastest (see
``_columns.PixelsFirst.write_product``).
"""

from numba import njit, uint64


@njit(inline="always", cache=True, nogil=True)
def _tap_copies(image, n0, r0, out_w, kernel, stride, dilation, weight_groups, cols, scatter):
    """The loop nest both kernels share: every tap of every chunk pixel, a
    contiguous channel vector of ``image`` (N, Hp, Wp, C) against its place in
    ``cols`` (nb, rows*Wo, C*K). Copies image -> cols, or with ``scatter``
    (a literal, so each kernel compiles one branch) adds cols onto the image.

    Flat unsigned indices keep the copies free of wraparound checks and
    per-tap slices."""
    kh, kw = kernel
    sh, sw = stride
    dh, dw = dilation
    _, height_p, width_p, channels = image.shape
    n_k = kh * kw
    per_group = channels // weight_groups
    nb, npix, rows_k = cols.shape
    flat_image = image.reshape(-1)
    flat_cols = cols.reshape(-1)
    count = uint64(per_group)
    for b in range(nb):
        n = n0 + b
        for p in range(npix):
            r = p // out_w
            wo = p - r * out_w
            row = b * npix + p
            for i in range(kh):
                y = (r0 + r) * sh + i * dh
                for j in range(kw):
                    at = ((n * height_p + y) * width_p + wo * sw + j * dw) * channels
                    for gw in range(weight_groups):
                        e = uint64(at + gw * per_group)
                        d = uint64(row * rows_k + (gw * n_k + i * kw + j) * per_group)
                        if scatter:
                            for c in range(count):
                                flat_image[e + c] += flat_cols[d + c]
                        else:
                            for c in range(count):
                                flat_cols[d + c] = flat_image[e + c]


@njit(cache=True, nogil=True)
def im2col_channels_last(inp, n0, r0, out_w, kernel, stride, dilation, weight_groups, cols):
    """Fill pixels-first ``cols`` (nb, rows*Wo, C*K) from the channels-last
    padded ``inp`` (N, Hp, Wp, C): ``cols[b, p, (gw*K + k)*Cg + cg]`` is
    channel ``gw*Cg + cg`` of the tap ``k`` of pixel ``p`` (``_columns.PixelsFirst``)."""
    _tap_copies(inp, n0, r0, out_w, kernel, stride, dilation, weight_groups, cols, False)


@njit(cache=True, nogil=True)
def col2im_channels_last(grad_cols, n0, r0, out_w, kernel, stride, dilation, weight_groups,
                         grad_inp):
    """Scatter-add pixels-first ``grad_cols`` (nb, rows*Wo, C*K) into the
    channels-last padded ``grad_inp`` (N, Hp, Wp, C): the adjoint of
    ``im2col_channels_last``. Serial within a chunk, in a fixed order, so the
    sums do not depend on scheduling."""
    _tap_copies(grad_inp, n0, r0, out_w, kernel, stride, dilation, weight_groups, grad_cols,
                True)

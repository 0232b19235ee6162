"""Dense im2col / col2im for conv2d on CPU.

The input arrives zero-padded by the convolution's own padding, so every tap
of every output pixel is in bounds and the loops have no branches.

The kernels are serial and release the GIL: the CPU launcher runs chunks on
one worker thread per core (see ``_cpu.run_chunks``), each with single-threaded
BLAS, so kernels and GEMMs never compete for cores.

Column layout (shared with the deformable kernels and the GEMM driver):
``cols[b, c * K + k, p]`` for image ``n0 + b``, input channel ``c``, kernel
point ``k = i * kw + j`` and chunk pixel ``p = (ho - r0) * Wo + wo``; this is
the row order of ``weight.reshape(O, C/groups * K)``, as in torchvision.
"""

from numba import njit


@njit(cache=True, nogil=True)
def im2col(inp_pad, n0, r0, out_w, kernel, stride, dilation, cols):
    """Fill ``cols`` (nb, C*K, rows*Wo) from ``inp_pad`` (N, C, Hp, Wp)."""
    kh, kw = kernel
    sh, sw = stride
    dh, dw = dilation
    channels = inp_pad.shape[1]
    nb, _, npix = cols.shape
    rows = npix // out_w
    for item in range(nb * channels):
        b = item // channels
        c = item - b * channels
        plane = inp_pad[n0 + b, c]
        for i in range(kh):
            for j in range(kw):
                row = cols[b, c * kh * kw + i * kw + j]
                x0 = j * dw
                for r in range(rows):
                    # slices, not computed indices: Numba checks a signed
                    # index for wraparound, which blocks vectorisation
                    src = plane[(r0 + r) * sh + i * dh, x0:x0 + (out_w - 1) * sw + 1:sw]
                    row[r * out_w:(r + 1) * out_w] = src


@njit(cache=True, nogil=True)
def col2im(grad_cols, n0, r0, out_w, kernel, stride, dilation, grad_pad):
    """Scatter-add ``grad_cols`` (nb, C*K, rows*Wo) into ``grad_pad`` (N, C, Hp, Wp).

    Serial within a chunk, so the scatter does not depend on scheduling.
    """
    kh, kw = kernel
    sh, sw = stride
    dh, dw = dilation
    channels = grad_pad.shape[1]
    nb, _, npix = grad_cols.shape
    rows = npix // out_w
    for item in range(nb * channels):
        b = item // channels
        c = item - b * channels
        plane = grad_pad[n0 + b, c]
        for i in range(kh):
            for j in range(kw):
                row = grad_cols[b, c * kh * kw + i * kw + j]
                x0 = j * dw
                for r in range(rows):
                    dst = plane[(r0 + r) * sh + i * dh, x0:x0 + (out_w - 1) * sw + 1:sw]
                    src = row[r * out_w:(r + 1) * out_w]
                    for wo in range(out_w):
                        dst[wo] += src[wo]

"""Layout conversions between (N, C, H, W) and the zero-padded channels-last
planes of the deformable kernels, ``(N, (H + 3) * (W + 3), C)``.

NumPy's strided transpose-copy moves these at about 1 GB/s; these loops are
several times faster. They are serial over a range of images and release the
GIL, so the launcher spreads images over its worker lanes (a parallel Numba
region would leave its threads spinning into the conv's GEMMs).
"""

from numba import njit

from ..sampling import PAD_AFTER, PAD_BEFORE


@njit(cache=True, nogil=True)
def to_channels_last_padded(inp, n0, n1, out):
    """Copy images ``n0:n1`` of ``inp`` (N, C, H, W) into the interior of
    ``out`` (N, Hp*Wp, C), whose border must already be zero."""
    _, channels, height, width = inp.shape
    row_stride = width + PAD_BEFORE + PAD_AFTER
    for item in range(n0 * height, n1 * height):
        n = item // height
        y = item - n * height
        base = (y + PAD_BEFORE) * row_stride + PAD_BEFORE
        for c in range(channels):
            src = inp[n, c, y]
            for x in range(width):
                out[n, base + x, c] = src[x]


@njit(cache=True, nogil=True)
def from_channels_last_padded(padded, n0, n1, out):
    """Copy the interior of images ``n0:n1`` of ``padded`` (N, Hp*Wp, C) into
    ``out`` (N, C, H, W)."""
    _, channels, height, width = out.shape
    row_stride = width + PAD_BEFORE + PAD_AFTER
    for item in range(n0 * height, n1 * height):
        n = item // height
        y = item - n * height
        base = (y + PAD_BEFORE) * row_stride + PAD_BEFORE
        for c in range(channels):
            dst = out[n, c, y]
            for x in range(width):
                dst[x] = padded[n, base + x, c]


@njit(cache=True, nogil=True)
def store_transposed(prod, out):
    """``out[b, g*Og + o, r, wo] = prod[b, g, r*Wo + wo, o]``: a pixels-first GEMM
    result (nb, groups, P, Og) written into NCHW rows ``out`` (nb, O, rows, Wo),
    which may be a strided view (a chunk of output rows). One output row of
    every channel at a time, so the block read stays in L1; NumPy's strided
    transpose-copy of the same moved about 1 GB/s."""
    nb, groups, _, og = prod.shape
    rows, out_w = out.shape[2], out.shape[3]
    for b in range(nb):
        for g in range(groups):
            for r in range(rows):
                block = prod[b, g, r * out_w:(r + 1) * out_w]
                for o in range(og):
                    dst = out[b, g * og + o, r]
                    for wo in range(out_w):
                        dst[wo] = block[wo, o]

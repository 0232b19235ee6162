"""Layout conversions between (N, C, H, W) and the zero-padded channels-last
planes of the deformable kernels, ``(N, (H + 3) * (W + 3), C)``.

NumPy's strided transpose-copy moves these at about 1 GB/s; these loops read
and write whole rows at a time, parallel over (image, row).
"""

from numba import njit, prange

from ..sampling import PAD_BEFORE


@njit(parallel=True, cache=True, nogil=True)
def to_channels_last_padded(inp, out):
    """Copy ``inp`` (N, C, H, W) into the interior of ``out`` (N, Hp*Wp, C),
    whose border must already be zero."""
    n_img, channels, height, width = inp.shape
    row_stride = width + PAD_BEFORE + 1
    for item in prange(n_img * height):
        n = item // height
        y = item - n * height
        base = (y + PAD_BEFORE) * row_stride + PAD_BEFORE
        for c in range(channels):
            src = inp[n, c, y]
            for x in range(width):
                out[n, base + x, c] = src[x]


@njit(parallel=True, cache=True, nogil=True)
def from_channels_last_padded(padded, out):
    """Copy the interior of ``padded`` (N, Hp*Wp, C) into ``out`` (N, C, H, W)."""
    n_img, channels, height, width = out.shape
    row_stride = width + PAD_BEFORE + 1
    for item in prange(n_img * height):
        n = item // height
        y = item - n * height
        base = (y + PAD_BEFORE) * row_stride + PAD_BEFORE
        for c in range(channels):
            dst = out[n, c, y]
            for x in range(width):
                dst[x] = padded[n, base + x, c]

"""grid_sample on CPU: sampling, its input adjoint and its grid gradient.

The kernels read the input (N, C, H, W) and write the input gradient (same
shape) in place, through a zero-padded scratch plane per work item laid out
as ``kernels.sampling`` describes (``(H + 3) * (W + 3)``, ``row_stride = W +
3``). The grid is flattened to ``(N, P, 2)`` with ``P = Hg * Wg`` and x
(width) first; outputs and output gradients are ``(N, C, P)``. ``y_axis``,
``x_axis`` (``_planes.grid_axis``: size, size - 1, reflection bounds and
window limit, each rounded once from exact integers) and ``one`` arrive as
floats of the grid dtype, so that a sample position is formed in the input
precision, as PyTorch forms it (in float32 this decides, as in PyTorch, which
way a position that is a tie or a kink in exact arithmetic goes).

Work items are (image, channel block, pixel block). Each walks its pixels in
tiles: the cell, weights and derivative factors of a tile are computed once
and reused for every channel of the block. A sample outside the sampling
window points at ``base = 0`` with weights (1, 0, 0, 0), i.e. at zero padding,
so no loop over channels needs a bounds branch.

For each channel (in the bilinear forward, four channels at a time, side by
side in one interleaved plane), a tile copies the band of input rows its
samples touch into the scratch plane (whose border stays zero) before
reading it: the gathers then hit the L1 cache, where reading a rotated band
straight from a large array waited on memory at each new cache line, and no
padded copy of the whole input is made. The input gradient is scattered into
a second scratch plane whose band is stored back to the gradient array and,
for every tile after a work item's first, loaded from it first (the first
tile starts from zero and zeroes the rows it does not touch), so each
gradient value is summed in pixel order whatever the tiling. Large planes,
whose bands a rotated or scattered grid would copy many times over, come
instead as one zero-padded copy of the input (``padded``), read in place,
with the input gradient added to a zero-padded plane that the caller crops.
"""

import numpy as np
from numba import njit, uint64

from ..sampling import PAD_AFTER, PAD_BEFORE, PADDING_BORDER, PADDING_REFLECTION
from .device import (
    bilinear_coordinate_grads,
    bilinear_weights,
    clip_coordinate,
    grid_bilinear_tap,
    grid_nearest_tap,
    grid_unnormalize,
    reflect_coordinate,
    reflect_near,
)
from .simd import LANES, blend4, blend4_pixels


#: Channels the bilinear forward samples per pass over a tile (one vector).
_CHANNELS = LANES

#: The bilinear backward takes channels in groups of ``group`` (an argument:
#: the caller sizes the scratch planes) while at least this many remain; the
#: rest one at a time. Below it the per-pixel loops over a group's channels,
#: vectorised, would run mostly in their scalar remainders.
MIN_GROUP = 8

#: Pixels whose output gradients the grouped backward transposes at a time.
_SUBTILE = 256


@njit(inline="always", cache=True, nogil=True)
def _source_coordinate(coord, axis, padding_mode, align_corners, one):
    """Pixel coordinate of a grid coordinate after the padding mode folded it
    into the image, and d(pixel) / d(coord) (PyTorch's chain of factors).
    ``axis`` is ``_planes.grid_axis``: (size, size - 1, low, span, limit),
    each rounded once from exact integers."""
    size, size_m1, low, span, limit = axis
    pixel, factor = grid_unnormalize(coord, size, size_m1, align_corners, one)
    if padding_mode == PADDING_BORDER:
        pixel, clip_factor = clip_coordinate(pixel, size_m1, one)
        factor *= clip_factor
    elif padding_mode == PADDING_REFLECTION:
        pixel, reflect_factor = reflect_coordinate(pixel, low, span, one)
        pixel, clip_factor = clip_coordinate(pixel, size_m1, one)
        factor *= reflect_factor * clip_factor
    return pixel, factor


@njit(inline="always", cache=True, nogil=True)
def _coordinate_loops(coords, pn, axis, padding_mode, align_corners, one, pixel, factor):
    """The loops of ``_tile_coordinates``, inlined with ``align_corners``
    constant."""
    size, size_m1, low, span, limit = axis
    if padding_mode == PADDING_REFLECTION:
        far = 0
        for t in range(uint64(pn)):
            p, f = grid_unnormalize(coords[t], size, size_m1, align_corners, one)
            p, reflect_factor, within = reflect_near(p, low, span, one)
            p, clip_factor = clip_coordinate(p, size_m1, one)
            pixel[t] = p
            factor[t] = f * (reflect_factor * clip_factor)
            far += not within
        if far:
            for t in range(uint64(pn)):
                p = grid_unnormalize(coords[t], size, size_m1, align_corners, one)[0]
                if not reflect_near(p, low, span, one)[2]:
                    pixel[t], factor[t] = _source_coordinate(coords[t], axis, padding_mode,
                                                             align_corners, one)
    elif padding_mode == PADDING_BORDER:
        for t in range(uint64(pn)):
            p, f = grid_unnormalize(coords[t], size, size_m1, align_corners, one)
            p, clip_factor = clip_coordinate(p, size_m1, one)
            pixel[t] = p
            factor[t] = f * clip_factor
    else:
        for t in range(uint64(pn)):
            pixel[t], factor[t] = grid_unnormalize(coords[t], size, size_m1, align_corners, one)


@njit(cache=True, nogil=True)
def _tile_coordinates(coords, pn, axis, padding_mode, align_corners, one, pixel, factor):
    """``pixel[t], factor[t] = _source_coordinate(coords[t])`` for the ``pn``
    pixels of a tile (one coordinate of each grid pair, contiguous).

    One loop per padding mode and ``align_corners``, each without branches, so
    that it vectorises (with ``align_corners`` a variable, the reflection
    loop did not); reflection takes ``reflect_near`` and redoes the few
    coordinates it does not cover (further than two periods out, or not
    finite) through ``reflect_coordinate``. A function of its own, compiled
    once for both axes and both kernels (inlined, it doubled their compile
    times)."""
    if align_corners:
        _coordinate_loops(coords, pn, axis, padding_mode, True, one, pixel, factor)
    else:
        _coordinate_loops(coords, pn, axis, padding_mode, False, one, pixel, factor)


@njit(inline="always", cache=True, nogil=True)
def _tile_taps(grid, n, p0, pn, y_axis, x_axis, row_stride, one, nearest, padding_mode,
               align_corners, coords, y_pixel, x_pixel, base, ly, lx, inside, y_factor,
               x_factor):
    """Cell (or nearest pixel) and derivative factors of pixels p0 .. p0+pn,
    through ``coords``, ``y_pixel`` and ``x_pixel`` (scratch in the grid's
    dtype). Bilinear taps are selects (``grid_bilinear_tap``) and vectorise;
    nearest taps branch."""
    # each coordinate of the tile's (x, y) pairs copied to a contiguous run:
    # read from a variable offset, the reflection loop did not vectorise
    # (7.2 against 2.5 ns a pixel)
    start = (n * grid.shape[1] + p0) * 2
    pairs = grid.reshape(grid.size)[start:start + 2 * pn]
    for t in range(uint64(pn)):
        coords[t] = pairs[2 * t]
    _tile_coordinates(coords, pn, x_axis, padding_mode, align_corners, one, x_pixel, x_factor)
    for t in range(uint64(pn)):
        coords[t] = pairs[2 * t + 1]
    _tile_coordinates(coords, pn, y_axis, padding_mode, align_corners, one, y_pixel, y_factor)
    if nearest:
        for t in range(pn):
            base[t], inside[t] = grid_nearest_tap(y_pixel[t], x_pixel[t], y_axis[4], x_axis[4],
                                                  row_stride, one)
            ly[t] = 0.0
            lx[t] = 0.0
    else:
        for t in range(uint64(pn)):
            base[t], ly[t], lx[t], inside[t] = grid_bilinear_tap(
                y_pixel[t], x_pixel[t], y_axis[4], x_axis[4], row_stride, one)


@njit(inline="always", cache=True, nogil=True)
def _tile_cells(base, inside, pn, row_stride, height, ubase):
    """``ubase`` = ``base`` as uint64, and the image rows ``lo .. hi - 1``
    that the corners of the tile's inside samples touch (``lo >= hi``:
    none). Padded rows are ``image row + 2``; ``base // row_stride`` is the
    padded row of a cell's top corners (of the pixel, in nearest mode)."""
    # an outside sample's base is 0, an inside one's at least row_stride + 1:
    # plain min/max reductions with selects, which vectorise
    q_min = np.iinfo(np.int64).max
    q_max = 0
    for t in range(uint64(pn)):
        b = base[t]
        ubase[t] = uint64(b)
        q_min = min(q_min, b if inside[t] else np.iinfo(np.int64).max)
        q_max = max(q_max, b)
    if q_max == 0:
        return 0, 0
    lo = max(q_min // row_stride - PAD_BEFORE, 0)
    hi = min(q_max // row_stride - PAD_BEFORE + 2, height)
    return lo, hi


@njit(inline="always", cache=True, nogil=True)
def _load_band(flat_src, plane_start, lo, hi, width, row_stride, flat_plane):
    """Rows ``lo .. hi - 1`` of the (H, W) plane at ``plane_start`` into the
    interior of the padded scratch plane."""
    for r in range(lo, hi):
        src = uint64(plane_start + r * width)
        dst = uint64((r + PAD_BEFORE) * row_stride + PAD_BEFORE)
        for i in range(uint64(width)):
            flat_plane[dst + i] = flat_src[src + i]


@njit(inline="always", cache=True, nogil=True)
def _store_band(flat_plane, lo, hi, width, row_stride, flat_dst, plane_start):
    """The interior rows ``lo .. hi - 1`` of the scratch plane back into the
    (H, W) plane at ``plane_start``."""
    for r in range(lo, hi):
        dst = uint64(plane_start + r * width)
        src = uint64((r + PAD_BEFORE) * row_stride + PAD_BEFORE)
        for i in range(uint64(width)):
            flat_dst[dst + i] = flat_plane[src + i]


@njit(inline="always", cache=True, nogil=True)
def _zero_band(flat_plane, lo, hi, padded_row):
    """Zero the padded rows of image rows ``lo .. hi - 1`` of a scratch plane
    (``padded_row`` values a row): where a work item's first tile, whose
    gradient planes start at zero, accumulates instead of loading them."""
    for i in range(uint64((lo + PAD_BEFORE) * padded_row), uint64((hi + PAD_BEFORE) * padded_row)):
        flat_plane[i] = 0.0


@njit(inline="always", cache=True, nogil=True)
def _zero_outside(flat_dst, plane_start, lo, hi, height, width):
    """Zero the rows of the (H, W) plane at ``plane_start`` outside ``lo .. hi
    - 1``: after its first tile stored its band, every row of a work item's
    gradient planes holds its sum so far, and later tiles load theirs."""
    for r in range(height):
        if r < lo or r >= hi:
            row = uint64(plane_start + r * width)
            for i in range(uint64(width)):
                flat_dst[row + i] = 0.0


@njit(inline="always", cache=True, nogil=True)
def _scatter_corners(dst, q, rs, w00, w01, w10, w11, g):
    """Add ``g`` times each corner's weight onto the cell at flat index ``q``
    (uint64; ``rs`` the row stride) of ``dst``: the input-gradient scatter."""
    dst[q] += w00 * g
    dst[q + uint64(1)] += w01 * g
    dst[q + rs] += w10 * g
    dst[q + rs + uint64(1)] += w11 * g


@njit(inline="always", cache=True, nogil=True)
def _add_grid_terms(src, q, rs, ly, lx, g, acc_y, acc_x, t):
    """Add ``g`` times the floor-cell derivatives of the sample in the cell at
    ``q`` of ``src`` to pixel ``t``'s grid-gradient sums."""
    dy, dx = bilinear_coordinate_grads(src[q], src[q + uint64(1)], src[q + rs],
                                       src[q + rs + uint64(1)], ly, lx, 1.0)
    acc_y[t] += g * dy
    acc_x[t] += g * dx


@njit(inline="always", cache=True, nogil=True)
def _zero_group_padding(flat_group, ug, height, width, row_stride):
    """Zero the padding of a scratch plane holding ``ug`` channels side by
    side (channel ``k`` of padded position ``q`` at ``q * ug + k``): the rows
    above and below the image and the columns either side of each image row.
    Its interior is loaded band by band; the padding is what samples outside
    the image read."""
    top = uint64(PAD_BEFORE * row_stride) * ug
    for i in range(top):
        flat_group[i] = 0.0
    bottom = uint64((height + PAD_BEFORE) * row_stride) * ug
    for i in range(uint64(PAD_AFTER * row_stride) * ug):
        flat_group[bottom + i] = 0.0
    for r in range(height):
        row = uint64((r + PAD_BEFORE) * row_stride) * ug
        for i in range(uint64(PAD_BEFORE) * ug):
            flat_group[row + i] = 0.0
        right = row + uint64(PAD_BEFORE + width) * ug
        for i in range(uint64(PAD_AFTER) * ug):
            flat_group[right + i] = 0.0


@njit(inline="always", cache=True, nogil=True)
def _load_band_grouped(flat_src, plane_start, channel_stride, lo, hi, width, row_stride, ug,
                       flat_group):
    """Rows ``lo .. hi - 1`` of ``ug`` consecutive (H, W) planes, the first
    at ``plane_start`` and the next ``channel_stride`` apart, into the
    interior of the scratch plane ``flat_group``, channels side by side
    (channel ``k`` of padded position ``q`` at ``q * ug + k``): the forward's
    four channels (``ug`` a constant there, so that the copy vectorises) and
    the backward's groups."""
    for r in range(lo, hi):
        src = uint64(plane_start + r * width)
        dst = uint64((r + PAD_BEFORE) * row_stride + PAD_BEFORE) * ug
        for i in range(uint64(width)):
            for k in range(ug):
                flat_group[dst + ug * i + k] = flat_src[src + k * uint64(channel_stride) + i]


@njit(inline="always", cache=True, nogil=True)
def _store_band_grouped(flat_group, lo, hi, width, row_stride, ug, flat_dst, plane_start,
                        channel_stride):
    """The inverse of ``_load_band_grouped``, 16 pixels of a row at a time
    (2x faster than whole rows channel by channel, 8x than a pixel's channels
    at a time: each of the planes' runs is written whole)."""
    for r in range(lo, hi):
        dst = uint64(plane_start + r * width)
        src = uint64((r + PAD_BEFORE) * row_stride + PAD_BEFORE) * ug
        for i0 in range(uint64(0), uint64(width), uint64(16)):
            run = min(uint64(16), uint64(width) - i0)
            for k in range(ug):
                for i in range(i0, i0 + run):
                    flat_dst[dst + k * uint64(channel_stride) + i] = flat_group[src + ug * i + k]


@njit(fastmath={"reassoc"}, cache=True, nogil=True)
def _group_grid_sums(src, q, ug, rs_g, go_rows, j):
    """Over the ``ug`` channels side by side in the cell at ``q`` of the
    grouped plane ``src`` (row stride ``rs_g``), with output gradients
    ``go_rows[j + k]``: the float64 sums of g * (v01 - v00), g * (v11 - v10),
    g * (v10 - v00) and g * (v11 - v01), each difference formed in the input
    precision as ``bilinear_coordinate_grads`` forms it. The grid gradient's
    floor-cell derivatives are these sums weighted by the cell fractions.

    A function of its own so that only its sums may be reassociated (vector
    lanes add a group's channels in another order than one at a time; the
    result is the same on every call)."""
    s01 = 0.0
    s23 = 0.0
    s02 = 0.0
    s13 = 0.0
    for k in range(ug):
        v00 = src[q + k]
        v01 = src[q + ug + k]
        v10 = src[q + rs_g + k]
        v11 = src[q + rs_g + ug + k]
        g = np.float64(go_rows[j + k])
        s01 += g * np.float64(v01 - v00)
        s23 += g * np.float64(v11 - v10)
        s02 += g * np.float64(v10 - v00)
        s13 += g * np.float64(v11 - v01)
    return s01, s23, s02, s13


@njit(inline="always", cache=True, nogil=True)
def _group_scatter(dst, q, ug, rs_g, w00, w01, w10, w11, go_rows, j):
    """``_scatter_corners`` for the ``ug`` channels side by side in the cell
    at ``q`` of a grouped plane: each value gets the same product, added in
    the same pixel order, as one channel at a time."""
    for k in range(ug):
        dst[q + k] += w00 * go_rows[j + k]
    for k in range(ug):
        dst[q + ug + k] += w01 * go_rows[j + k]
    for k in range(ug):
        dst[q + rs_g + k] += w10 * go_rows[j + k]
    for k in range(ug):
        dst[q + rs_g + ug + k] += w11 * go_rows[j + k]


@njit(cache=True, nogil=True)
def grid_sample(inp, padded, y_axis, x_axis, row_stride, one, grid, nearest, padding_mode,
                align_corners, pixel_blocks, tile, out, item_lo, item_hi):
    """Fill ``out`` (N, C, P) with the samples of every channel at the grid,
    for work items ``item_lo .. item_hi - 1`` of ``N * pixel_blocks``.
    ``padded``: ``inp`` is already a zero-padded copy (N, C, H + 3, W + 3),
    read in place."""
    npix = grid.shape[1]
    channels, width = inp.shape[1], row_stride - PAD_BEFORE - PAD_AFTER
    height = inp.shape[2] - (PAD_BEFORE + PAD_AFTER if padded else 0)
    plane_size = (height + PAD_BEFORE + PAD_AFTER) * row_stride
    flat_inp = inp.reshape(inp.size)
    flat_out = out.reshape(out.size)
    per_block = (npix + pixel_blocks - 1) // pixel_blocks
    rs = uint64(row_stride)
    rs4 = uint64(_CHANNELS * row_stride)  # row stride of the interleaved plane
    for item in range(item_lo, item_hi):
        n = item // pixel_blocks
        p_lo = (item % pixel_blocks) * per_block
        p_hi = min(p_lo + per_block, npix)
        plane = np.zeros(0 if padded else plane_size, inp.dtype)
        quad = np.zeros(0 if padded or nearest or channels < _CHANNELS
                        else _CHANNELS * plane_size, inp.dtype)
        coords = np.empty(tile, grid.dtype)
        y_pixel = np.empty(tile, grid.dtype)
        x_pixel = np.empty(tile, grid.dtype)
        base = np.empty(tile, np.int64)
        ubase = np.empty(tile, np.uint64)
        ly = np.empty(tile, np.float64)
        lx = np.empty(tile, np.float64)
        inside = np.empty(tile, np.bool_)
        y_factor = np.empty(tile, np.float64)
        x_factor = np.empty(tile, np.float64)
        w00 = np.empty(tile, out.dtype)
        w01 = np.empty(tile, out.dtype)
        w10 = np.empty(tile, out.dtype)
        w11 = np.empty(tile, out.dtype)
        for p0 in range(p_lo, p_hi, tile):
            pn = min(tile, p_hi - p0)
            upn = uint64(pn)
            _tile_taps(grid, n, p0, pn, y_axis, x_axis, row_stride, one, nearest, padding_mode,
                       align_corners, coords, y_pixel, x_pixel, base, ly, lx, inside, y_factor,
                       x_factor)
            lo, hi = _tile_cells(base, inside, pn, row_stride, height, ubase)
            if not nearest:
                for t in range(pn):
                    w00[t], w01[t], w10[t], w11[t] = bilinear_weights(ly[t], lx[t], 1.0)
            c_first = 0
            if not (padded or nearest):
                # channels in fours: each tile entry (cell, weights) is read
                # once for four channels' samples, from one scratch plane
                # holding the four channels side by side (each corner's four
                # values in one 16-byte run: 0.20 ms less a (8, 64, 64, 64)
                # forward on one core than four separate planes)
                for c_first in range(0, channels - _CHANNELS + 1, _CHANNELS):
                    _load_band_grouped(flat_inp, (n * channels + c_first) * height * width,
                                       height * width, lo, hi, width, row_stride,
                                       uint64(_CHANNELS), quad)
                    o = uint64((n * channels + c_first) * npix + p0)
                    # a cell's four channels in one vector, four pixels at a
                    # time (0.74 -> 0.34 ns a value on one core, float32;
                    # 0.41 a pixel at a time)
                    t = uint64(0)
                    while t + uint64(_CHANNELS) <= upn:
                        blend4_pixels(quad, ubase, t, w00, w01, w10, w11, rs4, flat_out, o,
                                      uint64(npix))
                        t += uint64(_CHANNELS)
                    for t in range(t, upn):
                        blend4(quad, ubase[t] * uint64(_CHANNELS), rs4, w00[t], w01[t], w10[t],
                               w11[t], flat_out, o + t, uint64(npix))
                c_first = channels - channels % _CHANNELS
            for c in range(c_first, channels):
                if padded:
                    src, off = flat_inp, uint64((n * channels + c) * plane_size)
                else:
                    _load_band(flat_inp, (n * channels + c) * height * width, lo, hi, width,
                               row_stride, plane)
                    src, off = plane, uint64(0)
                o = uint64((n * channels + c) * npix + p0)
                if nearest:
                    for t in range(upn):
                        flat_out[o + t] = src[off + ubase[t]]
                else:
                    for t in range(upn):
                        q = off + ubase[t]
                        flat_out[o + t] = (w00[t] * src[q] + w01[t] * src[q + uint64(1)]
                                           + w10[t] * src[q + rs]
                                           + w11[t] * src[q + rs + uint64(1)])


@njit(cache=True, nogil=True)
def _grouped_channels(flat_inp, flat_grad, flat_go, n, channels, c_lo, c_hi, g_max, layout, p0,
                      upn, npix, height, width, row_stride, lo, hi, grid_terms, want_input,
                      grouped, g_grouped, go_rows, ubase, ly, lx, w00, w01, w10, w11, acc_y,
                      acc_x):
    """The channels ``c_lo ..`` of one tile of ``grid_sample_backward``, in
    groups of up to ``g_max`` while at least ``MIN_GROUP`` remain; returns
    the first channel left (for one at a time) and the group size the
    scratch planes' padding is now zeroed for. A function of its own, not
    inlined: the first float32 backward compiled in 5.7 s before groups,
    13.4 s with this inlined into the kernel, 10.2 s as it is."""
    c_first = c_lo
    while c_hi - c_first >= MIN_GROUP:
        g = min(g_max, c_hi - c_first)
        ug = uint64(g)
        rs_g = uint64(row_stride) * ug
        plane_start = (n * channels + c_first) * height * width
        go = uint64((n * channels + c_first) * npix + p0)
        if layout != g:
            # the gradient plane's padding only collects adds that are
            # never stored; zeroed all the same, as np.empty may hold
            # denormals, which would slow those adds
            if grid_terms:
                _zero_group_padding(grouped, ug, height, width, row_stride)
            if want_input:
                _zero_group_padding(g_grouped, ug, height, width, row_stride)
            layout = g
        if grid_terms:
            _load_band_grouped(flat_inp, plane_start, height * width, lo, hi, width,
                               row_stride, ug, grouped)
        if want_input:  # the block's only tile: its gradient planes start at zero
            _zero_band(g_grouped, lo, hi, row_stride * g)
        for s0 in range(uint64(0), upn, uint64(_SUBTILE)):
            sn = min(uint64(_SUBTILE), upn - s0)
            for s in range(sn):
                for k in range(ug):
                    go_rows[s * ug + k] = flat_go[go + k * uint64(npix) + s0 + s]
            for s in range(sn):
                t = s0 + s
                q = ubase[t] * ug
                if grid_terms:
                    s01, s23, s02, s13 = _group_grid_sums(grouped, q, ug, rs_g, go_rows,
                                                          s * ug)
                    acc_y[t] += (1.0 - lx[t]) * s02 + lx[t] * s13
                    acc_x[t] += (1.0 - ly[t]) * s01 + ly[t] * s23
                if want_input:
                    _group_scatter(g_grouped, q, ug, rs_g, w00[t], w01[t], w10[t],
                                   w11[t], go_rows, s * ug)
        if want_input:
            _store_band_grouped(g_grouped, lo, hi, width, row_stride, ug, flat_grad,
                                plane_start, height * width)
            for k in range(g):
                _zero_outside(flat_grad, plane_start + k * height * width, lo, hi,
                              height, width)
        c_first += g
    return c_first, layout


@njit(cache=True, nogil=True)
def grid_sample_backward(grad_out, inp, padded, y_axis, x_axis, row_stride, one, grid, nearest,
                         padding_mode, align_corners, want_input, want_grid, channel_blocks,
                         pixel_blocks, tile, group, grad_inp, grid_partials, item_lo, item_hi):
    """Input gradient into ``grad_inp`` (N, C, H, W), overwritten, and grid
    gradient shares into ``grid_partials`` (N, channel_blocks, P, 2), float64,
    for work items ``item_lo .. item_hi - 1`` of ``N * channel_blocks *
    pixel_blocks`` (image, channel block, pixel block).
    ``padded``: ``inp`` and ``grad_inp`` are zero-padded (N, C, H + 3, W + 3)
    planes, read and added to in place (the caller zeroes ``grad_inp`` and
    crops it).

    The input gradient scatters each output gradient onto the corners that
    produced the sample (the exact adjoint of ``grid_sample``); a work item
    owns whole channel planes of one image, so the caller must give a single
    pixel block when ``want_input``. Block ``b``'s channels contribute to
    ``grid_partials[:, b]``, which the caller sums in a fixed order: the result
    is deterministic. Nearest sampling has no grid gradient (it is left alone).

    Both gradients come from one pass per channel and tile: the corners a
    sample reads for the grid gradient are where its input gradient goes.

    Where a work item's pixels are one tile, bilinear bands take channels in
    groups of up to ``group`` (0: one at a time), side by side in scratch
    planes (input, input gradient) and in a transposed copy of the output
    gradients, so that the loops over a group's channels at each pixel
    vectorise. The input gradient gets the same sums in the same order either
    way; the grid gradient's channel sums are reassociated within a group and
    the cell fractions factored out of them (``_group_grid_sums``), which
    moves their rounding.
    """
    npix = grid.shape[1]
    channels, width = inp.shape[1], row_stride - PAD_BEFORE - PAD_AFTER
    height = inp.shape[2] - (PAD_BEFORE + PAD_AFTER if padded else 0)
    flat_inp = inp.reshape(inp.size)
    flat_grad = grad_inp.reshape(grad_inp.size)
    flat_go = grad_out.reshape(grad_out.size)
    c_per_block = (channels + channel_blocks - 1) // channel_blocks
    p_per_block = (npix + pixel_blocks - 1) // pixel_blocks
    rs = uint64(row_stride)
    grid_terms = want_grid and not nearest
    plane_size = (height + PAD_BEFORE + PAD_AFTER) * row_stride
    for item in range(item_lo, item_hi):
        n = item // (channel_blocks * pixel_blocks)
        cb = (item // pixel_blocks) % channel_blocks
        c_lo = cb * c_per_block
        c_hi = min(c_lo + c_per_block, channels)
        p_lo = (item % pixel_blocks) * p_per_block
        p_hi = min(p_lo + p_per_block, npix)
        plane = np.zeros(0 if padded else plane_size, inp.dtype)
        g_plane = np.zeros(0 if padded else plane_size, grad_inp.dtype)
        # groups only where the block's pixels are one tile: a band reloaded
        # (transposed) for each of several tiles cost more than it saved
        # (and with at least MIN_GROUP channels: a block past the last
        # channel has c_hi < c_lo)
        g_max = (0 if padded or nearest or group < MIN_GROUP or p_hi - p_lo > tile
                 or c_hi - c_lo < MIN_GROUP else min(group, c_hi - c_lo))
        g_plane_size = g_max * plane_size
        grouped = np.empty(g_plane_size if grid_terms else 0, inp.dtype)
        g_grouped = np.empty(g_plane_size if want_input else 0, grad_inp.dtype)
        go_rows = np.empty(g_max * _SUBTILE, grad_out.dtype)
        layout = 0  # the channels per position the scratch planes' padding was zeroed for
        coords = np.empty(tile, grid.dtype)
        y_pixel = np.empty(tile, grid.dtype)
        x_pixel = np.empty(tile, grid.dtype)
        base = np.empty(tile, np.int64)
        ubase = np.empty(tile, np.uint64)
        ly = np.empty(tile, np.float64)
        lx = np.empty(tile, np.float64)
        inside = np.empty(tile, np.bool_)
        y_factor = np.empty(tile, np.float64)
        x_factor = np.empty(tile, np.float64)
        w00 = np.empty(tile, grad_out.dtype)
        w01 = np.empty(tile, grad_out.dtype)
        w10 = np.empty(tile, grad_out.dtype)
        w11 = np.empty(tile, grad_out.dtype)
        acc_y = np.empty(tile, np.float64)
        acc_x = np.empty(tile, np.float64)
        if want_input and not padded and p_lo >= p_hi:
            # no tile to zero the gradient planes (an empty grid)
            for c in range(c_lo, c_hi):
                _zero_outside(flat_grad, (n * channels + c) * height * width, 0, 0, height,
                              width)
        for p0 in range(p_lo, p_hi, tile):
            pn = min(tile, p_hi - p0)
            upn = uint64(pn)
            _tile_taps(grid, n, p0, pn, y_axis, x_axis, row_stride, one, nearest, padding_mode,
                       align_corners, coords, y_pixel, x_pixel, base, ly, lx, inside, y_factor,
                       x_factor)
            lo, hi = _tile_cells(base, inside, pn, row_stride, height, ubase)
            for t in range(pn):
                w00[t], w01[t], w10[t], w11[t] = bilinear_weights(ly[t], lx[t], 1.0)
                acc_y[t] = 0.0
                acc_x[t] = 0.0
            c_first = c_lo
            if g_max:
                c_first, layout = _grouped_channels(
                    flat_inp, flat_grad, flat_go, n, channels, c_lo, c_hi, g_max, layout, p0,
                    upn, npix, height, width, row_stride, lo, hi, grid_terms, want_input,
                    grouped, g_grouped, go_rows, ubase, ly, lx, w00, w01, w10, w11, acc_y,
                    acc_x)
            for c in range(c_first, c_hi):
                plane_start = (n * channels + c) * height * width
                go = uint64((n * channels + c) * npix + p0)
                # Outside samples and corners land on padding: the scratch
                # border, never stored back, or the padded copy's, cropped.
                if padded:
                    src, dst, off = flat_inp, flat_grad, uint64((n * channels + c) * plane_size)
                else:
                    if grid_terms:
                        _load_band(flat_inp, plane_start, lo, hi, width, row_stride, plane)
                    if want_input and p0 == p_lo:
                        _zero_band(g_plane, lo, hi, row_stride)
                    elif want_input:
                        _load_band(flat_grad, plane_start, lo, hi, width, row_stride, g_plane)
                    src, dst, off = plane, g_plane, uint64(0)
                # one loop per combination of results, each without branches
                if nearest:
                    if want_input:
                        for t in range(upn):
                            dst[off + ubase[t]] += flat_go[go + t]
                elif want_input and grid_terms:
                    for t in range(upn):
                        q = off + ubase[t]
                        g = flat_go[go + t]
                        _add_grid_terms(src, q, rs, ly[t], lx[t], g, acc_y, acc_x, t)
                        _scatter_corners(dst, q, rs, w00[t], w01[t], w10[t], w11[t], g)
                elif want_input:
                    for t in range(upn):
                        q = off + ubase[t]
                        _scatter_corners(dst, q, rs, w00[t], w01[t], w10[t], w11[t],
                                         flat_go[go + t])
                elif grid_terms:
                    for t in range(upn):
                        q = off + ubase[t]
                        _add_grid_terms(src, q, rs, ly[t], lx[t], flat_go[go + t], acc_y, acc_x,
                                        t)
                if want_input and not padded:
                    _store_band(g_plane, lo, hi, width, row_stride, flat_grad, plane_start)
                    if p0 == p_lo:
                        _zero_outside(flat_grad, plane_start, lo, hi, height, width)
            if grid_terms:
                for t in range(pn):
                    if inside[t]:
                        grid_partials[n, cb, p0 + t, 0] = acc_x[t] * x_factor[t]
                        grid_partials[n, cb, p0 + t, 1] = acc_y[t] * y_factor[t]
                    else:
                        grid_partials[n, cb, p0 + t, 0] = 0.0
                        grid_partials[n, cb, p0 + t, 1] = 0.0

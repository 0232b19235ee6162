"""Active convolution's four-tap im2col and its adjoints on CPU.

Columns are channels-first, as the dense im2col lays them out
(``cols[b, c*K + k, p]``, ``_columns.ChannelsFirst``). The input arrives
zero-padded so that every tap lies inside (``_stencil``): the columns of kernel
point ``k`` of offset group ``g`` (``gk = g*K + k``) are the bilinear blend,
with the fixed fractions ``fracs[gk]``, of four integer-shifted strided copies
of each plane, with no per-sample floor or branch. Absent kernel points
(``present[gk]`` False) give zero columns and no gradients.

``col_step`` is the column stride, or None for stride 1: the kernels are then
compiled with plain contiguous row slices, and their loops vectorise (a
run-time ``if stride == 1`` branch in one kernel kept LLVM from vectorising
either branch: 3.5 ms against 0.7 ms per image for the im2col here).

The kernels are serial and release the GIL: the CPU launcher runs chunks on
one worker thread per core (``_cpu.run_chunks``), each with single-threaded
BLAS. Chunks of one image stay on one worker, so the input-gradient scatter
does not depend on scheduling.
"""

from numba import njit, types
from numba.extending import overload

from .device import bilinear_coordinate_grads, bilinear_value

# NaN and infinities keep their IEEE meaning; no "reassoc" in the forward, so
# each sample is formed in the order deform_conv2d forms it.
_FASTMATH = {"contract", "nsz", "arcp"}
# The backward's offset sums run over whole output rows: without "reassoc" each
# is one serial chain of additions (latency-bound, several times slower). With
# no mask there is no product that reassociation could overflow.
_SUMS_FASTMATH = _FASTMATH | {"reassoc"}


def tap_row(plane, y, x, out_w, col_step):
    """``plane[y, x + wo*step]`` for wo < out_w, as a view (stride 1 when
    ``col_step`` is None)."""
    step = 1 if col_step is None else col_step
    return plane[y, x:x + (out_w - 1) * step + 1:step]


@overload(tap_row, inline="always")
def _tap_row_typed(plane, y, x, out_w, col_step):
    if isinstance(col_step, types.NoneType):
        def unit(plane, y, x, out_w, col_step):
            return plane[y, x:x + out_w]
        return unit

    def strided(plane, y, x, out_w, col_step):
        return plane[y, x:x + (out_w - 1) * col_step + 1:col_step]
    return strided


@njit(inline="always", cache=True, nogil=True)
def _blend_row(v00, v01, v10, v11, ly, lx, one, dst):
    """One output row of columns: the bilinear blend of its four tap rows."""
    for wo in range(dst.shape[0]):
        dst[wo] = bilinear_value(v00[wo], v01[wo], v10[wo], v11[wo], ly, lx, one)


@njit(inline="always", cache=True, nogil=True)
def _coordinate_sums(v00, v01, v10, v11, gc, ly, lx, one):
    """Sums over one output row of ``gc`` times the floor-cell derivative in y and x."""
    sum_y = one - one
    sum_x = one - one
    for wo in range(gc.shape[0]):
        dy, dx = bilinear_coordinate_grads(v00[wo], v01[wo], v10[wo], v11[wo], ly, lx, one)
        sum_y += dy * gc[wo]
        sum_x += dx * gc[wo]
    return sum_y, sum_x


@njit(inline="always", cache=True, nogil=True)
def _scatter_adjacent(dst, gc, w0, w1):
    """``dst[t] += w0 * gc[t] + w1 * gc[t - 1]`` for t in 0..len(gc) (missing
    terms 0): a row's two horizontally adjacent taps at unit stride as one
    gather, so that the loop vectorises (the taps' destinations overlap)."""
    out_w = gc.shape[0]
    dst[0] += w0 * gc[0]
    for t in range(1, out_w):
        dst[t] += w0 * gc[t] + w1 * gc[t - 1]
    dst[out_w] += w1 * gc[out_w - 1]


@njit(inline="always", cache=True, nogil=True)
def _scatter_row(dst, gc, w):
    for wo in range(gc.shape[0]):
        dst[wo] += w * gc[wo]


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def active_im2col(inp_pad, n0, r0, out_w, n_k, sh, col_step, taps, fracs, present, per_group,
                  one, cols):
    """Fill ``cols`` (nb, C*K, rows*Wo) from ``inp_pad`` (N, C, Hp, Wp).

    ``one`` is 1 in the input dtype (keeps float32 arithmetic in float32);
    ``per_group`` is C/G, the channels of an offset group.
    """
    channels = inp_pad.shape[1]
    nb, _, npix = cols.shape
    rows = npix // out_w
    for item in range(nb * channels):
        b = item // channels
        c = item - b * channels
        plane = inp_pad[n0 + b, c]
        g = c // per_group
        for k in range(n_k):
            gk = g * n_k + k
            row = cols[b, c * n_k + k]
            if not present[gk]:
                row[:] = 0
                continue
            ly = fracs[gk, 0]
            lx = fracs[gk, 1]
            x = taps[gk, 1]
            for r in range(rows):
                y = (r0 + r) * sh + taps[gk, 0]
                _blend_row(tap_row(plane, y, x, out_w, col_step),
                           tap_row(plane, y, x + 1, out_w, col_step),
                           tap_row(plane, y + 1, x, out_w, col_step),
                           tap_row(plane, y + 1, x + 1, out_w, col_step),
                           ly, lx, one, row[r * out_w:(r + 1) * out_w])


@njit(cache=True, nogil=True, fastmath=_SUMS_FASTMATH)
def active_backward(grad_cols, inp_pad, n0, r0, out_w, n_k, sh, col_step, taps, fracs, present,
                    per_group, one, cols, grad_pad, offset_sums):
    """One pass over a chunk's kernel points, reading each tap row once.
    Each output may be None (not wanted); Numba then compiles it out, so the
    loops of every combination vectorise.

    * ``cols``: rebuild the columns there (as ``active_im2col``);
    * ``grad_pad``: scatter-add ``grad_cols`` through the four taps into it
      (N, C, Hp, Wp), the adjoint of the forward;
    * ``offset_sums``: add to ``offset_sums[gk]`` (float64, (G*K, 2)) the sums
      over the chunk's channels and pixels of ``grad_cols`` times the floor-cell
      derivative of the sample in y and in x. Each output row's sum is formed
      in the input dtype (it vectorises), then added in float64.

    ``grad_cols`` may be None when only ``cols`` is wanted.
    """
    channels = inp_pad.shape[1]
    nb = (cols if grad_cols is None else grad_cols).shape[0]
    npix = (cols if grad_cols is None else grad_cols).shape[2]
    rows = npix // out_w
    for item in range(nb * channels):
        b = item // channels
        c = item - b * channels
        plane = inp_pad[n0 + b, c]
        g = c // per_group
        for k in range(n_k):
            gk = g * n_k + k
            row = c * n_k + k
            if not present[gk]:
                if cols is not None:
                    cols[b, row, :] = 0
                continue
            ly = fracs[gk, 0]
            lx = fracs[gk, 1]
            hy = one - ly
            hx = one - lx
            x = taps[gk, 1]
            for r in range(rows):
                y = (r0 + r) * sh + taps[gk, 0]
                lo, hi = r * out_w, (r + 1) * out_w
                v00 = tap_row(plane, y, x, out_w, col_step)
                v01 = tap_row(plane, y, x + 1, out_w, col_step)
                v10 = tap_row(plane, y + 1, x, out_w, col_step)
                v11 = tap_row(plane, y + 1, x + 1, out_w, col_step)
                if cols is not None:
                    _blend_row(v00, v01, v10, v11, ly, lx, one, cols[b, row, lo:hi])
                if offset_sums is not None:
                    sum_y, sum_x = _coordinate_sums(v00, v01, v10, v11, grad_cols[b, row, lo:hi],
                                                    ly, lx, one)
                    offset_sums[gk, 0] += sum_y
                    offset_sums[gk, 1] += sum_x
                if grad_pad is not None:
                    gc = grad_cols[b, row, lo:hi]
                    grad_plane = grad_pad[n0 + b, c]
                    if col_step is None:
                        _scatter_adjacent(grad_plane[y, x:x + out_w + 1], gc, hy * hx, hy * lx)
                        _scatter_adjacent(grad_plane[y + 1, x:x + out_w + 1], gc, ly * hx,
                                          ly * lx)
                    else:
                        # taps of a row at stride >= 2 never share a destination
                        _scatter_row(tap_row(grad_plane, y, x, out_w, col_step), gc, hy * hx)
                        _scatter_row(tap_row(grad_plane, y, x + 1, out_w, col_step), gc,
                                     hy * lx)
                        _scatter_row(tap_row(grad_plane, y + 1, x, out_w, col_step), gc,
                                     ly * hx)
                        _scatter_row(tap_row(grad_plane, y + 1, x + 1, out_w, col_step), gc,
                                     ly * lx)

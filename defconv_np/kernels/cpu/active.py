"""Active convolution's four-tap im2col and its adjoints on CPU.

Columns are channels-first, as the dense im2col lays them out
(``cols[b, c*K + k, p]``, ``_columns.ChannelsFirst``). The input arrives
zero-padded so that every tap lies inside (``_stencil``): the columns of kernel
point ``k`` of offset group ``g`` (``gk = g*K + k``) are the bilinear blend,
with the fixed fractions ``fracs[gk]``, of four integer-shifted strided copies
of each plane, with no per-sample floor or branch. Absent kernel points
(``present[gk]`` False) give zero columns and no gradients.

The kernels are serial and release the GIL: the CPU launcher runs chunks on
one worker thread per core (``_cpu.run_chunks``), each with single-threaded
BLAS. Chunks of one image stay on one worker, so the input-gradient scatter
does not depend on scheduling.
"""

from numba import njit

from .device import bilinear_coordinate_grads, bilinear_value

# NaN and infinities keep their IEEE meaning; no "reassoc", so every value is
# formed in the order the other backends and deform_conv2d form it.
_FASTMATH = {"contract", "nsz", "arcp"}
# The backward's offset sums run over whole output rows: without "reassoc" each
# is one serial chain of additions (latency-bound, several times slower). With
# no mask there is no product that reassociation could overflow.
_SUMS_FASTMATH = _FASTMATH | {"reassoc"}


@njit(inline="always", cache=True, nogil=True)
def _tap_rows(plane, y, x, out_w, sw):
    """The four strided rows of taps of one output row: (y, x), (y, x+1),
    (y+1, x), (y+1, x+1), each ``out_w`` long."""
    span = (out_w - 1) * sw + 1
    return (plane[y, x:x + span:sw], plane[y, x + 1:x + 1 + span:sw],
            plane[y + 1, x:x + span:sw], plane[y + 1, x + 1:x + 1 + span:sw])


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def active_im2col(inp_pad, n0, r0, out_w, n_k, stride, taps, fracs, present, per_group, one,
                  cols):
    """Fill ``cols`` (nb, C*K, rows*Wo) from ``inp_pad`` (N, C, Hp, Wp).

    ``one`` is 1 in the input dtype (keeps float32 arithmetic in float32);
    ``per_group`` is C/G, the channels of an offset group.
    """
    sh, sw = stride
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
            for r in range(rows):
                v00, v01, v10, v11 = _tap_rows(plane, (r0 + r) * sh + taps[gk, 0], taps[gk, 1],
                                               out_w, sw)
                dst = row[r * out_w:(r + 1) * out_w]
                for wo in range(out_w):
                    dst[wo] = bilinear_value(v00[wo], v01[wo], v10[wo], v11[wo], ly, lx, one)


@njit(cache=True, nogil=True, fastmath=_SUMS_FASTMATH)
def active_backward(grad_cols, inp_pad, n0, r0, out_w, n_k, stride, taps, fracs, present,
                    per_group, one, want_cols, want_input, want_offset, cols, grad_pad,
                    offset_sums):
    """One pass over a chunk's kernel points, reading each tap row once.

    * ``want_cols``: rebuild the columns into ``cols`` (as ``active_im2col``);
    * ``want_input``: scatter-add ``grad_cols`` through the four taps into
      ``grad_pad`` (N, C, Hp, Wp), the adjoint of the forward;
    * ``want_offset``: add to ``offset_sums[gk]`` (float64, (G*K, 2)) the sums
      over the chunk's channels and pixels of ``grad_cols`` times the floor-cell
      derivative of the sample in y and in x. Each output row's sum is formed
      in the input dtype (it vectorises), then added in float64.

    ``grad_cols`` is only read when ``want_input`` or ``want_offset``; pass
    ``cols`` in its place otherwise.
    """
    sh, sw = stride
    channels = inp_pad.shape[1]
    nb, _, npix = grad_cols.shape
    rows = npix // out_w
    span = (out_w - 1) * sw + 1
    zero = one - one
    for item in range(nb * channels):
        b = item // channels
        c = item - b * channels
        plane = inp_pad[n0 + b, c]
        grad_plane = grad_pad[n0 + b, c] if want_input else plane
        g = c // per_group
        for k in range(n_k):
            gk = g * n_k + k
            row = c * n_k + k
            if not present[gk]:
                if want_cols:
                    cols[b, row, :] = 0
                continue
            ly = fracs[gk, 0]
            lx = fracs[gk, 1]
            hy = one - ly
            hx = one - lx
            for r in range(rows):
                y = (r0 + r) * sh + taps[gk, 0]
                x = taps[gk, 1]
                lo, hi = r * out_w, (r + 1) * out_w
                if want_cols or want_offset:
                    v00, v01, v10, v11 = _tap_rows(plane, y, x, out_w, sw)
                    if want_cols:
                        dst = cols[b, row, lo:hi]
                        for wo in range(out_w):
                            dst[wo] = bilinear_value(v00[wo], v01[wo], v10[wo], v11[wo], ly,
                                                     lx, one)
                    if want_offset:
                        gc = grad_cols[b, row, lo:hi]
                        sum_y = zero
                        sum_x = zero
                        for wo in range(out_w):
                            dy, dx = bilinear_coordinate_grads(v00[wo], v01[wo], v10[wo],
                                                               v11[wo], ly, lx, one)
                            sum_y += dy * gc[wo]
                            sum_x += dx * gc[wo]
                        offset_sums[gk, 0] += sum_y
                        offset_sums[gk, 1] += sum_x
                if want_input:
                    gc = grad_cols[b, row, lo:hi]
                    # four passes, one per tap: the taps' destinations overlap
                    for dy_tap in range(2):
                        wy = ly if dy_tap else hy
                        for dx_tap in range(2):
                            wgt = wy * (lx if dx_tap else hx)
                            dst = grad_plane[y + dy_tap, x + dx_tap:x + dx_tap + span:sw]
                            for wo in range(out_w):
                                dst[wo] += wgt * gc[wo]

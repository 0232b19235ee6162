"""Multi-scale deformable attention on CUDA: sampling and its three adjoints.

Same layouts as ``kernels.cpu.attention``: padded level planes ``value_pad``
(N, M, Sp, D), ``level_real`` (L, 4) = (H, W, window limits) in the value
dtype, ``level_index`` (L, 2) = (first padded row, row stride), locations
(N, Lq, M, L, P, 2), weights (N, Lq, M, L, P), output (N, Lq, M, D).

The sampling and the atomic value gradient give one thread each output
channel (n, q, m, d), d fastest: neighbouring threads read and write
neighbouring channels of the same corners (coalesced), and each recomputes
the (cheap) tap. The location and weight gradients give one thread each
sample (n, q, m, l, p), which sums over the D channels itself and writes
once: no atomics, deterministic. The ordered value gradient gives one thread
each (n, m, d) slice, adding in query, level, point order.
"""

from numba import cuda

from .device import bilinear_coordinate_grads, bilinear_weights, grid_bilinear_tap, grid_unnormalize


@cuda.jit(device=True, inline="always")
def _level_tap(locations, n, q, m, lv, p, level_real, level_index, one):
    """Padded-plane row of the sample's top-left corner, its fractions, whether
    it is inside the window, and d(pixel)/d(grid) along y and x."""
    two = one + one
    height = level_real[lv, 0]
    width = level_real[lv, 1]
    gx = two * locations[n, q, m, lv, p, 0] - one
    gy = two * locations[n, q, m, lv, p, 1] - one
    x, x_factor = grid_unnormalize(gx, width, width, False, one)
    y, y_factor = grid_unnormalize(gy, height, height, False, one)
    base, ly, lx, inside = grid_bilinear_tap(y, x, level_real[lv, 2], level_real[lv, 3],
                                             level_index[lv, 1], one)
    return level_index[lv, 0] + base, ly, lx, inside, y_factor, x_factor


@cuda.jit
def ms_deform_attn(value_pad, level_real, level_index, one, locations, weights, total, out):
    n_query, n_heads, n_levels, n_points = weights.shape[1:]
    depth = value_pad.shape[3]
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        d = idx % depth
        m = (idx // depth) % n_heads
        q = (idx // (depth * n_heads)) % n_query
        n = idx // (depth * n_heads * n_query)
        acc = one - one
        for lv in range(n_levels):
            rs = level_index[lv, 1]
            for p in range(n_points):
                r, ly, lx, inside, _, _ = _level_tap(locations, n, q, m, lv, p, level_real,
                                                     level_index, one)
                if inside:
                    w00, w01, w10, w11 = bilinear_weights(ly, lx, one)
                    acc += weights[n, q, m, lv, p] * (
                        w00 * value_pad[n, m, r, d] + w01 * value_pad[n, m, r + 1, d]
                        + w10 * value_pad[n, m, r + rs, d] + w11 * value_pad[n, m, r + rs + 1, d])
        out[n, q, m, d] = acc


@cuda.jit
def ms_deform_attn_value_grad_atomic(grad_out, level_real, level_index, one, locations, weights,
                                     total, grad_value_pad):
    """Value gradient by atomic scatter-add (summation order depends on scheduling)."""
    n_query, n_heads, n_levels, n_points = weights.shape[1:]
    depth = grad_out.shape[3]
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        d = idx % depth
        m = (idx // depth) % n_heads
        q = (idx // (depth * n_heads)) % n_query
        n = idx // (depth * n_heads * n_query)
        g = grad_out[n, q, m, d]
        for lv in range(n_levels):
            rs = level_index[lv, 1]
            for p in range(n_points):
                r, ly, lx, inside, _, _ = _level_tap(locations, n, q, m, lv, p, level_real,
                                                     level_index, one)
                if inside:
                    w00, w01, w10, w11 = bilinear_weights(ly, lx, one)
                    ga = weights[n, q, m, lv, p] * g
                    cuda.atomic.add(grad_value_pad, (n, m, r, d), w00 * ga)
                    cuda.atomic.add(grad_value_pad, (n, m, r + 1, d), w01 * ga)
                    cuda.atomic.add(grad_value_pad, (n, m, r + rs, d), w10 * ga)
                    cuda.atomic.add(grad_value_pad, (n, m, r + rs + 1, d), w11 * ga)


@cuda.jit
def ms_deform_attn_value_grad_ordered(grad_out, level_real, level_index, one, locations, weights,
                                      total, grad_value_pad):
    """Deterministic value gradient: one thread owns the (n, m, d) slice and
    adds the samples' shares in query, level, point order."""
    n_query, n_heads, n_levels, n_points = weights.shape[1:]
    depth = grad_out.shape[3]
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        d = idx % depth
        m = (idx // depth) % n_heads
        n = idx // (depth * n_heads)
        for q in range(n_query):
            g = grad_out[n, q, m, d]
            for lv in range(n_levels):
                rs = level_index[lv, 1]
                for p in range(n_points):
                    r, ly, lx, inside, _, _ = _level_tap(locations, n, q, m, lv, p, level_real,
                                                         level_index, one)
                    if inside:
                        w00, w01, w10, w11 = bilinear_weights(ly, lx, one)
                        ga = weights[n, q, m, lv, p] * g
                        grad_value_pad[n, m, r, d] += w00 * ga
                        grad_value_pad[n, m, r + 1, d] += w01 * ga
                        grad_value_pad[n, m, r + rs, d] += w10 * ga
                        grad_value_pad[n, m, r + rs + 1, d] += w11 * ga


@cuda.jit
def ms_deform_attn_sample_grads(grad_out, value_pad, level_real, level_index, one, locations,
                                weights, want_locations, want_weights, total, grad_locations,
                                grad_weights):
    """Location and/or weight gradient of each sample, summed over its D
    channels by its own thread and written once (zero outside the window)."""
    n_query, n_heads, n_levels, n_points = weights.shape[1:]
    depth = value_pad.shape[3]
    two = one + one
    zero = one - one
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        p = idx % n_points
        lv = (idx // n_points) % n_levels
        m = (idx // (n_points * n_levels)) % n_heads
        q = (idx // (n_points * n_levels * n_heads)) % n_query
        n = idx // (n_points * n_levels * n_heads * n_query)
        r, ly, lx, inside, y_factor, x_factor = _level_tap(locations, n, q, m, lv, p, level_real,
                                                           level_index, one)
        rs = level_index[lv, 1]
        a = weights[n, q, m, lv, p]
        w00, w01, w10, w11 = bilinear_weights(ly, lx, one)
        acc_s = zero
        acc_y = zero
        acc_x = zero
        if inside:
            for d in range(depth):
                g = grad_out[n, q, m, d]
                v00 = value_pad[n, m, r, d]
                v01 = value_pad[n, m, r + 1, d]
                v10 = value_pad[n, m, r + rs, d]
                v11 = value_pad[n, m, r + rs + 1, d]
                if want_weights:
                    acc_s += g * (w00 * v00 + w01 * v01 + w10 * v10 + w11 * v11)
                if want_locations:
                    dy, dx = bilinear_coordinate_grads(v00, v01, v10, v11, ly, lx, one)
                    ga = a * g
                    acc_y += ga * dy
                    acc_x += ga * dx
        if want_weights:
            grad_weights[n, q, m, lv, p] = acc_s
        if want_locations:
            # d grid / d loc = 2 after d pixel / d grid = W / 2
            grad_locations[n, q, m, lv, p, 0] = acc_x * x_factor * two
            grad_locations[n, q, m, lv, p, 1] = acc_y * y_factor * two

"""Slow, obviously-correct float64 references for the ops under test.

Everything here is plain Python loops, or ``np.einsum`` over samples gathered by
plain loops, so that each line can be checked against the definition of the op
(torch.nn.functional.conv2d and torchvision.ops.deform_conv2d). Speed does not
matter: the tests only use tiny shapes.
"""

import math

import numpy as np


def pair(value):
    """``3 -> (3, 3)``, ``(1, 2) -> (1, 2)``, like torchvision's ``_pair``."""
    if isinstance(value, (int, np.integer)):
        return (int(value), int(value))
    first, second = value
    return (int(first), int(second))


def conv_output_size(size, kernel, stride, padding, dilation):
    """Output length of a strided, dilated, zero-padded correlation (torch's formula)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


# --------------------------------------------------------------------------- conv2d


def naive_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """float64 reference for ``torch.nn.functional.conv2d`` (a cross-correlation)."""
    x = np.asarray(input, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    n_images, channels, height, width = x.shape
    out_channels, channels_per_group, kh, kw = w.shape
    assert channels == channels_per_group * groups and out_channels % groups == 0
    out_per_group = out_channels // groups
    out_h = conv_output_size(height, kh, sh, ph, dh)
    out_w = conv_output_size(width, kw, sw, pw, dw)

    padded = np.zeros((n_images, channels, height + 2 * ph, width + 2 * pw))
    padded[:, :, ph : ph + height, pw : pw + width] = x
    out = np.zeros((n_images, out_channels, out_h, out_w))
    for n in range(n_images):
        for o in range(out_channels):
            first = (o // out_per_group) * channels_per_group
            for ho in range(out_h):
                for wo in range(out_w):
                    # The receptive field: kh x kw taps, dilation apart, at the
                    # strided top-left corner (ho * sh, wo * sw) of the padded image.
                    window = padded[
                        n,
                        first : first + channels_per_group,
                        ho * sh : ho * sh + dh * (kh - 1) + 1 : dh,
                        wo * sw : wo * sw + dw * (kw - 1) + 1 : dw,
                    ]
                    out[n, o, ho, wo] = np.sum(w[o] * window)
    if bias is not None:
        out += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return out


# --------------------------------------------------------------- bilinear sampling


def inside_sampling_window(y, x, height, width):
    """Whether a sample at (y, x) can touch the image at all (False for NaN and inf)."""
    return -1.0 < y < height and -1.0 < x < width


def bilinear_corners(y, x, height, width):
    """The in-image corners of the floor cell of (y, x), each with its bilinear weight.

    Returns a list of ``(row, col, weight)``; corners outside the image are left
    out, which is what zero padding means.
    """
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    corners = []
    for a, weight_y in ((0, 1.0 - ly), (1, ly)):
        for b, weight_x in ((0, 1.0 - lx), (1, lx)):
            row, col = y0 + a, x0 + b
            if 0 <= row < height and 0 <= col < width:
                corners.append((row, col, weight_y * weight_x))
    return corners


def naive_bilinear_sample(img2d, y, x):
    """Zero-padded bilinear sample of a 2-D image at (y, x), torchvision's rule."""
    height, width = img2d.shape
    if not inside_sampling_window(y, x, height, width):
        return 0.0
    return sum(weight * float(img2d[row, col]) for row, col, weight in bilinear_corners(y, x, height, width))


def naive_bilinear_coordinate_grad(img2d, y, x):
    """(d sample / dy, d sample / dx) by torchvision's floor-cell rule.

    The derivative of the bilinear form on the floor cell of (y, x), corners
    outside the image counting 0, with no window test (torchvision's
    ``get_coordinate_weight``): at ``y = -1`` it is the one-sided derivative
    towards row 0; wherever all four corners are outside it is 0. NaN and
    infinities give 0.
    """
    height, width = img2d.shape
    if not (math.isfinite(y) and math.isfinite(x)):
        return 0.0, 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0

    def corner(a, b):
        row, col = y0 + a, x0 + b
        return float(img2d[row, col]) if 0 <= row < height and 0 <= col < width else 0.0

    v00, v01, v10, v11 = corner(0, 0), corner(0, 1), corner(1, 0), corner(1, 1)
    d_dy = (1.0 - lx) * (v10 - v00) + lx * (v11 - v01)
    d_dx = (1.0 - ly) * (v01 - v00) + ly * (v11 - v10)
    return d_dy, d_dx


# ---------------------------------------------------------------- deform_conv2d


class _DeformGeometry:
    """Shapes and float64 copies of one deform_conv2d call's arguments."""

    def __init__(self, input, offset, weight, stride, padding, dilation, mask):
        self.x = np.asarray(input, dtype=np.float64)
        self.offset = np.asarray(offset, dtype=np.float64)
        self.weight = np.asarray(weight, dtype=np.float64)
        self.n_images, self.channels, self.height, self.width = self.x.shape
        self.out_channels, self.channels_per_group, self.kh, self.kw = self.weight.shape
        self.groups = self.channels // self.channels_per_group
        self.out_per_group = self.out_channels // self.groups
        self.offset_groups = self.offset.shape[1] // (2 * self.kh * self.kw)
        self.channels_per_offset_group = self.channels // self.offset_groups
        self.out_h, self.out_w = self.offset.shape[2:]
        (self.sh, self.sw), (self.ph, self.pw), (self.dh, self.dw) = (
            pair(stride),
            pair(padding),
            pair(dilation),
        )
        assert self.out_h == conv_output_size(self.height, self.kh, self.sh, self.ph, self.dh)
        assert self.out_w == conv_output_size(self.width, self.kw, self.sw, self.pw, self.dw)
        if mask is None:
            mask = np.ones((self.n_images, self.offset_groups * self.kh * self.kw, self.out_h, self.out_w))
        self.mask = np.asarray(mask, dtype=np.float64)

    def sample_points(self):
        """Yield ``(n, g, i, j, ho, wo, k, y, x)`` for every sample position.

        ``k = g*kh*kw + i*kw + j`` indexes the kernel point in ``mask``;
        ``offset[:, 2k]`` is its dy and ``offset[:, 2k + 1]`` its dx.
        """
        for n, g, i, j, ho, wo in np.ndindex(
            self.n_images, self.offset_groups, self.kh, self.kw, self.out_h, self.out_w
        ):
            k = g * self.kh * self.kw + i * self.kw + j
            y = ho * self.sh - self.ph + i * self.dh + self.offset[n, 2 * k, ho, wo]
            x = wo * self.sw - self.pw + j * self.dw + self.offset[n, 2 * k + 1, ho, wo]
            yield n, g, i, j, ho, wo, k, y, x

    def channels_of_offset_group(self, g):
        return range(g * self.channels_per_offset_group, (g + 1) * self.channels_per_offset_group)

    def samples(self):
        """samples[n, c, i, j, ho, wo]: input[n, c] sampled at kernel point (i, j) of (ho, wo)."""
        out = np.zeros((self.n_images, self.channels, self.kh, self.kw, self.out_h, self.out_w))
        for n, g, i, j, ho, wo, _, y, x in self.sample_points():
            for c in self.channels_of_offset_group(g):
                out[n, c, i, j, ho, wo] = naive_bilinear_sample(self.x[n, c], y, x)
        return out

    def mask_per_channel(self):
        """mask[n, c, i, j, ho, wo]: the mask value that multiplies samples[n, c, i, j, ho, wo]."""
        by_group = self.mask.reshape(
            self.n_images, self.offset_groups, self.kh, self.kw, self.out_h, self.out_w
        )
        return np.repeat(by_group, self.channels_per_offset_group, axis=1)

    def weight_groups(self):
        """Yield ``(out_slice, in_slice)`` for each of the ``groups`` weight groups."""
        for g in range(self.groups):
            yield (
                slice(g * self.out_per_group, (g + 1) * self.out_per_group),
                slice(g * self.channels_per_group, (g + 1) * self.channels_per_group),
            )


def naive_deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """float64 reference for ``torchvision.ops.deform_conv2d`` (mask used as given)."""
    geo = _DeformGeometry(input, offset, weight, stride, padding, dilation, mask)
    columns = geo.samples() * geo.mask_per_channel()
    out = np.zeros((geo.n_images, geo.out_channels, geo.out_h, geo.out_w))
    for outs, ins in geo.weight_groups():
        out[:, outs] = np.einsum("ocij,ncijhw->nohw", geo.weight[outs], columns[:, ins])
    if bias is not None:
        out += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return out


def naive_deform_conv2d_grads(grad_output, input, offset, weight, stride=1, padding=0, dilation=1, mask=None):
    """float64 gradients of ``sum(grad_output * deform_conv2d(...))``.

    Returns a dict with keys ``input, offset, mask, weight, bias`` (``mask`` is
    None when ``mask`` is None). The offset gradient follows torchvision's
    floor-cell rule (see :func:`naive_bilinear_coordinate_grad`).
    """
    geo = _DeformGeometry(input, offset, weight, stride, padding, dilation, mask)
    go = np.asarray(grad_output, dtype=np.float64)
    samples = geo.samples()
    mask_c = geo.mask_per_channel()
    columns = samples * mask_c

    # d loss / d columns[n, c, i, j, ho, wo], columns = mask * sample.
    grad_columns = np.zeros_like(columns)
    grad_weight = np.zeros_like(geo.weight)
    for outs, ins in geo.weight_groups():
        grad_columns[:, ins] = np.einsum("nohw,ocij->ncijhw", go[:, outs], geo.weight[outs])
        grad_weight[outs] = np.einsum("nohw,ncijhw->ocij", go[:, outs], columns[:, ins])

    grad_mask_c = grad_columns * samples
    grad_mask = grad_mask_c.reshape(
        geo.n_images, geo.offset_groups, geo.channels_per_offset_group, geo.kh, geo.kw, geo.out_h, geo.out_w
    ).sum(axis=2)
    grad_mask = grad_mask.reshape(geo.mask.shape)

    grad_input = np.zeros_like(geo.x)
    grad_offset = np.zeros_like(geo.offset)
    for n, g, i, j, ho, wo, k, y, x in geo.sample_points():
        inside = inside_sampling_window(y, x, geo.height, geo.width)
        corners = bilinear_corners(y, x, geo.height, geo.width) if inside else []
        for c in geo.channels_of_offset_group(g):
            grad_sample = grad_columns[n, c, i, j, ho, wo] * geo.mask[n, k, ho, wo]
            for row, col, corner_weight in corners:
                grad_input[n, c, row, col] += grad_sample * corner_weight
            # torchvision: the coordinate weight has no window test
            d_dy, d_dx = naive_bilinear_coordinate_grad(geo.x[n, c], y, x)
            grad_offset[n, 2 * k, ho, wo] += grad_sample * d_dy
            grad_offset[n, 2 * k + 1, ho, wo] += grad_sample * d_dx

    return {
        "input": grad_input,
        "offset": grad_offset,
        "mask": None if mask is None else grad_mask,
        "weight": grad_weight,
        "bias": go.sum(axis=(0, 2, 3)),
    }


# ------------------------------------------------------- comparing with references


def tolerance(dtype):
    """Relative tolerance of a result in ``dtype`` against a float64 reference.

    float64 results agree to rounding of a few hundred terms; float32 ones to
    ~1e-4 of the magnitude of the result.
    """
    return 1e-10 if np.dtype(dtype) == np.float64 else 1e-4


def assert_close(actual, expected, *, dtype, err_msg=""):
    """``actual`` (computed in ``dtype``) matches the float64 ``expected``.

    The absolute tolerance scales with the largest magnitude in ``expected`` (at
    least 1), since the error of a sum follows its terms, not its (possibly
    cancelled) value.
    """
    assert actual.shape == expected.shape, (actual.shape, expected.shape, err_msg)
    rtol = tolerance(dtype)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64), expected, rtol=rtol, atol=rtol * scale, err_msg=err_msg
    )


def assert_same_up_to_summation_order(actual, expected, *, err_msg=""):
    """Two results of the same op in the same dtype that may sum in a different order.

    Splitting work into chunks (or across threads) may reorder a reduction, so
    the last bits may differ; anything beyond a few ulps of the magnitude is a bug.
    """
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype, err_msg)
    assert actual.shape == expected.shape, (actual.shape, expected.shape, err_msg)
    rtol = 1e-12 if expected.dtype == np.float64 else 1e-5
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=err_msg)


# ----------------------------------------------------- ms_deform_attn (Deformable DETR)


def _level_pixel(loc, size):
    """Pixel coordinate of a [0, 1] location on a level axis of ``size`` pixels:
    grid_sample's ``align_corners=False`` unnormalisation of ``2 * loc - 1``."""
    grid = 2.0 * loc - 1.0
    return ((grid + 1.0) * size - 1.0) / 2.0


def _levels(value, spatial_shapes):
    """The levels of ``value`` (N, S, M, D) as float64 (N, M, D, H_l, W_l) planes."""
    v = np.asarray(value, dtype=np.float64)
    n, _, m, d = v.shape
    planes, first = [], 0
    for h, w in np.asarray(spatial_shapes).tolist():
        planes.append(v[:, first:first + h * w].reshape(n, h, w, m, d).transpose(0, 3, 4, 1, 2))
        first += h * w
    return planes


def naive_ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights):
    """float64 reference for Deformable DETR's ``ms_deform_attn_core_pytorch``:
    grid_sample (bilinear, zeros, align_corners=False) per level at
    ``2 * loc - 1``, weighted and summed. Returns (N, Lq, M*D)."""
    planes = _levels(value, spatial_shapes)
    loc = np.asarray(sampling_locations, dtype=np.float64)
    a = np.asarray(attention_weights, dtype=np.float64)
    n_batch, n_query, n_heads, n_levels, n_points = a.shape
    depth = np.shape(value)[3]
    out = np.zeros((n_batch, n_query, n_heads, depth))
    for n, q, m, lv, p in np.ndindex(*a.shape):
        h, w = planes[lv].shape[3:]
        x = _level_pixel(loc[n, q, m, lv, p, 0], w)
        y = _level_pixel(loc[n, q, m, lv, p, 1], h)
        for d in range(depth):
            out[n, q, m, d] += a[n, q, m, lv, p] * naive_bilinear_sample(planes[lv][n, m, d], y, x)
    return out.reshape(n_batch, n_query, n_heads * depth)


def naive_ms_deform_attn_grads(grad_output, value, spatial_shapes, sampling_locations,
                               attention_weights):
    """float64 gradients of ``sum(grad_output * ms_deform_attn(...))`` as PyTorch's
    autograd gives them on the reference: a dict with keys ``value``,
    ``sampling_locations`` and ``attention_weights``. The location gradient is
    grid_sample's floor-cell rule (:func:`naive_bilinear_coordinate_grad`, which
    is 0 beyond the window ``-1 <= x < W``) times ``W_l``: ``W_l / 2`` from
    unnormalising, 2 from ``2 * loc - 1``."""
    planes = _levels(value, spatial_shapes)
    loc = np.asarray(sampling_locations, dtype=np.float64)
    a = np.asarray(attention_weights, dtype=np.float64)
    n_batch, n_query, n_heads, n_levels, n_points = a.shape
    depth = np.shape(value)[3]
    go = np.asarray(grad_output, dtype=np.float64).reshape(n_batch, n_query, n_heads, depth)
    grad_planes = [np.zeros_like(plane) for plane in planes]
    grad_loc = np.zeros_like(loc)
    grad_a = np.zeros_like(a)
    for n, q, m, lv, p in np.ndindex(*a.shape):
        h, w = planes[lv].shape[3:]
        x = _level_pixel(loc[n, q, m, lv, p, 0], w)
        y = _level_pixel(loc[n, q, m, lv, p, 1], h)
        inside = math.isfinite(x) and math.isfinite(y) and -1.0 <= y < h and -1.0 <= x < w
        corners = bilinear_corners(y, x, h, w) if inside else []
        for d in range(depth):
            plane = planes[lv][n, m, d]
            g = go[n, q, m, d]
            grad_a[n, q, m, lv, p] += g * naive_bilinear_sample(plane, y, x)
            for row, col, corner_weight in corners:
                grad_planes[lv][n, m, d, row, col] += a[n, q, m, lv, p] * g * corner_weight
            d_dy, d_dx = naive_bilinear_coordinate_grad(plane, y, x)
            grad_loc[n, q, m, lv, p, 0] += a[n, q, m, lv, p] * g * d_dx * w
            grad_loc[n, q, m, lv, p, 1] += a[n, q, m, lv, p] * g * d_dy * h
    grad_value = np.concatenate(
        [gp.transpose(0, 3, 4, 1, 2).reshape(n_batch, gp.shape[3] * gp.shape[4], n_heads, depth)
         for gp in grad_planes],
        axis=1)
    return {"value": grad_value, "sampling_locations": grad_loc, "attention_weights": grad_a}


# ------------------------------------------------- grid_sample: volumes, bicubic


def grid_pixel(coord, size, align_corners):
    """PyTorch's unnormalisation of one grid coordinate, in float64."""
    if align_corners:
        return (coord + 1) / 2 * (size - 1)
    return ((coord + 1) * size - 1) / 2


def fold_coordinate(pixel, size, padding_mode, align_corners):
    """A pixel coordinate folded into the image by the padding mode (float64):
    clipped to [0, size - 1] (border), or reflected about the pixel centres
    (align_corners) or outer edges any number of times and then clipped."""
    if padding_mode == "zeros":
        return pixel
    if padding_mode == "reflection" and not math.isfinite(pixel):
        return math.nan
    if padding_mode == "reflection":
        low, high = (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)
        if high == low:
            pixel = low
        else:
            span = high - low
            # fmod is exact for any finite value: 1e30 folds exactly too
            extra = math.fmod(abs(pixel - low), 2 * span)
            pixel = low + extra if extra <= span else low + 2 * span - extra
    return min(max(pixel, 0.0), size - 1.0)


def naive_grid_sample_3d(input, grid, mode, padding_mode, align_corners):
    """5-D grid_sample in float64 loops: trilinear over the 8 corners of the
    floor cell (corners outside the volume read 0), or the nearest voxel
    (halves to even)."""
    n_images, channels, depth, height, width = input.shape
    volume = np.asarray(input, np.float64)
    out = np.zeros((n_images, channels) + grid.shape[1:4])
    for n, k, i, j in np.ndindex(n_images, *grid.shape[1:4]):
        point = [fold_coordinate(grid_pixel(float(grid[n, k, i, j, a]), size, align_corners), size,
                                 padding_mode, align_corners)
                 for a, size in enumerate((width, height, depth))]
        x, y, z = point
        if not all(math.isfinite(v) for v in point):
            continue
        if mode == "nearest":
            zi, yi, xi = (int(np.rint(v)) for v in (z, y, x))
            if 0 <= zi < depth and 0 <= yi < height and 0 <= xi < width:
                out[n, :, k, i, j] = volume[n, :, zi, yi, xi]
            continue
        z0, y0, x0 = math.floor(z), math.floor(y), math.floor(x)
        for dz, dy, dx in np.ndindex(2, 2, 2):
            zc, yc, xc = z0 + dz, y0 + dy, x0 + dx
            if 0 <= zc < depth and 0 <= yc < height and 0 <= xc < width:
                weight = ((z - z0 if dz else 1 - (z - z0)) * (y - y0 if dy else 1 - (y - y0))
                          * (x - x0 if dx else 1 - (x - x0)))
                out[n, :, k, i, j] += weight * volume[n, :, zc, yc, xc]
    return out


def cubic_convolution_weights(t, a=-0.75):
    """Keys' cubic convolution weights of the taps at floor - 1 .. floor + 2."""
    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def naive_bicubic_grid_sample(input, grid, padding_mode, align_corners):
    """4-D bicubic grid_sample in float64 loops, PyTorch's formula: the 4 x 4
    taps around the unnormalised (unfolded) coordinate, each folded by the
    padding mode on its own and read as 0 outside the image."""
    n_images, channels, height, width = input.shape
    image = np.asarray(input, np.float64)
    out = np.zeros((n_images, channels) + grid.shape[1:3])
    for n, i, j in np.ndindex(n_images, *grid.shape[1:3]):
        x = grid_pixel(float(grid[n, i, j, 0]), width, align_corners)
        y = grid_pixel(float(grid[n, i, j, 1]), height, align_corners)
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        x0, y0 = math.floor(x), math.floor(y)
        wx, wy = cubic_convolution_weights(x - x0), cubic_convolution_weights(y - y0)
        for r in range(4):
            for s in range(4):
                yt = fold_coordinate(float(y0 - 1 + r), height, padding_mode, align_corners)
                xt = fold_coordinate(float(x0 - 1 + s), width, padding_mode, align_corners)
                if 0 <= yt <= height - 1 and 0 <= xt <= width - 1:
                    out[n, :, i, j] += wy[r] * wx[s] * image[n, :, int(yt), int(xt)]
    return out

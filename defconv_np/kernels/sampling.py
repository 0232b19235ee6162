"""Per-point maths of bilinear sampling, written once for every target.

These are plain Python functions on scalars. ``kernels.cpu.device`` compiles
them with ``numba.njit`` for the CPU loops and ``kernels.cuda.device`` with
``cuda.jit(device=True)`` for the GPU kernels, so the boundary rules and
derivatives cannot drift apart between backends.

Conventions
-----------
* ``one`` is the constant 1 in the arithmetic type of the caller. Numba types a
  bare literal as float64 or int64, which would silently promote float32 GPU
  arithmetic to float64; passing ``one`` keeps each kernel in its own precision.
* Planes are read through a zero-padded copy with two zero rows/columns on the
  top/left and one on the bottom/right (``PAD_BEFORE``/``PAD_AFTER``). Every
  corner of a sample inside the sampling window then lies inside the padded
  plane, and an outside sample can point at ``base = 0``, whose whole 2x2 cell
  is zero padding. This removes every bounds branch from the inner loops.
* A function here never calls another one here: each target compiles its own
  copies, and a call would reach the uncompiled Python function.
"""

import math

#: Zero rows/columns before (top/left) and after (bottom/right) a padded plane.
PAD_BEFORE = 2
PAD_AFTER = 1


def padded_width(width):
    return width + PAD_BEFORE + PAD_AFTER


def padded_height(height):
    return height + PAD_BEFORE + PAD_AFTER


def deform_tap(y, x, height, width, row_stride, one):
    """Locate a deformable-conv sample in a padded plane (torchvision's rule).

    A sample with ``y < -1``, ``y >= height``, ``x < -1`` or ``x >= width``
    is zero with zero gradients; NaN fails every comparison and lands there
    too, as do infinities and huge values, so no index is ever formed from
    them. Otherwise the sample is bilinear in the cell of ``floor(y), floor(x)``.

    ``y = -1`` (or ``x = -1``) is inside: its value is 0 (the weight of row
    -1 is 1 and that row is padding), but torchvision's offset gradient there
    is the floor-cell derivative, towards row 0, with no window test.
    torchvision's forward and input gradient treat -1 as outside; at -1 they
    agree with this rule, since every in-image corner has weight 0.

    Written without branches (selects only), so that a CPU loop over samples
    vectorises: an outside position is replaced by 0 before anything is
    formed from it, then its results by the outside values.

    Returns
    -------
    base : int
        Flat index of the top-left corner in the padded plane (0 when outside).
    ly, lx : float
        Fractional position inside the cell (0 when outside).
    inside : bool
    """
    zero = one - one
    inside = (y >= -one) & (y < height) & (x >= -one) & (x < width)
    ys = y if inside else zero
    xs = x if inside else zero
    y0 = math.floor(ys)
    x0 = math.floor(xs)
    base = (int(y0) + PAD_BEFORE) * row_stride + int(x0) + PAD_BEFORE
    return (base if inside else 0), ys - y0, xs - x0, inside


def bilinear_weights(ly, lx, one):
    """Weights of the corners (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1)."""
    hy = one - ly
    hx = one - lx
    return hy * hx, hy * lx, ly * hx, ly * lx


def bilinear_value(v00, v01, v10, v11, ly, lx, one):
    """The bilinear interpolant of four corner values."""
    hy = one - ly
    hx = one - lx
    return hy * (hx * v00 + lx * v01) + ly * (hx * v10 + lx * v11)


def bilinear_coordinate_grads(v00, v01, v10, v11, ly, lx, one):
    """Derivatives of the interpolant with respect to y and x, taken in the
    floor cell (so at an integer coordinate the cell to the lower-right is used,
    as torchvision and PyTorch do)."""
    dy = (one - lx) * (v10 - v00) + lx * (v11 - v01)
    dx = (one - ly) * (v01 - v00) + ly * (v11 - v10)
    return dy, dx


# --- spatial transformer (grid_sample) ---------------------------------------
#
# PyTorch's grid_sample in four steps, each a function below: unnormalise the
# grid coordinate to pixels, fold it into the image by the padding mode (clip,
# or reflect then clip), locate it in the padded plane, and interpolate there
# with the bilinear functions above. Each step also returns its derivative
# factor, and the grid gradient is their product times the floor-cell
# derivative of the interpolant, which is PyTorch's chain rule term for term.
# ``size`` arguments are plane lengths given in the caller's arithmetic type,
# rounded once from exact integers (``_planes.grid_axis``); window tests take
# ``limit``s, the smallest values of that type not below the plane lengths.

#: Codes of grid_sample's ``padding_mode`` and ``mode``, in PyTorch's enum order.
GRID_PADDING_MODES = ("zeros", "border", "reflection")
GRID_INTERPOLATION_MODES = ("bilinear", "nearest", "bicubic")
PADDING_ZEROS, PADDING_BORDER, PADDING_REFLECTION = 0, 1, 2
INTERPOLATION_BILINEAR, INTERPOLATION_NEAREST, INTERPOLATION_BICUBIC = 0, 1, 2


def grid_unnormalize(coord, size, size_m1, align_corners, one):
    """Pixel coordinate of a normalised grid coordinate, and its derivative.

    With ``align_corners`` -1 and 1 are the centres of the first and last
    pixels; without it they are the outer edges of those pixels. ``size`` and
    ``size_m1`` (size - 1) are given rounded from exact integers, as PyTorch
    forms them (a float ``size - 1`` would round twice above 2**24 in float32).
    """
    two = one + one
    if align_corners:
        return ((coord + one) / two) * size_m1, size_m1 / two
    return ((coord + one) * size - one) / two, size / two


def clip_coordinate(x, size_m1, one):
    """Clamp ``x`` to ``[0, size - 1]``, with the derivative of the clamp.

    The derivative is 1 strictly inside and 0 on the end points too (PyTorch
    counts them as out of range). NaN is returned unchanged, with derivative 0.
    """
    zero = one - one
    high = size_m1
    # selects, not branches, so that a CPU loop over coordinates vectorises;
    # x >= high and x <= 0 hold together only when high is 0
    clipped = high if x >= high else x
    clipped = zero if x <= zero else clipped
    return clipped, (one if (x > zero) & (x < high) else zero)


def reflect_coordinate(x, low, span, one):
    """Reflect ``x`` about ``low`` and ``low + span`` until it lies between
    them, with the derivative of the reflection (+1 or -1).

    ``low`` and ``span`` come as PyTorch forms them from its doubled integer
    bounds: ``twice_low / 2`` and ``(twice_high - twice_low) / 2``, the
    difference taken in integers and rounded once (``_planes.grid_axis``).
    The remainder (``fmod`` of non-negative operands) is exact for any finite
    ``x``; infinities and NaN give NaN (derivative 0), which no
    sampling window accepts.
    """
    zero = one - one
    if span == zero:
        # a single pixel centre: every finite x lands on it (x - x is 0), NaN
        # and infinities stay NaN
        return x - x, zero
    distance = x - low
    sign = one
    if distance < zero:
        sign = -one
        distance = -distance
    if distance - distance != zero:
        return distance - distance, zero
    # distance mod 2*span; the remainder is exact, and so are the first two
    # cases (the second by Sterbenz's lemma), which spare nearly every
    # coordinate the slow ``fmod`` call
    period = span + span
    if distance < period:
        extra = distance
    elif distance < period + period:
        extra = distance - period
    else:
        extra = distance % period
    if extra > span:
        return span + span - extra + low, -sign
    return extra + low, sign


def reflect_near(x, low, span, one):
    """``reflect_coordinate`` for ``|x - low| < 4 * span`` (two periods),
    written with selects so that a CPU loop over coordinates vectorises.

    Returns the reflected ``x``, its derivative and ``within``: whether
    ``x`` lies within two periods, where both equal ``reflect_coordinate``'s
    bit for bit. Elsewhere (further out, infinities, NaN, ``span == 0``) they
    are meaningless and the caller must use ``reflect_coordinate``."""
    zero = one - one
    distance = x - low
    negative = distance < zero
    distance = -distance if negative else distance
    period = span + span
    # within one period the remainder is the distance, within two it is one
    # subtraction away, exact by Sterbenz's lemma
    extra = distance if distance < period else distance - period
    sign = -one if negative else one
    flipped = extra > span
    pixel = (span + span - extra + low) if flipped else extra + low
    return pixel, (-sign if flipped else sign), distance < period + period


#: Locate a grid_sample sample in a padded plane (PyTorch's rule): bilinear in
#: the cell of ``floor(y), floor(x)`` when ``-1 <= y < height`` and
#: ``-1 <= x < width``, corners outside the image being zero padding; -1
#: itself is inside, where the value is 0 but the derivative towards the image
#: is not; everything else, NaN included, is outside and gets no index
#: (``base = 0``, ``ly = lx = 0``). That is ``deform_tap``'s rule (and
#: branch-free body), under the name the grid_sample kernels use.
grid_bilinear_tap = deform_tap


def grid_nearest_tap(y, x, height, width, row_stride, one):
    """Flat index in a padded plane of the pixel nearest to a sample.

    Halves round to even, as PyTorch's ``nearbyint`` does. Samples with
    ``-1 <= y < height`` and ``-1 <= x < width`` round to a pixel or to the
    zero padding around the image; the others (NaN included) get ``base = 0``,
    which is padding, and ``inside = False``.
    """
    if y >= -one and y < height and x >= -one and x < width:
        half = one / (one + one)
        y0 = math.floor(y)
        x0 = math.floor(x)
        fy = y - y0
        fx = x - x0
        # parity and the step to the next pixel in integers: a float
        # ``% 2`` or ``+ 1`` would promote float32 GPU code to float64
        yi = int(y0)
        xi = int(x0)
        if fy > half or (fy == half and yi % 2 != 0):
            yi += 1
        if fx > half or (fx == half and xi % 2 != 0):
            xi += 1
        return (yi + PAD_BEFORE) * row_stride + xi + PAD_BEFORE, True
    return 0, False


# --- volumes (5-D grid_sample) -----------------------------------------------
#
# Padded volumes pad depth, height and width alike (PAD_BEFORE before,
# PAD_AFTER after); ``plane_stride`` = (H + 3) * (W + 3) is the stride of one
# padded depth slice.


def grid_trilinear_tap(z, y, x, depth, height, width, row_stride, plane_stride, one):
    """Locate a 5-D grid_sample sample in a padded volume (PyTorch's rule).

    Trilinear in the cell of ``floor(z), floor(y), floor(x)`` when
    ``-1 <= z < depth``, ``-1 <= y < height`` and ``-1 <= x < width``;
    everything else, NaN included, is outside, with ``base = 0`` (a cell of
    padding) and zero fractions.

    Returns ``base, lz, ly, lx, inside``.
    """
    if (z >= -one and z < depth and y >= -one and y < height
            and x >= -one and x < width):
        z0 = math.floor(z)
        y0 = math.floor(y)
        x0 = math.floor(x)
        base = ((int(z0) + PAD_BEFORE) * plane_stride + (int(y0) + PAD_BEFORE) * row_stride
                + int(x0) + PAD_BEFORE)
        return base, z - z0, y - y0, x - x0, True
    zero = one - one
    return 0, zero, zero, zero, False


def grid_nearest_tap_3d(z, y, x, depth, height, width, row_stride, plane_stride, one):
    """Flat index in a padded volume of the voxel nearest to a sample, halves
    to even (as ``grid_nearest_tap``); outside samples (NaN included) get
    ``base = 0`` and ``inside = False``."""
    if (z >= -one and z < depth and y >= -one and y < height
            and x >= -one and x < width):
        half = one / (one + one)
        z0 = math.floor(z)
        y0 = math.floor(y)
        x0 = math.floor(x)
        fz = z - z0
        fy = y - y0
        fx = x - x0
        zi = int(z0)
        yi = int(y0)
        xi = int(x0)
        if fz > half or (fz == half and zi % 2 != 0):
            zi += 1
        if fy > half or (fy == half and yi % 2 != 0):
            yi += 1
        if fx > half or (fx == half and xi % 2 != 0):
            xi += 1
        return ((zi + PAD_BEFORE) * plane_stride + (yi + PAD_BEFORE) * row_stride
                + xi + PAD_BEFORE), True
    return 0, False


def trilinear_weights(lz, ly, lx, one):
    """Weights of the corners (z, y, x) = 000, 001, 010, 011, 100, 101, 110, 111
    of the cell (x fastest)."""
    hz = one - lz
    hy = one - ly
    hx = one - lx
    return (hz * hy * hx, hz * hy * lx, hz * ly * hx, hz * ly * lx,
            lz * hy * hx, lz * hy * lx, lz * ly * hx, lz * ly * lx)


def trilinear_coordinate_grads(v000, v001, v010, v011, v100, v101, v110, v111, lz, ly, lx,
                               one):
    """Derivatives of the trilinear interpolant with respect to z, y and x,
    taken in the floor cell (PyTorch's convention at integer coordinates)."""
    hz = one - lz
    hy = one - ly
    hx = one - lx
    dx = (hz * (hy * (v001 - v000) + ly * (v011 - v010))
          + lz * (hy * (v101 - v100) + ly * (v111 - v110)))
    dy = (hz * (hx * (v010 - v000) + lx * (v011 - v001))
          + lz * (hx * (v110 - v100) + lx * (v111 - v101)))
    dz = (hy * (hx * (v100 - v000) + lx * (v101 - v001))
          + ly * (hx * (v110 - v010) + lx * (v111 - v011)))
    return dz, dy, dx


# --- bicubic (4-D grid_sample, mode="bicubic") -------------------------------
#
# PyTorch's bicubic grid_sample: the unnormalised coordinate (no padding mode
# applied to it) splits into floor and fraction t; the 4 x 4 taps at
# floor - 1 .. floor + 2 are each folded by the padding mode and read as 0
# when outside the image (``get_value_bounded``); the weights are Keys' cubic
# convolution with A = -0.75.


def cubic_split(coord, one):
    """``(floor(coord), coord - floor(coord))`` in the caller's float type,
    exact for every finite ``coord`` (a float remainder, no integer
    conversion, so 1e30 is safe); non-finite values give NaN fractions."""
    fraction = coord % one
    return coord - fraction, fraction


def cubic_coefficients(t, one):
    """Weights of the taps at floor - 1, floor, floor + 1, floor + 2 for the
    fraction ``t``: PyTorch's ``get_cubic_upsample_coefficients`` (A = -0.75,
    formed exactly from ``one``), term for term."""
    two = one + one
    three = two + one
    four = two + two
    a = -three / four
    x = t + one
    c0 = ((a * x - (four + one) * a) * x + (four + four) * a) * x - four * a
    x = t
    c1 = ((a + two) * x - (a + three)) * x * x + one
    x = one - t
    c2 = ((a + two) * x - (a + three)) * x * x + one
    x = two - t
    c3 = ((a * x - (four + one) * a) * x + (four + four) * a) * x - four * a
    return c0, c1, c2, c3


def cubic_coefficient_grads(t, one):
    """d/dt of ``cubic_coefficients`` (PyTorch's ``get_cubic_coefficients_grad``
    with the sign of its subtraction folded in)."""
    two = one + one
    three = two + one
    four = two + two
    a = -three / four
    x = t + one
    g0 = (three * a * x - (four + four + two) * a) * x + (four + four) * a
    x = t
    g1 = (three * (a + two) * x - two * (a + three)) * x
    x = one - t
    g2 = -((three * (a + two) * x - two * (a + three)) * x)
    x = two - t
    g3 = -((three * a * x - (four + four + two) * a) * x + (four + four) * a)
    return g0, g1, g2, g3


def bounded_index(coord, size_m1, one):
    """``(int(coord), True)`` for a (folded) tap coordinate inside
    ``[0, size - 1]``, else ``(0, False)``; NaN is outside."""
    zero = one - one
    if coord >= zero and coord <= size_m1:
        return int(coord), True
    return 0, False

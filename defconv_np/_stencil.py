"""The four-tap stencils of active convolution, planned on the host.

With one offset per kernel point for every output position, every sample of
kernel point ``k`` (offset group ``g``) has the same cell shift
``floor(dy), floor(dx)`` and the same fractional part ``ly, lx``: its columns
are a fixed bilinear blend of four integer-shifted copies of the zero-padded
input. This module turns the (2*G*K,) offset into those shifts and fractions,
and into the zero border the padded input needs so that every tap of every
output pixel lies inside it (no per-sample bounds test in the kernels).

A kernel point is *absent* when an offset is NaN or infinite, or when its taps
never reach the image for any output position (1e30 included): its columns are
0 and its gradients are 0, exactly what deform_conv2d gives such samples
(they lie outside its sampling window, or read only zero padding). Integers
here are Python ints, so huge offsets form no overflowing index.
"""

from typing import NamedTuple

import numpy as np

#: The fast path pads the input for real; past this many times the plane of a
#: dense conv (with one more row/column each side), the deformable path on
#: broadcast offsets is used instead (it pads by a fixed 2/1).
MAX_PLANE_GROWTH = 4


class ActiveStencil(NamedTuple):
    """Per kernel point ``gk = g*K + k`` of offset group ``g``.

    taps : (G*K, 2) int64
        Padded-plane row and column of the top-left tap of output pixel (0, 0):
        output ``(ho, wo)`` reads rows ``ho*sh + taps[gk, 0] + (0, 1)`` and columns
        ``wo*sw + taps[gk, 1] + (0, 1)``. 0 for absent points.
    fracs : (G*K, 2), input dtype
        ``ly, lx``, the fractional parts of ``dy, dx`` (0 for absent points).
    present : (G*K,) bool
    before, after : (int, int)
        Zero border of the padded input: (top, left) and (bottom, right).
    """

    taps: np.ndarray
    fracs: np.ndarray
    present: np.ndarray
    before: tuple
    after: tuple


def plan(offset, geom):
    """``ActiveStencil`` of a host (NumPy) offset (2*G*K,) for conv geometry ``geom``."""
    kw = geom.kernel[1]
    n_k = geom.kernel_points
    pairs = offset.reshape(-1, 2)
    points = pairs.shape[0]
    sizes = (geom.height, geom.width)
    outs = (geom.out_h, geom.out_w)
    taps = np.zeros((points, 2), np.int64)
    fracs = np.zeros((points, 2), offset.dtype)
    present = np.zeros(points, bool)
    starts = []
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(pairs).all(axis=1)
        floors = np.floor(pairs)
        fractions = pairs - floors
    # A tiny negative offset has a fraction that rounds to 1 (-1e-9 in float32):
    # take the next cell with fraction 0 instead, the cell deform_conv2d picks
    # where ``y_base + dy`` rounds to an integer, and keep fractions in [0, 1).
    whole = fractions == 1
    floors[whole] += 1
    fractions[whole] = 0
    for gk in range(points):
        if not finite[gk]:
            continue
        k = gk % n_k
        index = (k // kw, k % kw)
        start = []
        for axis in range(2):
            first = (-geom.padding[axis] + index[axis] * geom.dilation[axis]
                     + int(floors[gk, axis]))
            last = first + (outs[axis] - 1) * geom.stride[axis] + 1   # the "+1" tap
            if last < 0 or first >= sizes[axis]:
                break
            start.append((first, last))
        else:
            present[gk] = True
            fracs[gk] = fractions[gk]
            starts.append((gk, start))
    before = [0, 0]
    after = [0, 0]
    for _, start in starts:
        for axis, (first, last) in enumerate(start):
            before[axis] = max(before[axis], -first)
            after[axis] = max(after[axis], last - (sizes[axis] - 1))
    for gk, start in starts:
        taps[gk] = [start[axis][0] + before[axis] for axis in range(2)]
    return ActiveStencil(taps, fracs, present, tuple(before), tuple(after))


def worth_it(stencil, geom):
    """Whether the padded plane of the fast path stays within
    ``MAX_PLANE_GROWTH`` times the plane of a dense conv of this geometry."""
    (top, left), (bottom, right) = stencil.before, stencil.after
    plane = (geom.height + top + bottom) * (geom.width + left + right)
    dense = (geom.height + 2 * geom.padding[0] + 2) * (geom.width + 2 * geom.padding[1] + 2)
    return plane <= MAX_PLANE_GROWTH * dense

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


def deform_tap(y, x, height, width, row_stride, one):
    """Locate a deformable-conv sample in a padded plane (torchvision's rule).

    A sample with ``y <= -1``, ``y >= height``, ``x <= -1`` or ``x >= width``
    is zero with zero gradient; NaN fails every comparison and lands there too,
    as do infinities and huge values, so no index is ever formed from them.
    Otherwise the sample is bilinear in the cell of ``floor(y), floor(x)``.

    Returns
    -------
    base : int
        Flat index of the top-left corner in the padded plane (0 when outside).
    ly, lx : float
        Fractional position inside the cell (0 when outside).
    inside : bool
    """
    if y > -1 and y < height and x > -1 and x < width:
        y0 = math.floor(y)
        x0 = math.floor(x)
        base = (int(y0) + PAD_BEFORE) * row_stride + int(x0) + PAD_BEFORE
        return base, y - y0, x - x0, True
    zero = one - one
    return 0, zero, zero, False


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

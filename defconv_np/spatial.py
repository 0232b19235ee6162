"""Spatial transformer sampling: affine sampling grids and grid_sample.

Jaderberg et al., "Spatial Transformer Networks", NIPS 2015: a grid of
sampling positions, here usually an affine map of the output pixels, and
differentiable sampling of the input at those positions. Semantics follow
``torch.nn.functional.affine_grid`` and ``torch.nn.functional.grid_sample`` for
4-D inputs, including their boundary rules and gradient conventions.
"""

import numbers
from typing import NamedTuple

from . import _validate
from ._typing import Array, IntPair, Iterable, Optional, Size
from ._arrays import array_module, common_float_dtype, on_arrays_device
from ._backends import launchers
from .kernels import sampling


class GridSampleGrads(NamedTuple):
    """Gradients of :func:`grid_sample`; an entry not asked for is None."""

    input: object
    grid: object


GRID_SAMPLE_GRADS = GridSampleGrads._fields


def _choice(value, name, allowed):
    """The index of ``value`` in ``allowed`` (the kernels' code for it)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {allowed}, got {value!r}")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return allowed.index(value)


def _output_size(size, itemsize):
    """Check ``size`` = (N, C, H, W): N >= 0, C, H, W >= 1, and a grid
    (N, H, W, 2) and base grid (H, W, 3) of ``itemsize``-byte values that
    arrays can hold."""
    if isinstance(size, (str, bytes)) or not hasattr(size, "__len__") or len(size) != 4:
        raise ValueError(f"size must be (N, C, H, W), got {size!r}")
    out = []
    for item, minimum in zip(size, (0, 1, 1, 1)):
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise TypeError(f"size must be four ints (N, C, H, W), got {size!r}")
        if item < minimum:
            raise ValueError(f"size must be (N, C, H, W) with N >= 0 and C, H, W >= 1, got {size!r}")
        out.append(int(item))
    n, _, height, width = out
    for what, shape in (("grid (N, H, W, 2)", (n, height, width, 2)),
                        ("untransformed grid (H, W, 3)", (height, width, 3))):
        if not _validate.addressable(shape, itemsize):
            raise ValueError(f"size {size!r} is too large: the {what} would be {shape}, "
                             f"over 2**63 - 1 bytes")
    return tuple(out)


def _base_coordinates(xp, steps, align_corners, dtype):
    """The ``steps`` normalised pixel-centre coordinates along one axis (0 for a
    single step, as PyTorch does)."""
    if steps == 1:
        return xp.zeros(1, dtype)
    if align_corners:
        return xp.linspace(-1.0, 1.0, steps).astype(dtype)
    return ((xp.arange(steps) * 2.0 + 1.0) / steps - 1.0).astype(dtype)


def _base_grid(xp, height, width, align_corners, dtype):
    """(H*W, 3): the rows (x, y, 1) of the untransformed grid, x fastest."""
    base = xp.empty((height, width, 3), dtype)
    base[:, :, 0] = _base_coordinates(xp, width, align_corners, dtype)[None, :]
    base[:, :, 1] = _base_coordinates(xp, height, align_corners, dtype)[:, None]
    base[:, :, 2] = 1
    return base.reshape(height * width, 3)


@on_arrays_device
def affine_grid(theta: Array, size: Size, align_corners: bool = False) -> Array:
    """Sampling grid of a batch of affine maps.

    Parameters
    ----------
    theta : ndarray, (N, 2, 3)
        Maps output coordinates ``(x, y, 1)``, normalised to [-1, 1], to input
        coordinates ``(x', y')``.
    size : (int, int, int, int)
        The output size (N, C, H, W); C is not used.
    align_corners : bool
        If True, -1 and 1 are the centres of the corner pixels; if False, the
        outer edges of the corner pixels (so the grid does not depend on the
        resolution).

    Returns
    -------
    ndarray, (N, H, W, 2)
        ``grid[n, i, j] = theta[n] @ (x_j, y_i, 1)``, x first, with
        ``x_j = -1 + 2j / (W - 1)`` (align_corners) or ``(2j + 1) / W - 1``;
        a length-1 axis has the single coordinate 0.
        Same array type (NumPy or CuPy) and dtype (float32 or float64) as ``theta``.

    Raises
    ------
    TypeError
        An array argument that is not a ``numpy.ndarray`` or ``cupy.ndarray``, a dtype
        other than float32/float64 or arrays of different dtypes, NumPy and CuPy arrays
        mixed, ``size`` not four ints, or a non-bool ``align_corners``.
    ValueError
        ``theta`` not (N, 2, 3) with N = ``size[0]``, ``size`` with C, H or W
        below 1, or a grid too large for int64.

    See Also
    --------
    torch.nn.functional.affine_grid : the function this mirrors.
    affine_grid_backward : its vector-Jacobian product.
    grid_sample : samples an input at the grid.
    """
    xp = array_module(theta=theta)
    dtype = common_float_dtype(theta=theta)
    n, _, height, width = _output_size(size, dtype.itemsize)
    _validate.shape_equals(theta, "theta", (n, 2, 3), "(N, 2, 3) for size (N, C, H, W)")
    align_corners = _validate.flag(align_corners, "align_corners")
    base = _base_grid(xp, height, width, align_corners, dtype)
    return xp.matmul(base, theta.transpose(0, 2, 1)).reshape(n, height, width, 2)


@on_arrays_device
def affine_grid_backward(grad_grid: Array, size: Size, align_corners: bool = False) -> Array:
    """Vector-Jacobian product of :func:`affine_grid` (the grid is linear in theta).

    Parameters
    ----------
    grad_grid : ndarray, (N, H, W, 2)
    size, align_corners
        As given to :func:`affine_grid`.

    Returns
    -------
    ndarray, (N, 2, 3)
        ``grad_theta[n] = sum_{i,j} grad_grid[n, i, j] (x_j, y_i, 1)^T``.
        Same array type (NumPy or CuPy) and dtype (float32 or float64) as ``grad_grid``.

    Raises
    ------
    TypeError
        An array argument that is not a ``numpy.ndarray`` or ``cupy.ndarray``, a dtype
        other than float32/float64 or arrays of different dtypes, NumPy and CuPy arrays
        mixed, ``size`` not four ints, or a non-bool ``align_corners``.
    ValueError
        ``grad_grid`` not (N, H, W, 2) for ``size``, or ``size`` with C, H
        or W below 1.

    See Also
    --------
    affine_grid : the forward map.
    """
    xp = array_module(grad_grid=grad_grid)
    dtype = common_float_dtype(grad_grid=grad_grid)
    n, _, height, width = _output_size(size, dtype.itemsize)
    _validate.shape_equals(grad_grid, "grad_grid", (n, height, width, 2),
                           "(N, H, W, 2) for size (N, C, H, W)")
    align_corners = _validate.flag(align_corners, "align_corners")
    base = _base_grid(xp, height, width, align_corners, dtype)
    return xp.matmul(grad_grid.reshape(n, height * width, 2).transpose(0, 2, 1), base)


class _Sampling(NamedTuple):
    """Kernel arguments of a grid_sample call."""

    nearest: bool
    padding_mode: int
    align_corners: bool


def _check_sample(input, grid, mode, padding_mode, align_corners):
    _validate.ndim(input, "input", 4, "(N, C, H, W)")
    _validate.ndim(grid, "grid", 4, "(N, Hg, Wg, 2)")
    if grid.shape[3] != 2:
        raise ValueError(f"grid must be (N, Hg, Wg, 2) with (x, y) last, got shape {grid.shape}")
    if grid.shape[0] != input.shape[0]:
        raise ValueError(f"grid batch ({grid.shape[0]}) must equal input batch ({input.shape[0]}): "
                         f"input shape {input.shape}, grid shape {grid.shape}")
    if input.shape[2] < 1 or input.shape[3] < 1:
        raise ValueError(f"input must have non-empty H and W, got shape {input.shape}")
    interpolation = _choice(mode, "mode", sampling.GRID_INTERPOLATION_MODES)
    return _Sampling(interpolation == sampling.INTERPOLATION_NEAREST,
                     _choice(padding_mode, "padding_mode", sampling.GRID_PADDING_MODES),
                     _validate.flag(align_corners, "align_corners"))


@on_arrays_device
def grid_sample(input: Array, grid: Array, mode: str = "bilinear", padding_mode: str = "zeros",
                align_corners: bool = False) -> Array:
    """Sample ``input`` at the positions in ``grid``.

    Parameters
    ----------
    input : ndarray, (N, C, H, W)
    grid : ndarray, (N, Hg, Wg, 2)
        Normalised sampling positions: ``grid[..., 0]`` is x (along W) and
        ``grid[..., 1]`` is y (along H); -1 and 1 are the image's ends as set by
        ``align_corners``. Any grid works, affine (:func:`affine_grid`) or not.
    mode : {"bilinear", "nearest"}
        Nearest rounds halves to even, as PyTorch does.
    padding_mode : {"zeros", "border", "reflection"}
        Values outside the image: zero, the nearest edge pixel, or the image
        reflected about its edge pixel centres (align_corners) or its outer
        edges (not align_corners), any number of times.
    align_corners : bool
        If True, -1 and 1 are the centres of the corner pixels: pixel
        ``x = (gx + 1) / 2 * (W - 1)``. If False, their outer edges:
        ``x = ((gx + 1) * W - 1) / 2``.

    Returns
    -------
    ndarray, (N, C, Hg, Wg)
        Same array type (NumPy or CuPy) and dtype (float32 or float64) as ``input``.

    Raises
    ------
    TypeError
        An array argument that is not a ``numpy.ndarray`` or ``cupy.ndarray``, a dtype
        other than float32/float64 or arrays of different dtypes, NumPy and CuPy arrays
        mixed, a ``mode`` or ``padding_mode`` that is not a string, or a non-bool
        ``align_corners``.
    ValueError
        An unknown ``mode`` or ``padding_mode``, ``grid`` not (N, Hg, Wg, 2)
        with ``input``'s N, or an input with empty H or W.

    Notes
    -----
    Padding modes other than "zeros" fold each coordinate into the image first
    (reflect, then clip to ``[0, W - 1]``). Bilinear sampling then uses the
    cell of ``floor(y), floor(x)``, counting corners outside the image as 0; a
    sample with ``y < -1``, ``y >= H``, ``x < -1`` or ``x >= W`` is therefore 0.

    Any grid value is safe. Infinities and huge values (1e30) give 0 in
    "zeros" mode, the edge pixel in "border" mode and, if finite, their exact
    reflection in "reflection" mode. A NaN coordinate, or one whose pixel
    coordinate is NaN (an infinity under "reflection", or on a length-1 axis
    with ``align_corners``, where it is multiplied by 0), gives 0 in every mode,
    with zero gradients (PyTorch gives NaN or fails there).

    See Also
    --------
    torch.nn.functional.grid_sample : the function this mirrors.
    grid_sample_backward : its vector-Jacobian product.
    affine_grid : grids of affine maps.
    """
    xp = array_module(input=input, grid=grid)
    dtype = common_float_dtype(input=input, grid=grid)
    modes = _check_sample(input, grid, mode, padding_mode, align_corners)
    out = xp.empty((input.shape[0], input.shape[1], grid.shape[1], grid.shape[2]), dtype)
    if out.size:
        launchers(xp).GridSampler(input, grid, *modes).sample(out)
    return out


@on_arrays_device
def grid_sample_backward(grad_output: Array, input: Array, grid: Array, mode: str = "bilinear",
                         padding_mode: str = "zeros", align_corners: bool = False, *,
                         needs: Iterable[str] = GRID_SAMPLE_GRADS,
                         deterministic: bool = False) -> GridSampleGrads:
    """Vector-Jacobian product of :func:`grid_sample`.

    Parameters
    ----------
    grad_output : ndarray, (N, C, Hg, Wg)
    input, grid, mode, padding_mode, align_corners
        As given to :func:`grid_sample`.
    needs : iterable of {"input", "grid"}
        The gradients to compute; the others are returned as None.
    deterministic : bool
        On CUDA, compute the input gradient without atomics (each thread owns
        an input plane and adds in pixel order), so repeated calls agree to the
        bit; slower. The CPU kernels are always deterministic.

    Returns
    -------
    GridSampleGrads
        ``input`` (N, C, H, W) and ``grid`` (N, Hg, Wg, 2).
        Each gradient has the array type (NumPy or CuPy) and dtype (float32 or
        float64) of the inputs; gradients not named in ``needs`` are None.

    Raises
    ------
    TypeError
        An array argument that is not a ``numpy.ndarray`` or ``cupy.ndarray``, a dtype
        other than float32/float64 or arrays of different dtypes, NumPy and CuPy arrays
        mixed, a ``mode`` or ``padding_mode`` that is not a string, a non-bool
        ``align_corners`` or ``deterministic``, or ``needs`` that is not an iterable of
        names.
    ValueError
        As :func:`grid_sample`; also ``grad_output`` not (N, C, Hg, Wg), or
        ``needs`` naming an unknown gradient.

    Notes
    -----
    The input gradient is the exact adjoint of the sampling. The grid gradient
    follows PyTorch's conventions where the sample is not differentiable: the
    bilinear derivative is taken in the cell of ``floor(y), floor(x)`` (at an
    integer coordinate, the one-sided derivative towards larger coordinates);
    clipping has derivative 1 strictly inside ``(0, W - 1)`` and 0 on its end
    points and beyond; reflection has derivative +1 or -1. It is 0 in
    "nearest" mode, and 0 for samples outside the window of :func:`grid_sample`
    and for NaN coordinates.

    See Also
    --------
    torch.nn.functional.grid_sample : whose autograd this mirrors.
    affine_grid_backward : carries the grid gradient on to theta.
    """
    wanted = _validate.needs(needs, GRID_SAMPLE_GRADS)
    deterministic = _validate.flag(deterministic, "deterministic")
    xp = array_module(grad_output=grad_output, input=input, grid=grid)
    dtype = common_float_dtype(grad_output=grad_output, input=input, grid=grid)
    modes = _check_sample(input, grid, mode, padding_mode, align_corners)
    out_shape = (input.shape[0], input.shape[1], grid.shape[1], grid.shape[2])
    _validate.shape_equals(grad_output, "grad_output", out_shape, "(N, C, Hg, Wg)")
    grad_input = xp.zeros(input.shape, dtype) if "input" in wanted else None
    grad_grid = xp.zeros(grid.shape, dtype) if "grid" in wanted else None
    # Nearest sampling is piecewise constant: its grid gradient stays zero.
    grid_target = None if modes.nearest else grad_grid
    if grad_output.size and (grad_input is not None or grid_target is not None):
        sampler = launchers(xp).GridSampler(input, grid, *modes, deterministic=deterministic)
        sampler.backward(grad_output, grad_input, grid_target)
    return GridSampleGrads(grad_input, grad_grid)

"""Spatial transformer sampling: affine sampling grids and grid_sample.

Jaderberg et al., "Spatial Transformer Networks", NIPS 2015: a grid of
sampling positions, here usually an affine map of the output pixels, and
differentiable sampling of the input at those positions. Semantics follow
``torch.nn.functional.affine_grid`` and ``torch.nn.functional.grid_sample`` for
4-D and 5-D inputs (bilinear/trilinear, nearest, and bicubic for 4-D),
including their boundary rules and gradient conventions.
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
    """Check ``size`` = (N, C, H, W) or (N, C, D, H, W): N >= 0, the others
    >= 1, and a grid (N, [D,] H, W, 2 or 3) and base grid ([D,] H, W, 3 or 4)
    of ``itemsize``-byte values that arrays can hold."""
    if isinstance(size, (str, bytes)) or not hasattr(size, "__len__") or len(size) not in (4, 5):
        raise ValueError(f"size must be (N, C, H, W) or (N, C, D, H, W), got {size!r}")
    layout, count, rest = (("(N, C, H, W)", "four", "C, H, W") if len(size) == 4
                           else ("(N, C, D, H, W)", "five", "C, D, H, W"))
    out = []
    for index, item in enumerate(size):
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise TypeError(f"size must be {count} ints {layout}, got {size!r}")
        if item < (0 if index == 0 else 1):
            raise ValueError(f"size must be {layout} with N >= 0 and {rest} >= 1, "
                             f"got {size!r}")
        out.append(int(item))
    n, spatial = out[0], tuple(out[2:])
    dims = len(spatial)
    for what, shape in ((f"grid (N, ..., {dims})", (n,) + spatial + (dims,)),
                        (f"untransformed grid (..., {dims + 1})", spatial + (dims + 1,))):
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


def _base_grid(xp, spatial, align_corners, dtype):
    """(prod(spatial), dims + 1): the rows (x, y, [z,] 1) of the untransformed
    grid of ``spatial`` = ([D,] H, W), x fastest."""
    dims = len(spatial)
    base = xp.empty(tuple(spatial) + (dims + 1,), dtype)
    for axis, steps in enumerate(reversed(spatial)):
        shape = [1] * dims
        shape[dims - 1 - axis] = steps
        base[..., axis] = _base_coordinates(xp, steps, align_corners, dtype).reshape(shape)
    base[..., dims] = 1
    return base.reshape(-1, dims + 1)


def _affine_size(size, dtype):
    """(n, spatial, theta shape, its layout) of an affine_grid ``size``."""
    out = _output_size(size, dtype.itemsize)
    dims = len(out) - 2
    layout = "(N, 2, 3) for size (N, C, H, W)" if dims == 2 else \
        "(N, 3, 4) for size (N, C, D, H, W)"
    return out[0], out[2:], (out[0], dims, dims + 1), layout


@on_arrays_device
def affine_grid(theta: Array, size: Size, align_corners: bool = False) -> Array:
    """Sampling grid of a batch of affine maps.

    Parameters
    ----------
    theta : ndarray, (N, 2, 3) or (N, 3, 4)
        Maps output coordinates ``(x, y, 1)`` (or ``(x, y, z, 1)``),
        normalised to [-1, 1], to input coordinates ``(x', y')`` (or
        ``(x', y', z')``).
    size : (int, int, int, int) or (int, int, int, int, int)
        The output size (N, C, H, W) or (N, C, D, H, W); C is not used.
    align_corners : bool
        If True, -1 and 1 are the centres of the corner pixels; if False, the
        outer edges of the corner pixels (so the grid does not depend on the
        resolution).

    Returns
    -------
    ndarray, (N, H, W, 2) or (N, D, H, W, 3)
        ``grid[n, i, j] = theta[n] @ (x_j, y_i, 1)``, x first, with
        ``x_j = -1 + 2j / (W - 1)`` (align_corners) or ``(2j + 1) / W - 1``;
        a length-1 axis has the single coordinate 0. In 5-D,
        ``grid[n, k, i, j] = theta[n] @ (x_j, y_i, z_k, 1)``.
        Same array type (NumPy or CuPy) and dtype (float32 or float64) as ``theta``.

    Raises
    ------
    TypeError
        An array argument that is not a ``numpy.ndarray`` or ``cupy.ndarray``, a dtype
        other than float32/float64 or arrays of different dtypes, NumPy and CuPy arrays
        mixed, ``size`` not four or five ints, or a non-bool ``align_corners``.
    ValueError
        ``theta`` not (N, 2, 3) (or (N, 3, 4) for a 5-D size) with
        N = ``size[0]``, ``size`` with C, H or W below 1, or a grid too large
        for int64.

    See Also
    --------
    torch.nn.functional.affine_grid : the function this mirrors.
    affine_grid_backward : its vector-Jacobian product.
    grid_sample : samples an input at the grid.
    """
    xp = array_module(theta=theta)
    dtype = common_float_dtype(theta=theta)
    n, spatial, theta_shape, layout = _affine_size(size, dtype)
    _validate.shape_equals(theta, "theta", theta_shape, layout)
    align_corners = _validate.flag(align_corners, "align_corners")
    base = _base_grid(xp, spatial, align_corners, dtype)
    return xp.matmul(base, theta.transpose(0, 2, 1)).reshape((n,) + spatial + (len(spatial),))


@on_arrays_device
def affine_grid_backward(grad_grid: Array, size: Size, align_corners: bool = False) -> Array:
    """Vector-Jacobian product of :func:`affine_grid` (the grid is linear in theta).

    Parameters
    ----------
    grad_grid : ndarray, (N, H, W, 2) or (N, D, H, W, 3)
    size, align_corners
        As given to :func:`affine_grid`.

    Returns
    -------
    ndarray, (N, 2, 3) or (N, 3, 4)
        ``grad_theta[n] = sum_{i,j} grad_grid[n, i, j] (x_j, y_i, 1)^T``
        (in 5-D, over ``k, i, j`` with ``(x_j, y_i, z_k, 1)``).
        Same array type (NumPy or CuPy) and dtype (float32 or float64) as ``grad_grid``.

    Raises
    ------
    TypeError
        An array argument that is not a ``numpy.ndarray`` or ``cupy.ndarray``, a dtype
        other than float32/float64 or arrays of different dtypes, NumPy and CuPy arrays
        mixed, ``size`` not four or five ints, or a non-bool ``align_corners``.
    ValueError
        ``grad_grid`` not (N, H, W, 2) (or (N, D, H, W, 3)) for ``size``, or ``size`` with C, H
        or W below 1.

    See Also
    --------
    affine_grid : the forward map.
    """
    xp = array_module(grad_grid=grad_grid)
    dtype = common_float_dtype(grad_grid=grad_grid)
    n, spatial, _, _ = _affine_size(size, dtype)
    dims = len(spatial)
    _validate.shape_equals(grad_grid, "grad_grid", (n,) + spatial + (dims,),
                           "(N, H, W, 2) for size (N, C, H, W)" if dims == 2 else
                           "(N, D, H, W, 3) for size (N, C, D, H, W)")
    align_corners = _validate.flag(align_corners, "align_corners")
    base = _base_grid(xp, spatial, align_corners, dtype)
    return xp.matmul(grad_grid.reshape(n, base.shape[0], dims).transpose(0, 2, 1), base)


class _Sampling(NamedTuple):
    """Kernel arguments of a grid_sample call."""

    nearest: bool
    padding_mode: int
    align_corners: bool


def _check_sample(input, grid, mode, padding_mode, align_corners):
    """``(_Sampling, bicubic)``, after checking the arguments of grid_sample."""
    if getattr(input, "ndim", None) == 5:
        _validate.ndim(grid, "grid", 5, "(N, Dg, Hg, Wg, 3) for input (N, C, D, H, W)")
        if grid.shape[4] != 3:
            raise ValueError(f"grid must be (N, Dg, Hg, Wg, 3) with (x, y, z) last for input "
                             f"(N, C, D, H, W), got shape {grid.shape}")
    else:
        _validate.ndim(input, "input", 4, "(N, C, H, W) or (N, C, D, H, W)")
        _validate.ndim(grid, "grid", 4, "(N, Hg, Wg, 2)")
        if grid.shape[3] != 2:
            raise ValueError(f"grid must be (N, Hg, Wg, 2) with (x, y) last, got shape {grid.shape}")
    if grid.shape[0] != input.shape[0]:
        raise ValueError(f"grid batch ({grid.shape[0]}) must equal input batch ({input.shape[0]}): "
                         f"input shape {input.shape}, grid shape {grid.shape}")
    if min(input.shape[2:]) < 1:
        raise ValueError(f"input must have non-empty {'H and W' if input.ndim == 4 else 'D, H and W'}"
                         f", got shape {input.shape}")
    interpolation = _choice(mode, "mode", sampling.GRID_INTERPOLATION_MODES)
    bicubic = interpolation == sampling.INTERPOLATION_BICUBIC
    if bicubic and input.ndim == 5:
        raise ValueError("mode='bicubic' needs a 4-D input (N, C, H, W), got a 5-D one of shape "
                         f"{input.shape}")
    return _Sampling(interpolation == sampling.INTERPOLATION_NEAREST,
                     _choice(padding_mode, "padding_mode", sampling.GRID_PADDING_MODES),
                     _validate.flag(align_corners, "align_corners")), bicubic


def _sampler(xp, input, grid, modes, bicubic, deterministic=False):
    """The backend's sampler for a checked call."""
    backend = launchers(xp)
    if bicubic:
        return backend.BicubicSampler(input, grid, modes.padding_mode, modes.align_corners,
                                      deterministic=deterministic)
    if input.ndim == 5:
        return backend.VolumeSampler(input, grid, *modes, deterministic=deterministic)
    return backend.GridSampler(input, grid, *modes, deterministic=deterministic)


@on_arrays_device
def grid_sample(input: Array, grid: Array, mode: str = "bilinear", padding_mode: str = "zeros",
                align_corners: bool = False) -> Array:
    """Sample ``input`` at the positions in ``grid``.

    Parameters
    ----------
    input : ndarray, (N, C, H, W) or (N, C, D, H, W)
    grid : ndarray, (N, Hg, Wg, 2) or (N, Dg, Hg, Wg, 3)
        Normalised sampling positions: ``grid[..., 0]`` is x (along W),
        ``grid[..., 1]`` is y (along H) and, for volumes, ``grid[..., 2]`` is
        z (along D); -1 and 1 are the input's ends as set by
        ``align_corners``. Any grid works, affine (:func:`affine_grid`) or not.
    mode : {"bilinear", "nearest", "bicubic"}
        "bilinear" is trilinear for volumes (PyTorch's naming); "bicubic"
        (4-D only) is PyTorch's cubic convolution with A = -0.75. Nearest
        rounds halves to even, as PyTorch does.
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
    ndarray, (N, C, Hg, Wg) or (N, C, Dg, Hg, Wg)
        Same array type (NumPy or CuPy) and dtype (float32 or float64) as ``input``.

    Raises
    ------
    TypeError
        An array argument that is not a ``numpy.ndarray`` or ``cupy.ndarray``, a dtype
        other than float32/float64 or arrays of different dtypes, NumPy and CuPy arrays
        mixed, a ``mode`` or ``padding_mode`` that is not a string, or a non-bool
        ``align_corners``.
    ValueError
        An unknown ``mode`` or ``padding_mode``, ``grid`` not (N, Hg, Wg, 2) (or (N, Dg, Hg, Wg, 3) for a
        5-D input) with ``input``'s N, bicubic on a 5-D input, or an input with empty H or W.

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
    with zero gradients (PyTorch gives NaN or fails there). Volumes follow the
    same rules on each of their three axes.

    "bicubic" applies the padding mode to each of its 4 x 4 taps instead
    (PyTorch's ``get_value_bounded``): under "zeros" a tap outside reads 0,
    under "border"/"reflection" its coordinate is clipped/reflected. A pixel
    coordinate that is not finite gives 0 with zero gradients in every mode;
    1e30 is exact.

    See Also
    --------
    torch.nn.functional.grid_sample : the function this mirrors.
    grid_sample_backward : its vector-Jacobian product.
    affine_grid : grids of affine maps.
    """
    xp = array_module(input=input, grid=grid)
    dtype = common_float_dtype(input=input, grid=grid)
    modes, bicubic = _check_sample(input, grid, mode, padding_mode, align_corners)
    out = xp.empty(input.shape[:2] + grid.shape[1:-1], dtype)
    if out.size:
        _sampler(xp, input, grid, modes, bicubic).sample(out)
    return out


@on_arrays_device
def grid_sample_backward(grad_output: Array, input: Array, grid: Array, mode: str = "bilinear",
                         padding_mode: str = "zeros", align_corners: bool = False, *,
                         needs: Iterable[str] = GRID_SAMPLE_GRADS,
                         deterministic: bool = False) -> GridSampleGrads:
    """Vector-Jacobian product of :func:`grid_sample`.

    Parameters
    ----------
    grad_output : ndarray, (N, C, Hg, Wg) or (N, C, Dg, Hg, Wg)
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
        ``input`` (shaped as the input) and ``grid`` (shaped as the grid).
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
        As :func:`grid_sample`; also ``grad_output`` not shaped as the output, or
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
    and for NaN coordinates. Bicubic follows PyTorch's bicubic backward: the
    derivative of the cubic weights times the unnormalisation factor.

    See Also
    --------
    torch.nn.functional.grid_sample : whose autograd this mirrors.
    affine_grid_backward : carries the grid gradient on to theta.
    """
    wanted = _validate.needs(needs, GRID_SAMPLE_GRADS)
    deterministic = _validate.flag(deterministic, "deterministic")
    xp = array_module(grad_output=grad_output, input=input, grid=grid)
    dtype = common_float_dtype(grad_output=grad_output, input=input, grid=grid)
    modes, bicubic = _check_sample(input, grid, mode, padding_mode, align_corners)
    out_shape = input.shape[:2] + grid.shape[1:-1]
    _validate.shape_equals(grad_output, "grad_output", out_shape,
                           "(N, C, Hg, Wg)" if input.ndim == 4 else "(N, C, Dg, Hg, Wg)")
    grad_input = xp.zeros(input.shape, dtype) if "input" in wanted else None
    grad_grid = xp.zeros(grid.shape, dtype) if "grid" in wanted else None
    # Nearest sampling is piecewise constant: its grid gradient stays zero.
    grid_target = None if modes.nearest else grad_grid
    if grad_output.size and (grad_input is not None or grid_target is not None):
        sampler = _sampler(xp, input, grid, modes, bicubic, deterministic)
        sampler.backward(grad_output, grad_input, grid_target)
    return GridSampleGrads(grad_input, grad_grid)

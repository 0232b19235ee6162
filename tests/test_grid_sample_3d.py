"""5-D grid_sample (trilinear, nearest) and 5-D affine_grid with their
gradients, against loop references, SciPy, adjoint identities and finite
differences."""

import numpy as np
import pytest
import scipy.ndimage
from hypothesis import assume, given
from hypothesis import strategies as st

import defconv_np as dc
from tests.naive import assert_close, naive_grid_sample_3d, tolerance
from tests.strategies import (
    FLOAT64_ONLY,
    GRID_PADDING_MODES,
    affine_3d_problems,
    numpy_generators,
    unnormalized,
    volume_problems,
)


def sample(problem, **changes):
    args = dict(input=problem.input, grid=problem.grid, **problem.options)
    args.update(changes)
    return dc.grid_sample(**args)


def sample_backward(problem, needs=("input", "grid"), **changes):
    args = dict(grad_output=problem.grad_output, input=problem.input, grid=problem.grid,
                **problem.options)
    args.update(changes)
    return dc.grid_sample_backward(**args, needs=needs)


def pixel_coordinates(problem, grid=None):
    """(x, y, z) pixel coordinates of the problem's grid, float64."""
    grid = problem.grid if grid is None else grid
    sizes = problem.input.shape[2:][::-1]
    return [unnormalized(grid[..., a], sizes[a], problem.align_corners) for a in range(3)]


def near_ties(problem, margin=1e-4):
    """(N, 1, Dg, Hg, Wg): samples where nearest rounding is (nearly) a tie."""
    ties = np.zeros(problem.grid.shape[:-1], bool)
    for pixel in pixel_coordinates(problem):
        ties |= np.abs(pixel - np.floor(pixel) - 0.5) < margin
    return ties[:, None]


# --------------------------------------------------------------------------- forward


@given(problem=volume_problems(modes=("bilinear",)))
def test_trilinear_matches_the_loop_reference(problem):
    out = sample(problem)
    assert type(out) is np.ndarray and out.dtype == problem.dtype
    assert out.shape == problem.grad_output.shape
    expected = naive_grid_sample_3d(problem.input, problem.grid, **problem.options)
    assert_close(out, expected, dtype=problem.dtype)


@given(problem=volume_problems(modes=("nearest",)))
def test_nearest_matches_the_loop_reference_away_from_ties(problem):
    out = sample(problem)
    expected = naive_grid_sample_3d(problem.input, problem.grid, **problem.options)
    keep = np.broadcast_to(~near_ties(problem), out.shape)
    np.testing.assert_array_equal(out[keep], expected[keep].astype(problem.dtype))


@given(problem=volume_problems(dtypes=FLOAT64_ONLY, modes=("nearest",), padding_modes=("zeros",),
                               grid_styles=("lattice",), min_batch=1))
def test_nearest_rounds_ties_to_even(problem):
    x, y, z = pixel_coordinates(problem)
    depth, height, width = problem.input.shape[2:]
    out = sample(problem)
    for n, k, i, j in np.ndindex(*problem.grid.shape[:4]):
        zi, yi, xi = (np.rint(v[n, k, i, j]) for v in (z, y, x))
        inside = 0 <= zi < depth and 0 <= yi < height and 0 <= xi < width
        expected = problem.input[n, :, int(zi), int(yi), int(xi)] if inside else 0.0
        np.testing.assert_array_equal(out[n, :, k, i, j], expected)


@given(problem=volume_problems(modes=("bilinear",), padding_modes=("zeros",), align_corners=(True,),
                               min_batch=1))
def test_trilinear_zeros_matches_scipy(problem):
    x, y, z = pixel_coordinates(problem)
    out = sample(problem)
    for n, c in np.ndindex(*problem.input.shape[:2]):
        expected = scipy.ndimage.map_coordinates(
            np.asarray(problem.input[n, c], np.float64), [z[n], y[n], x[n]], order=1,
            mode="grid-constant", cval=0.0)
        assert_close(out[n, c], expected, dtype=problem.dtype)


def rotation(axis_angle):
    """3 x 3 rotation matrix (Rodrigues) of an axis-angle vector."""
    angle = np.linalg.norm(axis_angle)
    k = axis_angle / angle
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


@given(rng=numpy_generators(), shape=st.tuples(*[st.integers(2, 6)] * 3),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_rotating_with_affine_grid_matches_scipy_affine_transform(rng, shape, dtype):
    # align_corners=True on a cube with equal sides: normalised and pixel
    # coordinates differ by a scale and shift per axis.
    input = rng.uniform(-1, 1, (1, 2) + shape).astype(dtype)
    matrix_xyz = rotation(rng.uniform(-0.6, 0.6, 3))
    shift_xyz = rng.uniform(-0.3, 0.3, 3)
    theta = np.concatenate([matrix_xyz, shift_xyz[:, None]], axis=1)[None].astype(dtype)
    out_shape = (3, 4, 5)
    out = dc.grid_sample(input, dc.affine_grid(theta, (1, 2) + out_shape, align_corners=True),
                         align_corners=True)
    # pixel_in (z, y, x) = s_in * (M (g_out) + b) + s_in, g_out = p_out / s_out - 1
    s_in = (np.array(shape[::-1]) - 1) / 2  # (x, y, z)
    s_out = (np.array(out_shape[::-1]) - 1) / 2
    m = np.asarray(theta[0, :, :3], np.float64)
    b = np.asarray(theta[0, :, 3], np.float64)
    matrix = (s_in[:, None] * m) / s_out[None, :]
    offset = s_in * (b - m.sum(axis=1)) + s_in
    flip = np.arange(3)[::-1]
    for c in range(2):
        expected = scipy.ndimage.affine_transform(
            np.asarray(input[0, c], np.float64), matrix[np.ix_(flip, flip)], offset[flip],
            output_shape=out_shape, order=1, mode="grid-constant", cval=0.0)
        assert_close(out[0, c], expected, dtype=dtype)


@given(problem=volume_problems(grid_styles=("uniform",)))
def test_identity_theta_returns_input(problem):
    size = problem.input.shape
    theta = np.broadcast_to(np.eye(3, 4, dtype=problem.dtype), (size[0], 3, 4))
    grid = dc.affine_grid(theta, size, align_corners=problem.align_corners)
    assert_close(sample(problem, grid=grid), problem.input, dtype=problem.dtype)


@given(case=affine_3d_problems())
def test_affine_grid_matches_closed_form(case):
    theta, size, align_corners = case
    grid = dc.affine_grid(theta, size, align_corners)
    n, _, depth, height, width = size
    assert grid.shape == (n, depth, height, width, 3) and grid.dtype == theta.dtype

    def coordinate(index, steps):
        if steps == 1:
            return 0.0
        if align_corners:
            return -1 + 2 * index / (steps - 1)
        return (2 * index + 1) / steps - 1

    expected = np.zeros(grid.shape)
    for b, k, i, j in np.ndindex(n, depth, height, width):
        point = [coordinate(j, width), coordinate(i, height), coordinate(k, depth), 1.0]
        expected[b, k, i, j] = np.asarray(theta[b], np.float64) @ point
    assert_close(grid, expected, dtype=theta.dtype)


# --------------------------------------------------------------------------- gradients


@given(problem=volume_problems(dtypes=FLOAT64_ONLY), rng=numpy_generators())
def test_input_gradient_is_the_adjoint(problem, rng):
    u = rng.uniform(-1, 1, problem.input.shape)
    lhs = np.vdot(sample(problem, input=u), problem.grad_output)
    rhs = np.vdot(u, sample_backward(problem, needs=("input",)).input)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-12)


@given(problem=volume_problems(dtypes=FLOAT64_ONLY, modes=("bilinear",), min_batch=1,
                               grid_styles=("away_from_kinks",)))
def test_grid_gradient_matches_finite_differences(problem):
    step = 1e-5
    grads = sample_backward(problem, needs=("grid",))
    assert grads.input is None
    expected = np.zeros(problem.grid.shape)
    for axis in range(3):
        shift = np.zeros(problem.grid.shape)
        shift[..., axis] = step
        plus = sample(problem, grid=problem.grid + shift)
        minus = sample(problem, grid=problem.grid - shift)
        expected[..., axis] = (problem.grad_output * (plus - minus)).sum(axis=1) / (2 * step)
    np.testing.assert_allclose(grads.grid, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("padding_mode, pixel_z, slope", [
    ("zeros", -1.0, lambda a: a[0]),  # the window includes -1
    ("zeros", 0.0, lambda a: a[1] - a[0]),  # floor cell towards larger z
    ("zeros", 4.0, lambda a: -a[4]),
    ("zeros", 5.0, lambda a: 0.0),  # outside
    ("border", 0.0, lambda a: 0.0),  # clip end points count as clipped
    ("border", 1.5, lambda a: a[2] - a[1]),
    ("reflection", -1.0, lambda a: -(a[2] - a[1])),  # reflected to 1, slope negated
    ("reflection", 4.0, lambda a: 0.0),
    ("reflection", 5.0, lambda a: -(a[4] - a[3])),  # reflected to 3
])
def test_grid_gradient_follows_pytorch_at_kinks_and_boundaries(padding_mode, pixel_z, slope):
    column = np.array([0.3, -0.7, 0.2, 0.9, -0.4])
    input = column.reshape(1, 1, 5, 1, 1)
    # align_corners=True, D = 5: pixel z = (gz + 1) * 2; H = W = 1
    grid = np.array([0.25, -0.5, pixel_z / 2 - 1]).reshape(1, 1, 1, 1, 3)
    grads = dc.grid_sample_backward(np.ones((1, 1, 1, 1, 1)), input, grid, "bilinear",
                                    padding_mode, True)
    np.testing.assert_allclose(grads.grid[0, 0, 0, 0], [0.0, 0.0, 2 * slope(column)],
                               atol=1e-15)


@given(case=affine_3d_problems(dtypes=FLOAT64_ONLY, min_batch=1, max_size=3),
       shape=st.tuples(*[st.integers(1, 4)] * 3),
       padding_mode=st.sampled_from(GRID_PADDING_MODES), rng=numpy_generators())
def test_theta_gradient_matches_finite_differences(case, shape, padding_mode, rng):
    theta, size, align_corners = case
    input = rng.uniform(-1, 1, size[:2] + shape)
    grad_output = rng.uniform(-1, 1, size)
    options = dict(mode="bilinear", padding_mode=padding_mode, align_corners=align_corners)
    grid = dc.affine_grid(theta, size, align_corners)
    for axis, length in enumerate(shape[::-1]):
        pixel = unnormalized(grid[..., axis], length, align_corners)
        if length > 1 or not align_corners:
            assume(np.abs(pixel - np.round(pixel)).min() > 0.01)

    def theta_loss(t):
        return float(np.vdot(grad_output, dc.grid_sample(
            input, dc.affine_grid(t, size, align_corners), **options)))

    grad_grid = dc.grid_sample_backward(grad_output, input, grid, **options, needs=("grid",)).grid
    grad_theta = dc.affine_grid_backward(grad_grid, size, align_corners)
    assert grad_theta.shape == (size[0], 3, 4)
    step = 1e-6
    expected = np.zeros(theta.shape)
    for index in np.ndindex(*theta.shape):
        shift = np.zeros(theta.shape)
        shift[index] = step
        expected[index] = (theta_loss(theta + shift) - theta_loss(theta - shift)) / (2 * step)
    np.testing.assert_allclose(grad_theta, expected, rtol=1e-5, atol=1e-5)


@given(case=affine_3d_problems(), rng=numpy_generators())
def test_affine_grid_backward_is_the_adjoint(case, rng):
    theta, size, align_corners = case
    grad_grid = rng.uniform(-1, 1, (size[0],) + size[2:] + (3,)).astype(theta.dtype)
    grad_theta = dc.affine_grid_backward(grad_grid, size, align_corners)
    assert grad_theta.shape == theta.shape and grad_theta.dtype == theta.dtype
    lhs = np.vdot(np.asarray(dc.affine_grid(theta, size, align_corners), np.float64), grad_grid)
    rhs = np.vdot(np.asarray(theta, np.float64), grad_theta)
    np.testing.assert_allclose(lhs, rhs, rtol=tolerance(theta.dtype),
                               atol=tolerance(theta.dtype) * 10)


@given(problem=volume_problems(modes=("nearest",)))
def test_nearest_has_zero_grid_gradient(problem):
    grads = sample_backward(problem)
    assert grads.grid.shape == problem.grid.shape and grads.grid.dtype == problem.dtype
    assert not np.any(grads.grid)


# --------------------------------------------------------------------------- edge cases


SPECIAL_VALUES = (np.nan, np.inf, -np.inf, 1e30, -1e30)


@given(problem=volume_problems(min_batch=1), rng=numpy_generators())
def test_non_finite_and_huge_grid_values_are_safe(problem, rng):
    grid = problem.grid.copy()
    special = rng.random(grid.shape) < 0.4
    grid[special] = rng.choice(np.array(SPECIAL_VALUES, problem.dtype), size=int(special.sum()))
    out = sample(problem, grid=grid)
    grads = sample_backward(problem, grid=grid)
    for result in (out, grads.input, grads.grid):
        assert np.all(np.isfinite(result))
    nan_point = np.isnan(grid).any(axis=-1)
    assert not np.any(np.moveaxis(out, 1, -1)[nan_point])
    assert not np.any(grads.grid[nan_point])
    if problem.padding_mode in ("zeros", "border"):
        # huge values and infinities act like any point far outside
        sizes = problem.input.shape[2:][::-1]
        far = np.where(np.isfinite(grid), grid, np.sign(grid) * 3.0)
        far = np.where(np.abs(grid) > 2, np.sign(grid) * 3.0, far).astype(problem.dtype)
        check = ~nan_point
        for axis in range(3):
            if problem.align_corners and sizes[axis] == 1:  # inf * 0 is NaN there
                check &= ~np.isinf(grid[..., axis])
        expected = sample(problem, grid=far)
        np.testing.assert_array_equal(np.moveaxis(out, 1, -1)[check],
                                      np.moveaxis(expected, 1, -1)[check])


@given(problem=volume_problems(min_batch=1))
def test_inputs_are_not_modified_and_any_layout_works(problem):
    input = np.asfortranarray(problem.input)
    grid = problem.grid[..., ::-1].copy()[..., ::-1]  # negative strides
    grid.flags.writeable = False
    saved = input.copy(), grid.copy()
    out = sample(problem, input=input, grid=grid)
    grads = sample_backward(problem, input=input, grid=grid)
    np.testing.assert_array_equal(out, sample(problem))
    expected = sample_backward(problem)
    np.testing.assert_array_equal(grads.input, expected.input)
    np.testing.assert_array_equal(grads.grid, expected.grid)
    np.testing.assert_array_equal(input, saved[0])
    np.testing.assert_array_equal(grid, saved[1])


def _arrays(dtype=np.float64):
    return np.zeros((1, 2, 3, 4, 5), dtype), np.zeros((1, 2, 2, 2, 3), dtype)


@pytest.mark.parametrize("input, grid, kwargs, error, message", [
    (*_arrays(), dict(mode="bicubic"), ValueError, "bicubic"),
    (_arrays()[0], np.zeros((1, 2, 2, 2, 2)), {}, ValueError, r"\(x, y, z\) last"),
    (_arrays()[0], np.zeros((1, 2, 2, 2)), {}, ValueError, "grid"),
    (_arrays()[0], np.zeros((2, 2, 2, 2, 3)), {}, ValueError, "batch"),
    (np.zeros((1, 2, 0, 4, 5)), _arrays()[1], {}, ValueError, "non-empty D, H and W"),
    (np.zeros((1, 2, 3)), _arrays()[1], {}, ValueError, "input"),
    (*_arrays(), dict(mode="trilinear"), ValueError, "mode"),
])
def test_rejects_bad_arguments(input, grid, kwargs, error, message):
    with pytest.raises(error, match=message):
        dc.grid_sample(input, grid, **kwargs)


def test_rejects_bad_grad_output_and_theta():
    input, grid = _arrays()
    with pytest.raises(ValueError, match="grad_output"):
        dc.grid_sample_backward(np.zeros((1, 2, 2, 2)), input, grid)
    with pytest.raises(ValueError, match="theta"):
        dc.affine_grid(np.zeros((1, 2, 3)), (1, 2, 3, 4, 5))
    with pytest.raises(ValueError, match="theta"):
        dc.affine_grid(np.zeros((1, 3, 4)), (1, 2, 3, 4))
    with pytest.raises(ValueError, match="grad_grid"):
        dc.affine_grid_backward(np.zeros((1, 3, 4, 5, 2)), (1, 2, 3, 4, 5))
    with pytest.raises(ValueError, match="size"):
        dc.affine_grid(np.zeros((1, 3, 4)), (1, 2, 3, 4, 5, 6))
    with pytest.raises(ValueError, match="D, H, W >= 1"):
        dc.affine_grid(np.zeros((1, 3, 4)), (1, 2, 0, 4, 5))
    with pytest.raises(TypeError, match="size must be five ints"):
        dc.affine_grid(np.zeros((1, 3, 4)), (1, 2, 3.0, 4, 5))
    with pytest.raises(TypeError, match="grid has dtype float32"):
        dc.grid_sample(np.zeros((1, 2, 3, 4, 5)), np.zeros((1, 2, 2, 2, 3), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_zero(dtype):
    input, grid = np.zeros((0, 2, 3, 4, 5), dtype), np.zeros((0, 2, 2, 2, 3), dtype)
    assert dc.grid_sample(input, grid).shape == (0, 2, 2, 2, 2)
    grads = dc.grid_sample_backward(np.zeros((0, 2, 2, 2, 2), dtype), input, grid)
    assert grads.input.shape == input.shape and grads.grid.shape == grid.shape
    assert dc.affine_grid(np.zeros((0, 3, 4), dtype), (0, 1, 2, 2, 2)).shape == (0, 2, 2, 2, 3)

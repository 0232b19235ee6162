"""affine_grid, grid_sample and their gradients against SciPy, closed forms,
adjoint identities and finite differences."""

import contextlib
from unittest import mock

import numpy as np
import pytest
import scipy.ndimage
from hypothesis import assume, given
from hypothesis import strategies as st

import defconv_np as dc
from defconv_np import _cpu
from defconv_np._cpu import GridSampler
from tests.naive import assert_close, tolerance
from tests.strategies import (
    FLOAT64_ONLY,
    GRID_PADDING_MODES,
    affine_problems,
    grid_sample_problems,
    layout_variants,
    numpy_generators,
    unnormalized,
)

#: SciPy's boundary mode for each padding mode (reflection: by align_corners).
SCIPY_MODES = {
    ("zeros", True): "grid-constant",
    ("zeros", False): "grid-constant",
    ("border", True): "nearest",
    ("border", False): "nearest",
    ("reflection", True): "mirror",  # about the edge pixel centres
    ("reflection", False): "reflect",  # about the outer edges
}


def pixel_coordinates(grid, height, width, align_corners):
    """(y, x) pixel coordinates of a grid, in float64."""
    x = unnormalized(grid[..., 0], width, align_corners)
    y = unnormalized(grid[..., 1], height, align_corners)
    return y, x


def scipy_grid_sample(input, grid, mode, padding_mode, align_corners):
    """Independent reference: ``scipy.ndimage.map_coordinates`` at the pixel coordinates."""
    n_images, channels, height, width = input.shape
    y, x = pixel_coordinates(grid, height, width, align_corners)
    out = np.zeros((n_images, channels) + grid.shape[1:3])
    for n in range(n_images):
        for c in range(channels):
            out[n, c] = scipy.ndimage.map_coordinates(
                np.asarray(input[n, c], np.float64), [y[n], x[n]], order=1 if mode == "bilinear" else 0,
                mode=SCIPY_MODES[padding_mode, align_corners], cval=0.0)
    return out


def distance_to_half_integers(value):
    return np.abs(value - np.floor(value) - 0.5)


def distance_to_integers(value):
    return np.abs(value - np.round(value))


def nearest_ties(problem, margin=1e-4):
    """(N, 1, Hg, Wg) mask of the samples where nearest rounding is (nearly) a tie."""
    height, width = problem.input.shape[2:]
    y, x = pixel_coordinates(problem.grid, height, width, problem.align_corners)
    ties = (distance_to_half_integers(y) < margin) | (distance_to_half_integers(x) < margin)
    return ties[:, None]


def sample(problem, **changes):
    args = dict(input=problem.input, grid=problem.grid, **problem.options)
    args.update(changes)
    return dc.grid_sample(**args)


def sample_backward(problem, needs=("input", "grid"), **changes):
    args = dict(grad_output=problem.grad_output, input=problem.input, grid=problem.grid,
                **problem.options)
    args.update(changes)
    return dc.grid_sample_backward(**args, needs=needs)


# --------------------------------------------------------------------------- forward


@given(problem=grid_sample_problems(modes=("bilinear",)))
def test_bilinear_matches_scipy(problem):
    out = sample(problem)
    assert type(out) is np.ndarray and out.dtype == problem.dtype
    assert out.shape == problem.grad_output.shape
    expected = scipy_grid_sample(problem.input, problem.grid, **problem.options)
    assert_close(out, expected, dtype=problem.dtype)


@given(problem=grid_sample_problems(modes=("nearest",)))
def test_nearest_matches_scipy_away_from_ties(problem):
    out = sample(problem)
    expected = scipy_grid_sample(problem.input, problem.grid, **problem.options)
    keep = np.broadcast_to(~nearest_ties(problem), out.shape)
    np.testing.assert_array_equal(out[keep], expected[keep].astype(problem.dtype))


@given(problem=grid_sample_problems(dtypes=FLOAT64_ONLY, modes=("nearest",), padding_modes=("zeros",),
                                    grid_styles=("lattice",)))
def test_nearest_rounds_ties_to_even(problem):
    height, width = problem.input.shape[2:]
    y, x = pixel_coordinates(problem.grid, height, width, problem.align_corners)
    out = sample(problem)
    for n, i, j in np.ndindex(*problem.grid.shape[:3]):
        yi, xi = np.rint(y[n, i, j]), np.rint(x[n, i, j])  # rint rounds halves to even
        inside = 0 <= yi < height and 0 <= xi < width
        expected = problem.input[n, :, int(yi), int(xi)] if inside else 0.0
        np.testing.assert_array_equal(out[n, :, i, j], expected)


@given(problem=grid_sample_problems(grid_styles=("uniform", "lattice")))
def test_identity_theta_returns_input(problem):
    n, c, h, w = problem.input.shape
    theta = np.broadcast_to(np.eye(2, 3, dtype=problem.dtype), (n, 2, 3))
    grid = dc.affine_grid(theta, (n, c, h, w), align_corners=problem.align_corners)
    assert_close(sample(problem, grid=grid), problem.input, dtype=problem.dtype)


@given(case=affine_problems())
def test_affine_grid_matches_closed_form(case):
    theta, size, align_corners = case
    grid = dc.affine_grid(theta, size, align_corners)
    n, _, height, width = size
    assert grid.shape == (n, height, width, 2) and grid.dtype == theta.dtype

    def coordinate(index, steps):
        if steps == 1:
            return 0.0
        if align_corners:
            return -1 + 2 * index / (steps - 1)
        return (2 * index + 1) / steps - 1

    expected = np.zeros(grid.shape)
    for b, i, j in np.ndindex(n, height, width):
        point = np.array([coordinate(j, width), coordinate(i, height), 1.0])
        expected[b, i, j] = np.asarray(theta[b], np.float64) @ point
    assert_close(grid, expected, dtype=theta.dtype)


@given(case=affine_problems(min_batch=1), shape=st.tuples(st.integers(1, 6), st.integers(1, 6)),
       rng=numpy_generators())
def test_sampling_an_affine_grid_matches_scipy_affine_transform(case, shape, rng):
    theta, size, align_corners = case
    n, channels, out_h, out_w = size
    height, width = shape
    input = rng.uniform(-1, 1, (n, channels, height, width)).astype(theta.dtype)
    out = dc.grid_sample(input, dc.affine_grid(theta, size, align_corners), "bilinear", "zeros",
                         align_corners)

    def axis_map(steps, size_in):
        """Output index -> normalised coordinate a*i + b, and normalised -> pixel s*g + t."""
        if steps == 1:
            a, b = 0.0, 0.0
        elif align_corners:
            a, b = 2 / (steps - 1), -1.0
        else:
            a, b = 2 / steps, 1 / steps - 1
        s, t = ((size_in - 1) / 2, (size_in - 1) / 2) if align_corners else (size_in / 2, (size_in - 1) / 2)
        return a, b, s, t

    a_h, b_h, s_h, t_h = axis_map(out_h, height)
    a_w, b_w, s_w, t_w = axis_map(out_w, width)
    for b in range(n):
        (t00, t01, t02), (t10, t11, t12) = np.asarray(theta[b], np.float64)
        # input (row, col) = matrix @ output (row, col) + offset
        matrix = np.array([[s_h * t11 * a_h, s_h * t10 * a_w], [s_w * t01 * a_h, s_w * t00 * a_w]])
        offset = np.array([s_h * (t10 * b_w + t11 * b_h + t12) + t_h,
                           s_w * (t00 * b_w + t01 * b_h + t02) + t_w])
        for c in range(channels):
            expected = scipy.ndimage.affine_transform(
                np.asarray(input[b, c], np.float64), matrix, offset, output_shape=(out_h, out_w),
                order=1, mode="grid-constant", cval=0.0)
            assert_close(out[b, c], expected, dtype=theta.dtype)


# --------------------------------------------------------------------------- gradients


@given(problem=grid_sample_problems(dtypes=FLOAT64_ONLY, max_channels=12), rng=numpy_generators())
def test_input_gradient_is_the_adjoint(problem, rng):
    u = rng.uniform(-1, 1, problem.input.shape)
    v = problem.grad_output
    lhs = np.vdot(sample(problem, input=u), v)
    rhs = np.vdot(u, sample_backward(problem, needs=("input",)).input)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-12)


def loss(problem, grid):
    return float(np.vdot(problem.grad_output, sample(problem, grid=grid)))


@given(problem=grid_sample_problems(dtypes=FLOAT64_ONLY, modes=("bilinear",), min_batch=1,
                                    grid_styles=("away_from_kinks",), max_channels=12))
def test_grid_gradient_matches_finite_differences(problem):
    # Each output pixel depends on its own grid point only, so one perturbation
    # of every x (or y) at once gives every pixel's derivative.
    step = 1e-5
    grads = sample_backward(problem, needs=("grid",))
    assert grads.input is None
    expected = np.zeros(problem.grid.shape)
    for axis in (0, 1):
        shift = np.zeros(problem.grid.shape)
        shift[..., axis] = step
        plus = sample(problem, grid=problem.grid + shift)
        minus = sample(problem, grid=problem.grid - shift)
        expected[..., axis] = (problem.grad_output * (plus - minus)).sum(axis=1) / (2 * step)
    np.testing.assert_allclose(grads.grid, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "padding_mode, pixel_x, slope",
    [
        # slope: d sample / d pixel x on the row a = [a0 .. a4], PyTorch's rules
        ("zeros", -1.0, lambda a: a[0]),  # window includes -1: cell [-1, 0]
        ("zeros", 0.0, lambda a: a[1] - a[0]),  # floor cell towards larger x
        ("zeros", 4.0, lambda a: -a[4]),  # cell [4, 5], corner 5 is padding
        ("zeros", 5.0, lambda a: 0.0),  # outside
        ("border", 0.0, lambda a: 0.0),  # clip end points count as clipped
        ("border", 4.0, lambda a: 0.0),
        ("border", -3.0, lambda a: 0.0),
        ("border", 0.5, lambda a: a[1] - a[0]),
        ("reflection", -1.0, lambda a: -(a[2] - a[1])),  # reflected to 1, slope negated
        ("reflection", 0.0, lambda a: 0.0),
        ("reflection", 4.0, lambda a: 0.0),
        ("reflection", 5.0, lambda a: -(a[4] - a[3])),  # reflected to 3
        ("reflection", 9.0, lambda a: a[2] - a[1]),  # reflected twice, to 1
    ],
)
def test_grid_gradient_follows_pytorch_at_kinks_and_boundaries(padding_mode, pixel_x, slope):
    row = np.array([0.3, -0.7, 0.2, 0.9, -0.4])
    input = row.reshape(1, 1, 1, 5)
    # align_corners=True, W = 5: pixel x = (gx + 1) * 2; H = 1: y is always pixel 0
    grid = np.array([pixel_x / 2 - 1, 0.25]).reshape(1, 1, 1, 2)
    grads = dc.grid_sample_backward(np.ones((1, 1, 1, 1)), input, grid, "bilinear", padding_mode,
                                    True)
    np.testing.assert_allclose(grads.grid[0, 0, 0], [2 * slope(row), 0.0], atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reflect_near_is_reflect_coordinate_bit_for_bit_within_two_periods(dtype):
    """The CPU tile loop's select-only reflection against the general one, on
    period multiples, their neighbouring floats, random values and non-finite
    ones: equal to the bit wherever it says ``within``, and not ``within``
    for NaN, infinities, a single-pixel axis (``span == 0``) or further out."""
    from defconv_np.kernels.sampling import reflect_coordinate, reflect_near

    one, rng = dtype(1), np.random.default_rng(7)
    for low, span in [(dtype(-0.5), dtype(64)), (dtype(0), dtype(4)), (dtype(0), dtype(0)),
                      (dtype(-0.5), dtype(1)), (dtype(0), dtype(1000))]:
        marks = low + span * np.arange(-9, 10, dtype=dtype)
        xs = np.concatenate([marks, np.nextafter(marks, dtype(np.inf)),
                             np.nextafter(marks, dtype(-np.inf)),
                             rng.uniform(-9, 9, 400).astype(dtype) * max(span, one),
                             np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, -0.0],
                                      dtype)])
        for x in xs:
            pixel, factor, within = reflect_near(x, low, span, one)
            distance = abs(np.float64(x) - np.float64(low))
            assert within == (span != 0 and distance < 4 * np.float64(span)), (x, low, span)
            if within:
                ref_pixel, ref_factor = reflect_coordinate(x, low, span, one)
                assert np.array([pixel, factor], dtype).tobytes() == \
                    np.array([ref_pixel, ref_factor], dtype).tobytes(), (x, low, span)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reflection_is_exact_near_and_far(dtype):
    """Tiles mixing coordinates within two periods of the reflection (the
    vectorised path) with coordinates further out (``fmod``), the list
    repeated so that every pixel block of any thread count holds both:
    values and grid gradients against a float64 reflection by ``np.mod``.
    The grid's y axis has a single pixel (``span == 0``), which every y
    coordinate reaches through the general path."""
    row = np.array([0.3, -0.7, 0.2, 0.9, -0.4])
    # align_corners=True, W = 5: pixel x = (gx + 1) * 2, reflected about 0
    # and 4 (period 8); H = 1, so y always lands on pixel 0
    pixels = np.array([0.25, 3.75, 4.0, 5.5, 7.75, 8.0, 8.25, 12.5, 15.75, 16.0, 16.25, 23.5,
                       24.0, 1e3 + 0.25, 2.0**20 + 0.5, -0.25, -4.0, -7.5, -8.0, -8.25, -15.75,
                       -16.0, -17.5, -1e3 - 0.75])
    pixels = np.tile(pixels, 64)
    grid = np.stack([pixels / 2 - 1, np.full_like(pixels, 0.25)], -1).reshape(1, 1, -1, 2)
    grid = grid.astype(dtype)
    x = grid[0, 0, :, 0].astype(np.float64)
    distance = np.abs((x + 1) * 2)
    extra = np.mod(distance, 8.0)
    reflected = np.where(extra > 4, 8 - extra, extra)
    left = np.minimum(np.floor(reflected), 3).astype(int)
    frac = reflected - left
    expected = row[left] * (1 - frac) + row[left + 1] * frac
    slope = (row[left + 1] - row[left]) * np.where(extra > 4, -1.0, 1.0) * np.sign(x + 1)
    on_kink = reflected == np.round(reflected)  # PyTorch's rules at kinks: tested above
    input = row.reshape(1, 1, 1, 5).astype(dtype)
    out = dc.grid_sample(input, grid, "bilinear", "reflection", True)
    np.testing.assert_allclose(out[0, 0, 0], expected, rtol=tolerance(dtype), atol=1e-6)
    grads = dc.grid_sample_backward(np.ones((1, 1, 1, pixels.size), dtype), input, grid,
                                    "bilinear", "reflection", True)
    np.testing.assert_allclose(grads.grid[0, 0, ~on_kink, 0], 2 * slope[~on_kink],
                               rtol=tolerance(dtype), atol=1e-5)


@given(case=affine_problems(dtypes=FLOAT64_ONLY, min_batch=1, max_size=3),
       shape=st.tuples(st.integers(1, 5), st.integers(1, 5)),
       padding_mode=st.sampled_from(GRID_PADDING_MODES), rng=numpy_generators())
def test_theta_gradient_matches_finite_differences(case, shape, padding_mode, rng):
    theta, size, align_corners = case
    n, channels, out_h, out_w = size
    input = rng.uniform(-1, 1, (n, channels) + shape)
    grad_output = rng.uniform(-1, 1, (n, channels, out_h, out_w))
    options = dict(mode="bilinear", padding_mode=padding_mode, align_corners=align_corners)
    grid = dc.affine_grid(theta, size, align_corners)
    y, x = pixel_coordinates(grid, *shape, align_corners)
    # away from kinks (integers) in every axis that can move
    for coordinate, length in ((y, shape[0]), (x, shape[1])):
        if length > 1 or not align_corners:
            assume(distance_to_integers(coordinate).min() > 0.01)

    def theta_loss(t):
        return float(np.vdot(grad_output, dc.grid_sample(input, dc.affine_grid(t, size, align_corners),
                                                         **options)))

    grad_grid = dc.grid_sample_backward(grad_output, input, grid, **options, needs=("grid",)).grid
    grad_theta = dc.affine_grid_backward(grad_grid, size, align_corners)
    step = 1e-6
    expected = np.zeros(theta.shape)
    for index in np.ndindex(*theta.shape):
        shift = np.zeros(theta.shape)
        shift[index] = step
        expected[index] = (theta_loss(theta + shift) - theta_loss(theta - shift)) / (2 * step)
    np.testing.assert_allclose(grad_theta, expected, rtol=1e-5, atol=1e-5)


@given(case=affine_problems(), rng=numpy_generators())
def test_affine_grid_backward_is_the_adjoint(case, rng):
    theta, size, align_corners = case
    grad_grid = rng.uniform(-1, 1, (size[0], size[2], size[3], 2)).astype(theta.dtype)
    grad_theta = dc.affine_grid_backward(grad_grid, size, align_corners)
    assert grad_theta.shape == theta.shape and grad_theta.dtype == theta.dtype
    lhs = np.vdot(np.asarray(dc.affine_grid(theta, size, align_corners), np.float64), grad_grid)
    rhs = np.vdot(np.asarray(theta, np.float64), grad_theta)
    np.testing.assert_allclose(lhs, rhs, rtol=tolerance(theta.dtype), atol=tolerance(theta.dtype) * 10)


@given(problem=grid_sample_problems(modes=("nearest",)))
def test_nearest_has_zero_grid_gradient(problem):
    grads = sample_backward(problem)
    assert grads.grid.shape == problem.grid.shape and grads.grid.dtype == problem.dtype
    assert not np.any(grads.grid)


# --------------------------------------------------------------------------- edge cases


SPECIAL_VALUES = (np.nan, np.inf, -np.inf, 1e30, -1e30)


@given(problem=grid_sample_problems(min_batch=1), rng=numpy_generators())
def test_non_finite_and_huge_grid_values_are_safe(problem, rng):
    grid = problem.grid.copy()
    special = rng.random(grid.shape) < 0.4
    grid[special] = rng.choice(np.array(SPECIAL_VALUES, problem.dtype), size=int(special.sum()))
    out = sample(problem, grid=grid)
    grads = sample_backward(problem, grid=grid)
    for result in (out, grads.input, grads.grid):
        assert np.all(np.isfinite(result))

    nan_point = np.isnan(grid).any(axis=-1)
    assert not np.any(out.transpose(0, 2, 3, 1)[nan_point])
    assert not np.any(grads.grid[nan_point])

    # Huge values and (where the coordinate stays defined) infinities act like
    # any point far outside: 0 in zeros mode, the edge pixel in border mode.
    if problem.padding_mode in ("zeros", "border"):
        height, width = problem.input.shape[2:]
        degenerate = [problem.align_corners and size == 1 for size in (width, height)]
        far = np.where(np.isfinite(grid), grid, np.sign(grid) * 3.0)
        far = np.where(np.abs(grid) > 2, np.sign(grid) * 3.0, far).astype(problem.dtype)
        check = ~nan_point
        for axis in (0, 1):
            if degenerate[axis]:  # inf * 0 is NaN there
                check &= ~np.isinf(grid[..., axis])
        expected = sample(problem, grid=far)
        np.testing.assert_array_equal(out.transpose(0, 2, 3, 1)[check],
                                      expected.transpose(0, 2, 3, 1)[check])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_zero(dtype):
    input = np.zeros((0, 3, 4, 5), dtype)
    grid = np.zeros((0, 2, 6, 2), dtype)
    assert dc.grid_sample(input, grid).shape == (0, 3, 2, 6)
    grads = dc.grid_sample_backward(np.zeros((0, 3, 2, 6), dtype), input, grid)
    assert grads.input.shape == input.shape and grads.grid.shape == grid.shape
    assert dc.affine_grid(np.zeros((0, 2, 3), dtype), (0, 3, 2, 6)).shape == (0, 2, 6, 2)
    assert dc.affine_grid_backward(np.zeros((0, 2, 6, 2), dtype), (0, 3, 2, 6)).shape == (0, 2, 3)


@given(problem=grid_sample_problems(min_batch=1))
def test_any_layout_and_read_only_inputs_give_the_same_result(problem):
    arrays = (problem.input, problem.grid, problem.grad_output)
    copies = [a.copy() for a in arrays]
    out = sample(problem)
    grads = sample_backward(problem)
    for input, grid, grad_output in layout_variants(*arrays):
        np.testing.assert_array_equal(sample(problem, input=input, grid=grid), out)
        again = sample_backward(problem, input=input, grid=grid, grad_output=grad_output)
        np.testing.assert_array_equal(again.input, grads.input)
        np.testing.assert_array_equal(again.grid, grads.grid)
    for original, copy in zip(arrays, copies):
        np.testing.assert_array_equal(original, copy)


@given(problem=grid_sample_problems(dtypes=(np.dtype(np.float32),), grid_styles=("uniform",)))
def test_float32_agrees_with_float64(problem):
    wide = {name: getattr(problem, name).astype(np.float64) for name in ("input", "grid", "grad_output")}
    height, width = problem.input.shape[2:]
    y, x = pixel_coordinates(problem.grid, height, width, problem.align_corners)
    # float32 positions may fall the other way of a tie or kink than float64 ones
    if problem.mode == "nearest":
        unsure = (distance_to_half_integers(y) < 1e-4) | (distance_to_half_integers(x) < 1e-4)
    else:
        unsure = (distance_to_integers(y) < 1e-4) | (distance_to_integers(x) < 1e-4)
    keep = ~unsure[:, None]
    out32, out64 = sample(problem), sample(problem, **{k: wide[k] for k in ("input", "grid")})
    keep_out = np.broadcast_to(keep, out32.shape)
    assert_close(out32[keep_out], out64[keep_out], dtype=np.float32)
    g32, g64 = sample_backward(problem), sample_backward(problem, **wide)
    if not unsure.any():
        assert_close(g32.input, g64.input, dtype=np.float32)
    keep_grid = np.broadcast_to(~unsure[..., None], g32.grid.shape)
    assert_close(g32.grid[keep_grid], g64.grid[keep_grid], dtype=np.float32)


@contextlib.contextmanager
def configured(**settings):
    """``defconv_np.config`` with ``settings`` for the block, restored after."""
    saved = {name: getattr(dc.config, name) for name in settings}
    try:
        for name, value in settings.items():
            setattr(dc.config, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(dc.config, name, value)


def fixed_work_blocks(blocks):
    """Work blocks per image (channel or pixel blocks) whatever the thread count."""
    return mock.patch.object(_cpu, "work_blocks", lambda items, limit: min(limit, blocks))


@given(problem=grid_sample_problems(min_batch=1, max_channels=5))
def test_work_split_changes_nothing(problem):
    out = sample(problem)
    grads = sample_backward(problem)
    # tiny tiles and many work items: several tiles, channel and pixel blocks
    # (one channel at a time: grouping makes a small grid one tile)
    with configured(cpu_grid_tile_pixels=3, cpu_items_per_thread=64, cpu_grid_group_channels=0):
        np.testing.assert_array_equal(sample(problem), out)
        split = sample_backward(problem)
        grid_only = sample_backward(problem, needs=("grid",))
    np.testing.assert_array_equal(split.input, grads.input)
    # large planes are read from a padded copy, not in bands: the same sums
    with configured(cpu_grid_band_pixels=0):
        np.testing.assert_array_equal(sample(problem), out)
        from_padded = sample_backward(problem)
    np.testing.assert_array_equal(from_padded.input, grads.input)
    np.testing.assert_array_equal(from_padded.grid, grads.grid)
    # channel blocks sum the grid gradient in another order
    assert_close(split.grid, grads.grid, dtype=problem.dtype)
    assert_close(grid_only.grid, grads.grid, dtype=problem.dtype)
    np.testing.assert_array_equal(sample_backward(problem).grid, grads.grid)  # deterministic


@given(problem=grid_sample_problems(min_batch=1, max_batch=3, min_channels=8, max_channels=27),
       group=st.sampled_from([8, 11, 32]), blocks=st.sampled_from([1, 3, 8]))
def test_channel_groups_change_only_the_order_of_the_grid_sums(problem, group, blocks):
    # The bilinear backward takes channels in groups side by side (0: one at a
    # time). Groups of 8 and 11 leave tails of every length, some grouped with
    # another layout, some one at a time. Work blocks per image: 1 (the whole
    # image in one work item, as at the benchmark shape), 3, or 8 (more than a
    # few channels fill: some blocks are empty, and with 3 images a thread's
    # share of work items spans two images).
    with fixed_work_blocks(blocks):
        with configured(cpu_grid_group_channels=0):
            one_at_a_time = sample_backward(problem)
        with configured(cpu_grid_group_channels=group):
            grouped = sample_backward(problem)
            input_only = sample_backward(problem, needs=("input",))
            grid_only = sample_backward(problem, needs=("grid",))
    np.testing.assert_array_equal(grouped.input, one_at_a_time.input)
    np.testing.assert_array_equal(input_only.input, one_at_a_time.input)
    assert_close(grouped.grid, one_at_a_time.grid, dtype=problem.dtype)
    # alone, the grid gradient splits pixels, not channels: other groups
    assert_close(grid_only.grid, grouped.grid, dtype=problem.dtype)


@pytest.mark.parametrize("channels, blocks", [(9, 8), (17, 8), (40, 3)])
def test_channel_blocks_past_the_last_channel_change_nothing(channels, blocks):
    # 9 channels in 8 blocks of 2: blocks 5-7 start past the last channel
    # and must do nothing (not fail, dropping the rest of a thread's work)
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (3, channels, 6, 7))
    grid = rng.uniform(-1.1, 1.1, (3, 4, 5, 2))
    go = rng.uniform(-1, 1, (3, channels, 4, 5))
    with configured(cpu_grid_group_channels=0):
        expected = dc.grid_sample_backward(go, x, grid)
    with fixed_work_blocks(blocks):
        got = dc.grid_sample_backward(go, x, grid)
    np.testing.assert_array_equal(got.input, expected.input)
    assert_close(got.grid, expected.grid, dtype=np.float64)


@pytest.mark.parametrize(
    "shape, dtype, most, group",
    [
        ((1, 64, 64, 64), np.float32, 32, 32),  # 67 x 67 padded planes: 72 fit in 1.25 MiB
        ((1, 64, 64, 64), np.float64, 32, 16),  # 128 bytes a position: 16 float64
        ((1, 64, 128, 128), np.float32, 32, 16),  # 19 fit: 16, whole vector passes
        ((1, 64, 199, 199), np.float32, 32, 8),  # 202 x 202 padded: 8 fit
        ((1, 64, 200, 200), np.float32, 32, 0),  # 203 x 203: 7 fit, one at a time
        ((1, 64, 98, 98), np.float64, 32, 16),  # 101 x 101: 16 fit
        ((1, 64, 99, 99), np.float64, 32, 0),  # 102 x 102: 15 fit, float64 takes 16 only
        ((1, 64, 64, 64), np.float32, 11, 11),  # the configured most
        ((1, 64, 64, 64), np.float32, 4, 0),  # under 8: one at a time
    ],
)
def test_channel_group_fits_the_scratch_budget(shape, dtype, most, group):
    with configured(cpu_grid_group_channels=most):
        sampler = GridSampler(np.zeros(shape, dtype), np.zeros((1, 2, 2, 2), dtype), False, 0,
                              False)
        assert sampler._channel_group() == group


@pytest.mark.parametrize("group", [0, 32])
@pytest.mark.parametrize("tile", [3, 4096])
def test_input_gradient_overwrites_rows_no_sample_touches(group, tile):
    # Samples in the top two rows only: the kernels write the band they
    # touch and must zero the other rows of an uninitialised target.
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (2, 40, 8, 5))
    grid = np.stack([rng.uniform(-1, 1, (2, 3, 4)), rng.uniform(-1.2, -0.8, (2, 3, 4))], axis=-1)
    go = rng.uniform(-1, 1, (2, 40, 3, 4))
    with configured(cpu_grid_band_pixels=0):  # a zero-padded copy, summed into zeros
        expected = dc.grid_sample_backward(go, x, grid, needs=("input",)).input
    target = np.full(x.shape, np.nan)
    # one work item per image: groups of 32 and 8
    with configured(cpu_grid_group_channels=group, cpu_grid_tile_pixels=tile), \
            fixed_work_blocks(1):
        GridSampler(x, grid, False, 0, False).backward(go, target, None)
    assert np.all(expected[:, :, 3:] == 0)
    np.testing.assert_allclose(target, expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("group", [0, 32])
def test_input_gradient_of_an_empty_grid_is_zero(group):
    target = np.full((2, 9, 4, 5), np.nan)
    with configured(cpu_grid_group_channels=group):
        GridSampler(np.ones(target.shape), np.zeros((2, 0, 3, 2)), False, 0, False).backward(
            np.zeros((2, 9, 0, 3)), target, None)
    np.testing.assert_array_equal(target, 0.0)


# --------------------------------------------------------------------------- validation


def _arrays(dtype=np.float64):
    return np.zeros((2, 3, 4, 5), dtype), np.zeros((2, 6, 7, 2), dtype)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(input=np.zeros((3, 4, 5))), ValueError, "input must be 4-D"),
        (dict(grid=np.zeros((2, 6, 7))), ValueError, "grid must be 4-D"),
        (dict(grid=np.zeros((2, 6, 7, 3))), ValueError, r"grid must be \(N, Hg, Wg, 2\)"),
        (dict(grid=np.zeros((1, 6, 7, 2))), ValueError, r"grid batch \(1\) must equal input batch \(2\)"),
        (dict(input=np.zeros((2, 3, 0, 5))), ValueError, "non-empty H and W"),
        (dict(mode="trilinear"), ValueError, "mode must be one of"),
        (dict(mode=1), TypeError, "mode must be one of"),
        (dict(padding_mode="wrap"), ValueError, "padding_mode must be one of"),
        (dict(align_corners=None), TypeError, "align_corners must be a bool"),
        (dict(align_corners=1), TypeError, "align_corners must be a bool"),
        (dict(input=np.zeros((2, 3, 4, 5), np.int64)), TypeError, "input must have dtype float32 or float64"),
        (dict(grid=np.zeros((2, 6, 7, 2), np.float32)), TypeError,
         "grid has dtype float32 but (input|grad_output) has float64"),
        (dict(grid=[[0.0, 0.0]]), TypeError, "grid must be a numpy.ndarray"),
    ],
)
def test_grid_sample_rejects_bad_arguments(change, error, message):
    input, grid = _arrays()
    args = dict(input=input, grid=grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    args.update(change)
    with pytest.raises(error, match=message):
        dc.grid_sample(**args)
    grad_output = np.zeros((2, 3, 6, 7))
    with pytest.raises(error, match=message):
        dc.grid_sample_backward(grad_output, **args)


def test_grid_sample_backward_rejects_bad_grad_output_and_needs():
    input, grid = _arrays()
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2, 3, 6, 7\)"):
        dc.grid_sample_backward(np.zeros((2, 3, 7, 6)), input, grid)
    with pytest.raises(ValueError, match="unknown gradients"):
        dc.grid_sample_backward(np.zeros((2, 3, 6, 7)), input, grid, needs=("offset",))
    grads = dc.grid_sample_backward(np.zeros((2, 3, 6, 7)), input, grid, needs="grid")
    assert grads.input is None and grads.grid.shape == grid.shape


@pytest.mark.parametrize(
    "theta, size, error, message",
    [
        (np.zeros((2, 2, 3)), (3, 1, 4, 5), ValueError, r"theta must have shape \(3, 2, 3\)"),
        (np.zeros((2, 3, 3)), (2, 1, 4, 5), ValueError, r"theta must have shape \(2, 2, 3\)"),
        (np.zeros((2, 2, 3)), (2, 4, 5), ValueError, r"size must be \(N, C, H, W\)"),
        (np.zeros((2, 2, 3)), (2, 1, 0, 5), ValueError, "C, H, W >= 1"),
        (np.zeros((2, 2, 3)), (2, 1, 4.0, 5), TypeError, "size must be four ints"),
        (np.zeros((2, 2, 3), np.int32), (2, 1, 4, 5), TypeError, "theta must have dtype"),
    ],
)
def test_affine_grid_rejects_bad_arguments(theta, size, error, message):
    with pytest.raises(error, match=message):
        dc.affine_grid(theta, size)


def test_affine_grid_rejects_bad_align_corners_and_grad_grid():
    with pytest.raises(TypeError, match="align_corners must be a bool"):
        dc.affine_grid(np.zeros((1, 2, 3)), (1, 1, 2, 2), align_corners="yes")
    with pytest.raises(ValueError, match=r"grad_grid must have shape \(1, 2, 2, 2\)"):
        dc.affine_grid_backward(np.zeros((1, 2, 3, 2)), (1, 1, 2, 2))


@pytest.mark.parametrize("padding_mode, align_corners", [
    ("border", False), ("border", True), ("reflection", False), ("reflection", True),
    ("zeros", True)])
def test_float32_plane_wider_than_2_pow_24_reaches_its_last_pixel(padding_mode, align_corners):
    """W = 2**24 + 3 is not a float32: the plane's size, size - 1 and window
    limit are formed from exact integers (as PyTorch forms them), so gx = 1
    still lands on the last pixel rather than outside the plane."""
    width = 2**24 + 3
    x = np.zeros((1, 1, 1, width), np.float32)
    x[0, 0, 0, -1] = 7.0
    x[0, 0, 0, -2] = 5.0
    grid = np.array([[[[1.0, 0.0]]]], np.float32)
    out = dc.grid_sample(x, grid, padding_mode=padding_mode, align_corners=align_corners)
    assert out[0, 0, 0, 0] == 7.0

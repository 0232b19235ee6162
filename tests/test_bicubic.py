"""Bicubic grid_sample (4-D) and its gradients against a float64 loop
reference of PyTorch's formula, adjoint identities, finite differences and,
where installed, PyTorch itself."""

import numpy as np
import pytest
from hypothesis import given

import defconv_np as dc
from tests.naive import assert_close, naive_bicubic_grid_sample
from tests.strategies import FLOAT64_ONLY, grid_sample_problems, numpy_generators

#: up to 6 channels: the forward kernel handles channels in fours, then one by one
bicubic_problems = grid_sample_problems(modes=("bicubic",), max_channels=6)


def sample(problem, **changes):
    args = dict(input=problem.input, grid=problem.grid, **problem.options)
    args.update(changes)
    return dc.grid_sample(**args)


def sample_backward(problem, needs=("input", "grid"), **changes):
    args = dict(grad_output=problem.grad_output, input=problem.input, grid=problem.grid,
                **problem.options)
    args.update(changes)
    return dc.grid_sample_backward(**args, needs=needs)


@given(problem=bicubic_problems)
def test_matches_the_loop_reference(problem):
    out = sample(problem)
    assert type(out) is np.ndarray and out.dtype == problem.dtype
    assert out.shape == problem.grad_output.shape
    expected = naive_bicubic_grid_sample(problem.input, problem.grid, problem.padding_mode,
                                         problem.align_corners)
    assert_close(out, expected, dtype=problem.dtype)


@given(problem=grid_sample_problems(modes=("bicubic",), padding_modes=("border", "reflection"),
                                    min_batch=1), value=numpy_generators())
def test_folding_padding_modes_reproduce_a_constant_image(problem, value):
    # the 16 weights sum to 1 and every tap lands in the image
    constant = np.full(problem.input.shape, value.uniform(-2, 2), problem.dtype)
    out = sample(problem, input=constant)
    assert_close(out, np.full(out.shape, float(constant.flat[0])), dtype=problem.dtype)


@given(problem=grid_sample_problems(modes=("bicubic",), grid_styles=("lattice",)))
def test_integer_and_half_integer_positions(problem):
    expected = naive_bicubic_grid_sample(problem.input, problem.grid, problem.padding_mode,
                                         problem.align_corners)
    assert_close(sample(problem), expected, dtype=problem.dtype)


@given(problem=grid_sample_problems(modes=("bicubic",), dtypes=FLOAT64_ONLY),
       rng=numpy_generators())
def test_input_gradient_is_the_adjoint(problem, rng):
    u = rng.uniform(-1, 1, problem.input.shape)
    lhs = np.vdot(sample(problem, input=u), problem.grad_output)
    rhs = np.vdot(u, sample_backward(problem, needs=("input",)).input)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-12)


@given(problem=grid_sample_problems(modes=("bicubic",), dtypes=FLOAT64_ONLY, min_batch=1,
                                    grid_styles=("away_from_kinks",)))
def test_grid_gradient_matches_finite_differences(problem):
    step = 1e-6
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


SPECIAL_VALUES = (np.nan, np.inf, -np.inf, 1e30, -1e30)


@given(problem=grid_sample_problems(modes=("bicubic",), min_batch=1), rng=numpy_generators())
def test_non_finite_and_huge_grid_values_are_safe(problem, rng):
    grid = problem.grid.copy()
    special = rng.random(grid.shape) < 0.4
    grid[special] = rng.choice(np.array(SPECIAL_VALUES, problem.dtype), size=int(special.sum()))
    out = sample(problem, grid=grid)
    grads = sample_backward(problem, grid=grid)
    for result in (out, grads.input, grads.grid):
        assert np.all(np.isfinite(result))
    # a non-finite pixel coordinate gives 0 and zero grid gradients in every mode
    height, width = problem.input.shape[2:]
    undefined = ~np.isfinite(grid).all(axis=-1)
    if problem.align_corners:  # 1e30 * 0 is 0, but inf * 0 is NaN
        undefined = np.isnan(grid).any(axis=-1)
        for axis, size in ((0, width), (1, height)):
            if size > 1:
                undefined |= np.isinf(grid[..., axis])
    assert not np.any(np.moveaxis(out, 1, -1)[undefined])
    assert not np.any(grads.grid[undefined])
    # huge finite values are exact: the reference folds them the same way (in
    # float64; float32 forms the pixel coordinate of 1e30 with other rounding)
    if problem.dtype != np.float64:
        return
    finite = np.where(np.isfinite(grid), grid, 0).astype(problem.dtype)
    expected = naive_bicubic_grid_sample(problem.input, finite, problem.padding_mode,
                                         problem.align_corners)
    assert_close(sample(problem, grid=finite), expected, dtype=problem.dtype)


def test_bicubic_is_torchs_on_a_known_point():
    # x = 1.25 (align_corners, W = 4): taps 0..3, weights cubic_coefficients(0.25)
    row = np.array([1.0, 2.0, 4.0, 8.0])
    grid = np.array([1.25 / 1.5 - 1, 0.0]).reshape(1, 1, 1, 2)
    out = dc.grid_sample(row.reshape(1, 1, 1, 4), grid, "bicubic", "zeros", True)
    a = -0.75
    t = 0.25
    weights = [((a * d - 5 * a) * d + 8 * a) * d - 4 * a for d in (t + 1,)] + \
              [((a + 2) * d - (a + 3)) * d * d + 1 for d in (t, 1 - t)] + \
              [((a * d - 5 * a) * d + 8 * a) * d - 4 * a for d in (2 - t,)]
    np.testing.assert_allclose(out.ravel(), [np.dot(weights, row)], rtol=1e-14)


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch(padding_mode, align_corners, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    input = rng.standard_normal((2, 3, 5, 6)).astype(dtype)
    grid = rng.uniform(-1.4, 1.4, (2, 4, 5, 2)).astype(dtype)
    grad_output = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    options = dict(mode="bicubic", padding_mode=padding_mode, align_corners=align_corners)
    t_input = torch.tensor(input, requires_grad=True)
    t_grid = torch.tensor(grid, requires_grad=True)
    t_out = torch.nn.functional.grid_sample(t_input, t_grid, **options)
    t_out.backward(torch.tensor(grad_output))
    out = dc.grid_sample(input, grid, **options)
    grads = dc.grid_sample_backward(grad_output, input, grid, **options)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    for ours, theirs in ((out, t_out), (grads.input, t_input.grad), (grads.grid, t_grid.grad)):
        theirs = theirs.detach().numpy()
        np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * np.abs(theirs).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_zero(dtype):
    input, grid = np.zeros((0, 2, 3, 4), dtype), np.zeros((0, 2, 2, 2), dtype)
    assert dc.grid_sample(input, grid, "bicubic").shape == (0, 2, 2, 2)
    grads = dc.grid_sample_backward(np.zeros((0, 2, 2, 2), dtype), input, grid, "bicubic")
    assert grads.input.shape == input.shape and grads.grid.shape == grid.shape

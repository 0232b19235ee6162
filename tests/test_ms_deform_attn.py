"""ms_deform_attn and its gradients against a float64 loop reference, a
composition of grid_sample per level (Deformable DETR's pure-PyTorch
reference, step for step), finite differences and adjoint identities."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import defconv_np as dc
from tests.naive import (
    assert_close,
    assert_same_up_to_summation_order,
    naive_ms_deform_attn,
    naive_ms_deform_attn_grads,
)
from tests.strategies import (
    FLOAT64_ONLY,
    layout_variants,
    ms_deform_attn_problems,
    numpy_generators,
)

GRADS = dc.MSDeformAttnGrads._fields


def backward(problem, grad_output=None, **kwargs):
    go = problem.grad_output if grad_output is None else grad_output
    return dc.ms_deform_attn_backward(go, *problem.args, **kwargs)


def with_changes(problem, **changes):
    args = dict(value=problem.value, spatial_shapes=problem.spatial_shapes,
                level_start_index=problem.level_start_index,
                sampling_locations=problem.sampling_locations,
                attention_weights=problem.attention_weights)
    args.update(changes)
    return dc.ms_deform_attn(**args)


# --------------------------------------------------------------------------- references


@given(problem=ms_deform_attn_problems())
def test_forward_matches_naive(problem):
    out = dc.ms_deform_attn(*problem.args)
    assert type(out) is np.ndarray and out.dtype == problem.dtype
    assert out.shape == problem.grad_output.shape
    expected = naive_ms_deform_attn(problem.value, problem.spatial_shapes,
                                    problem.sampling_locations, problem.attention_weights)
    assert_close(out, expected, dtype=problem.dtype)


@given(problem=ms_deform_attn_problems())
def test_backward_matches_naive(problem):
    grads = backward(problem)
    expected = naive_ms_deform_attn_grads(problem.grad_output, problem.value,
                                          problem.spatial_shapes, problem.sampling_locations,
                                          problem.attention_weights)
    for name in GRADS:
        got = getattr(grads, name)
        assert got.dtype == problem.dtype, name
        assert_close(got, expected[name], dtype=problem.dtype, err_msg=name)


def grid_sample_composition(problem):
    """Deformable DETR's ``ms_deform_attn_core_pytorch`` written with
    dc.grid_sample, and its backward with dc.grid_sample_backward, in the
    problem's dtype: (output, value grad, location grad, weight grad)."""
    value, loc, a = problem.value, problem.sampling_locations, problem.attention_weights
    n, _, m, d = value.shape
    _, lq, _, n_levels, p, _ = loc.shape
    go = problem.grad_output.reshape(n, lq, m, d).transpose(0, 2, 3, 1)  # (N, M, D, Lq)
    out = np.zeros((n, m, d, lq), value.dtype)
    grad_value, grad_loc = [], np.zeros_like(loc)
    grad_a = np.zeros_like(a)
    first = 0
    for lv, (h, w) in enumerate(problem.spatial_shapes.tolist()):
        plane = value[:, first:first + h * w].reshape(n, h, w, m, d).transpose(0, 3, 4, 1, 2)
        plane = plane.reshape(n * m, d, h, w)
        grid = (2 * loc[:, :, :, lv] - 1).transpose(0, 2, 1, 3, 4).reshape(n * m, lq, p, 2)
        samples = dc.grid_sample(plane, grid, "bilinear", "zeros", False)  # (N*M, D, Lq, P)
        weight = a[:, :, :, lv].transpose(0, 2, 1, 3).reshape(n * m, 1, lq, p)
        out += (samples * weight).sum(axis=3).reshape(n, m, d, lq)
        grad_samples = go.reshape(n * m, d, lq, 1) * weight
        g = dc.grid_sample_backward(grad_samples, plane, grid, "bilinear", "zeros", False)
        grad_value.append(g.input.reshape(n, m, d, h * w).transpose(0, 3, 1, 2))
        grad_loc[:, :, :, lv] = 2 * g.grid.reshape(n, m, lq, p, 2).transpose(0, 2, 1, 3, 4)
        grad_a[:, :, :, lv] = (go.reshape(n * m, d, lq, 1) * samples).sum(axis=1).reshape(
            n, m, lq, p).transpose(0, 2, 1, 3)
        first += h * w
    out = out.transpose(0, 3, 1, 2).reshape(n, lq, m * d)
    return out, np.concatenate(grad_value, axis=1), grad_loc, grad_a


@given(problem=ms_deform_attn_problems(min_batch=1))
def test_matches_grid_sample_per_level(problem):
    """The same rules as grid_sample in both dtypes: equal up to summation order."""
    expected = grid_sample_composition(problem)
    got = (dc.ms_deform_attn(*problem.args), *backward(problem))
    for name, a, b in zip(("output",) + GRADS, got, expected):
        assert_same_up_to_summation_order(a, b, err_msg=name)


@given(problem=ms_deform_attn_problems(dtypes=FLOAT64_ONLY, min_batch=1,
                                       location_styles=("away_from_kinks",)),
       rng=numpy_generators())
def test_gradients_match_finite_differences(problem, rng):
    grads = backward(problem)
    names = ("value", "sampling_locations", "attention_weights")
    step = 1e-6
    for name, grad in zip(names, grads):
        base = getattr(problem, name)
        direction = rng.uniform(-1, 1, base.shape)

        def loss(x):
            return float(np.vdot(problem.grad_output, with_changes(problem, **{name: x})))

        expected = (loss(base + step * direction) - loss(base - step * direction)) / (2 * step)
        scale = max(1.0, float(np.abs(grad).sum()))
        np.testing.assert_allclose(np.vdot(grad, direction), expected, rtol=1e-6,
                                   atol=1e-7 * scale, err_msg=name)


@given(problem=ms_deform_attn_problems(dtypes=FLOAT64_ONLY), rng=numpy_generators())
def test_value_and_weight_gradients_are_adjoints(problem, rng):
    """The output is linear in the value and in the weights: <J u, g> = <u, J^T g>."""
    grads = backward(problem, needs=("value", "attention_weights"))
    assert grads.sampling_locations is None
    for name, grad in (("value", grads.value), ("attention_weights", grads.attention_weights)):
        u = rng.uniform(-1, 1, getattr(problem, name).shape)
        lhs = np.vdot(with_changes(problem, **{name: u}), problem.grad_output)
        np.testing.assert_allclose(lhs, np.vdot(u, grad), rtol=1e-12, atol=1e-12, err_msg=name)


@given(problem=ms_deform_attn_problems(), needs=st.sets(st.sampled_from(GRADS)))
def test_needs_selects_gradients(problem, needs):
    full = backward(problem)
    some = backward(problem, needs=tuple(needs))
    for name in GRADS:
        got = getattr(some, name)
        if name in needs:
            np.testing.assert_array_equal(got, getattr(full, name), err_msg=name)
        else:
            assert got is None, name


# --------------------------------------------------------------------------- rules


def one_row_level(row):
    """A single level of one row (H = 1, W = len(row)), N = M = D = Lq = L = P = 1."""
    row = np.asarray(row, np.float64)
    value = row.reshape(1, -1, 1, 1)
    return value, np.array([[1, row.size]]), np.array([0])


@pytest.mark.parametrize(
    "pixel_x, slope",
    [
        # d sample / d pixel x on the row a = [a0 .. a3], PyTorch's grid_sample rules
        (-1.0, lambda a: a[0]),  # the window includes -1 (the CUDA extension: 0)
        (-1.5, lambda a: 0.0),  # outside
        (0.0, lambda a: a[1] - a[0]),  # floor cell, towards larger x
        (3.0, lambda a: -a[3]),  # cell [3, 4], column 4 is padding
        (4.0, lambda a: 0.0),  # outside
    ],
)
def test_location_gradient_follows_pytorch_at_kinks_and_edges(pixel_x, slope):
    row = [0.3, -0.7, 0.2, 0.9]
    value, shapes, starts = one_row_level(row)
    width = len(row)
    loc = np.array([(pixel_x + 0.5) / width, 0.5]).reshape(1, 1, 1, 1, 1, 2)  # y = pixel 0
    a = np.full((1, 1, 1, 1, 1), 0.5)
    grads = dc.ms_deform_attn_backward(np.ones((1, 1, 1)), value, shapes, starts, loc, a)
    expected = np.interp(pixel_x, [-1, 0, 1, 2, 3, 4], [0, *row, 0], left=0, right=0)
    # d pixel / d loc = W: W / 2 from unnormalising, 2 from 2 * loc - 1; along
    # y (H = 1, pixel 0), the cell [0, 1] falls from the sample to row 1's padding
    np.testing.assert_allclose(grads.sampling_locations[0, 0, 0, 0, 0],
                               [0.5 * width * slope(row), -0.5 * expected], atol=1e-15)
    np.testing.assert_allclose(dc.ms_deform_attn(value, shapes, starts, loc, a),
                               [[[0.5 * expected]]], atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_and_huge_locations_are_safe(dtype):
    rng = np.random.default_rng(1)
    shapes = np.array([[3, 4], [1, 2]])
    value = rng.standard_normal((1, 14, 2, 3)).astype(dtype)
    loc = rng.uniform(0, 1, (1, 5, 2, 2, 2, 2)).astype(dtype)
    bad = [np.nan, np.inf, -np.inf, 1e30, -1e30]
    for q, b in enumerate(bad):
        loc[0, q, 0, q % 2, 0, q % 2] = b
    a = rng.uniform(0, 1, (1, 5, 2, 2, 2)).astype(dtype)
    go = rng.standard_normal((1, 5, 6)).astype(dtype)
    starts = np.array([0, 12])
    out = dc.ms_deform_attn(value, shapes, starts, loc, a)
    grads = dc.ms_deform_attn_backward(go, value, shapes, starts, loc, a)
    assert np.all(np.isfinite(out))
    for g in grads:
        assert np.all(np.isfinite(g))
    for q in range(len(bad)):
        index = (0, q, 0, q % 2, 0)
        assert np.all(grads.sampling_locations[index] == 0)
        assert grads.attention_weights[index] == 0
    # those samples add nothing: the same as a zero weight on them
    a_zeroed = a.copy()
    for q in range(len(bad)):
        a_zeroed[0, q, 0, q % 2, 0] = 0
    finite = loc.copy()
    finite[~np.isfinite(finite) | (np.abs(finite) > 10)] = 0.5
    np.testing.assert_array_equal(out, dc.ms_deform_attn(value, shapes, starts, finite, a_zeroed))


def test_empty_shapes():
    shapes, starts = np.array([[2, 3], [1, 1]]), np.array([0, 6])
    for n, lq, d, p in ((0, 3, 2, 2), (2, 0, 2, 2), (2, 3, 0, 2), (2, 3, 2, 0)):
        value = np.ones((n, 7, 2, d))
        loc = np.full((n, lq, 2, 2, p, 2), 0.5)
        a = np.ones((n, lq, 2, 2, p))
        out = dc.ms_deform_attn(value, shapes, starts, loc, a)
        assert out.shape == (n, lq, 2 * d) and not out.any()
        grads = dc.ms_deform_attn_backward(np.ones(out.shape), value, shapes, starts, loc, a)
        for g, like in zip(grads, (value, loc, a)):
            assert g.shape == like.shape and not g.any()


@given(problem=ms_deform_attn_problems(min_batch=1), deterministic=st.booleans())
def test_any_layout_and_inputs_never_modified(problem, deterministic):
    expected_out = dc.ms_deform_attn(*problem.args)
    expected = backward(problem)
    arrays = (problem.grad_output, *problem.args)
    for variant in layout_variants(*arrays):
        copies = [a.copy() for a in variant]
        out = dc.ms_deform_attn(*variant[1:])
        grads = dc.ms_deform_attn_backward(*variant, deterministic=deterministic)
        for before, after in zip(copies, variant):
            np.testing.assert_array_equal(before, after)
        np.testing.assert_array_equal(out, expected_out)
        for got, want in zip(grads, expected):
            np.testing.assert_array_equal(got, want)


def test_level_descriptions_as_lists_and_other_integer_dtypes():
    rng = np.random.default_rng(2)
    value = rng.standard_normal((1, 7, 1, 2))
    loc = rng.uniform(0, 1, (1, 2, 1, 2, 1, 2))
    a = rng.uniform(0, 1, (1, 2, 1, 2, 1))
    expected = dc.ms_deform_attn(value, np.array([[2, 3], [1, 1]]), np.array([0, 6]), loc, a)
    for shapes, starts in (([[2, 3], [1, 1]], [0, 6]), (((2, 3), (1, 1)), (0, 6)),
                           (np.array([[2, 3], [1, 1]], np.int32), np.array([0, 6], np.uint8))):
        np.testing.assert_array_equal(dc.ms_deform_attn(value, shapes, starts, loc, a), expected)


# --------------------------------------------------------------------------- validation


def valid_arguments():
    shapes, starts = np.array([[2, 3], [1, 1]]), np.array([0, 6])
    return dict(value=np.zeros((2, 7, 3, 4)), spatial_shapes=shapes, level_start_index=starts,
                sampling_locations=np.zeros((2, 5, 3, 2, 4, 2)),
                attention_weights=np.zeros((2, 5, 3, 2, 4)))


@pytest.mark.parametrize(
    "changes, error, pattern",
    [
        (dict(spatial_shapes=np.array([[2, 3], [1, 2]])), ValueError,
         r"spatial_shapes .* S = sum of H_l \* W_l = 8, but value has S = 7"),
        (dict(spatial_shapes=np.array([[2, 3], [0, 1]]), value=np.zeros((2, 6, 3, 4))),
         ValueError, r"sizes H_l, W_l >= 1"),
        (dict(spatial_shapes=np.array([[-2, -3], [1, 1]])), ValueError, r"H_l, W_l >= 1"),
        (dict(spatial_shapes=np.array([[2.0, 3.0], [1.0, 1.0]])), TypeError,
         r"spatial_shapes must have an integer dtype .* got float64"),
        (dict(spatial_shapes=[[2, 3], [1, True]]), TypeError, r"spatial_shapes must hold integers"),
        (dict(spatial_shapes=np.array([[True, True], [True, True]])), TypeError, r"integer dtype"),
        (dict(spatial_shapes=np.array([6, 1])), ValueError,
         r"spatial_shapes must have shape \(2, 2\)"),
        (dict(spatial_shapes=np.array([[2, 3]])), ValueError, r"for the L = 2 levels"),
        (dict(spatial_shapes="2x3"), TypeError, r"spatial_shapes must be a numpy.ndarray"),
        (dict(level_start_index=np.array([0, 5])), ValueError,
         r"level_start_index must be the cumulative level sizes \[0, 6\]"),
        (dict(level_start_index=np.array([0, 6, 7])), ValueError,
         r"level_start_index must have shape \(2,\)"),
        (dict(level_start_index=np.array([0.0, 6.0])), TypeError, r"level_start_index .*integer"),
        (dict(value=np.zeros((2, 7, 3))), ValueError, r"value must be 4-D \(N, S, M, D\)"),
        (dict(value=np.zeros((1, 7, 3, 4))), ValueError, r"value's N = 1"),
        (dict(value=np.zeros((2, 7, 2, 4))), ValueError, r"M = 2"),
        (dict(sampling_locations=np.zeros((2, 5, 3, 2, 4, 3))), ValueError, r"\(x, y\) last"),
        (dict(sampling_locations=np.zeros((2, 5, 3, 2, 4))), ValueError, r"must be 6-D"),
        (dict(attention_weights=np.zeros((2, 5, 3, 2, 3))), ValueError,
         r"attention_weights must have shape \(2, 5, 3, 2, 4\)"),
        (dict(sampling_locations=np.zeros((2, 5, 3, 0, 4, 2)),
              attention_weights=np.zeros((2, 5, 3, 0, 4))), ValueError, r"at least one level"),
        (dict(value=np.zeros((2, 7, 3, 4), np.float32)), TypeError,
         r"sampling_locations has dtype float64 but value has float32"),
        (dict(attention_weights=np.zeros((2, 5, 3, 2, 4), np.int64)), TypeError,
         r"attention_weights must have dtype float32 or float64"),
        (dict(value=[[0.0]]), TypeError, r"value must be a numpy.ndarray or cupy.ndarray"),
    ],
)
def test_bad_arguments_are_refused(changes, error, pattern):
    args = valid_arguments()
    args.update(changes)
    with pytest.raises(error, match=pattern):
        dc.ms_deform_attn(**args)


def test_bad_backward_arguments_are_refused():
    args = valid_arguments()
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2, 5, 12\)"):
        dc.ms_deform_attn_backward(np.zeros((2, 5, 3, 4)), **args)
    with pytest.raises(ValueError, match=r"unknown gradients \['offset'\]"):
        dc.ms_deform_attn_backward(np.zeros((2, 5, 12)), **args, needs=("offset",))
    with pytest.raises(TypeError, match=r"deterministic must be a bool"):
        dc.ms_deform_attn_backward(np.zeros((2, 5, 12)), **args, deterministic=1)
    with pytest.raises(TypeError, match=r"value has dtype float64 but grad_output has float32"):
        dc.ms_deform_attn_backward(np.zeros((2, 5, 12), np.float32), **args)

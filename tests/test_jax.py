"""defconv_np.jax: the JAX adapter against the NumPy functions it calls.

Forwards equal the NumPy results bit for bit; jax.grad equals the NumPy
backward (exactly: the cotangent reaches the callback unchanged) and central
finite differences in float64; vmap equals a Python loop of single calls;
jit, value_and_grad, float32 and float64; clear errors; a DCNv2-style network
trains; the example script runs.
"""

import pathlib
import runpy

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the JAX adapter tests need JAX (pip install 'jax[cpu]')")
jnp = pytest.importorskip("jax.numpy")

import defconv_np as dc  # noqa: E402
import defconv_np.jax as dj  # noqa: E402

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "jax_dcnv2.py"


@pytest.fixture
def x64():
    """float64 in JAX for one test, restored afterwards."""
    previous = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    if request.param == np.float64:
        request.getfixturevalue("x64")
    return np.dtype(request.param)


@pytest.fixture(params=["buffer", "pure"])
def callback(request, monkeypatch):
    """Each way of calling the kernels: jax.experimental.buffer_callback (where this
    JAX has it) and jax.pure_callback."""
    if request.param == "buffer" and dj._buffer_callback is None:
        pytest.skip("this JAX has no jax.experimental.buffer_callback")
    monkeypatch.setattr(dj, "CALLBACK", request.param)
    return request.param


def fractional(rng, shape, low, high, dtype):
    """Values in [low, high) whose fractional parts lie in [0.2, 0.4] or [0.6, 0.8]:
    bilinear sampling there is smooth (no cell edge, window edge or reflection point
    within 0.1), so central differences are valid."""
    whole = rng.integers(low, high, shape)
    frac = rng.uniform(0.2, 0.4, shape) + 0.4 * rng.integers(0, 2, shape)
    return (whole + frac).astype(dtype)


# --- problems: NumPy arrays, the static arguments and which inputs are differentiable -------

def deform_problem(rng, dtype, n=2, mask=True, bias=True):
    c, o, h, w, k, groups = 4, 6, 7, 6, 3, 2
    ho, wo = h, w  # padding 1, stride 1
    arrays = {
        "input": rng.standard_normal((n, c, h, w)).astype(dtype),
        # sample positions ho - 1 + i + dy: fractional, some beyond the image
        "offset": fractional(rng, (n, 2 * groups * k * k, ho, wo), -3, 3, dtype),
        "weight": rng.standard_normal((o, c, k, k)).astype(dtype),
        "bias": rng.standard_normal(o).astype(dtype) if bias else None,
        "mask": rng.uniform(0.1, 1.0, (n, groups * k * k, ho, wo)).astype(dtype) if mask else None,
    }
    return arrays, dict(stride=1, padding=1, dilation=1)


def deform_call(module, arrays, static):
    a = arrays
    return module.deform_conv2d(a["input"], a["offset"], a["weight"], a["bias"], mask=a["mask"],
                                **static)


def conv_problem(rng, dtype, n=2):
    arrays = {
        "input": rng.standard_normal((n, 4, 7, 8)).astype(dtype),
        "weight": rng.standard_normal((6, 2, 3, 2)).astype(dtype),
        "bias": rng.standard_normal(6).astype(dtype),
    }
    return arrays, dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)


def conv_call(module, arrays, static):
    return module.conv2d(arrays["input"], arrays["weight"], arrays["bias"], **static)


def grid_problem(rng, dtype, n=2, padding_mode="zeros", align_corners=False, mode="bilinear"):
    h, w = 5, 6
    # pixel coordinates away from cell edges, some beyond the image, as normalised grid values
    pixel_x = fractional(rng, (n, 4, 3), -3, w + 2, np.float64)
    pixel_y = fractional(rng, (n, 4, 3), -3, h + 2, np.float64)
    if align_corners:
        gx, gy = pixel_x * 2 / (w - 1) - 1, pixel_y * 2 / (h - 1) - 1
    else:
        gx, gy = (pixel_x * 2 + 1) / w - 1, (pixel_y * 2 + 1) / h - 1
    arrays = {
        "input": rng.standard_normal((n, 3, h, w)).astype(dtype),
        "grid": np.stack([gx, gy], axis=-1).astype(dtype),
    }
    return arrays, dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)


def grid_call(module, arrays, static):
    return module.grid_sample(arrays["input"], arrays["grid"], **static)


def affine_problem(rng, dtype, n=2):
    return ({"theta": rng.standard_normal((n, 2, 3)).astype(dtype)},
            dict(size=(n, 3, 5, 4), align_corners=False))


def affine_call(module, arrays, static):
    return module.affine_grid(arrays["theta"], **static)


ATTN_SHAPES = ((4, 5), (2, 3))


def attn_problem(rng, dtype, n=2, lq=3, heads=2, depth=3, points=2):
    """Sample positions away from cell edges in pixel coordinates (x = loc * W - 0.5),
    some beyond the level's window, as normalised locations."""
    sizes = [h * w for h, w in ATTN_SHAPES]
    locations = np.empty((n, lq, heads, len(ATTN_SHAPES), points, 2))
    for level, (h, w) in enumerate(ATTN_SHAPES):
        for axis, size in ((0, w), (1, h)):
            pixel = fractional(rng, (n, lq, heads, points), -2, size + 1, np.float64)
            locations[:, :, :, level, :, axis] = (pixel + 0.5) / size
    arrays = {
        "value": rng.standard_normal((n, sum(sizes), heads, depth)).astype(dtype),
        "sampling_locations": locations.astype(dtype),
        "attention_weights": rng.uniform(0.1, 1.0, (n, lq, heads, len(ATTN_SHAPES),
                                                    points)).astype(dtype),
    }
    starts = tuple(sum(sizes[:i]) for i in range(len(sizes)))
    return arrays, dict(spatial_shapes=ATTN_SHAPES, level_start_index=starts)


def attn_call(module, arrays, static):
    a = arrays
    return module.ms_deform_attn(a["value"], static["spatial_shapes"],
                                 static["level_start_index"], a["sampling_locations"],
                                 a["attention_weights"])


def active_problem(rng, dtype, n=2):
    arrays = {
        "input": rng.standard_normal((n, 4, 7, 8)).astype(dtype),
        # kernel positions base + offset: fractional, so away from cell edges
        "offset": fractional(rng, (2 * 2 * 9,), -2, 2, dtype),
        "weight": rng.standard_normal((6, 2, 3, 3)).astype(dtype),
        "bias": rng.standard_normal(6).astype(dtype),
    }
    return arrays, dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))


def active_call(module, arrays, static):
    a = arrays
    return module.active_conv2d(a["input"], a["offset"], a["weight"], a["bias"], **static)


OPS = {
    "deform_conv2d": (deform_problem, deform_call),
    "conv2d": (conv_problem, conv_call),
    "grid_sample": (grid_problem, grid_call),
    "affine_grid": (affine_problem, affine_call),
    "ms_deform_attn": (attn_problem, attn_call),
    "active_conv2d": (active_problem, active_call),
}


def numpy_vjp(op, arrays, static, cotangent):
    """The NumPy backward of ``op`` at ``arrays`` for ``cotangent``, as a dict by input name."""
    a = arrays
    if op == "deform_conv2d":
        g = dc.deform_conv2d_backward(cotangent, a["input"], a["offset"], a["weight"],
                                      mask=a["mask"], **static)
    elif op == "conv2d":
        g = dc.conv2d_backward(cotangent, a["input"], a["weight"], **static)
    elif op == "grid_sample":
        g = dc.grid_sample_backward(cotangent, a["input"], a["grid"], **static)
    elif op == "ms_deform_attn":
        g = dc.ms_deform_attn_backward(cotangent, a["value"], static["spatial_shapes"],
                                       static["level_start_index"], a["sampling_locations"],
                                       a["attention_weights"])
    elif op == "active_conv2d":
        g = dc.active_conv2d_backward(cotangent, a["input"], a["offset"], a["weight"], **static)
    else:
        return {"theta": dc.affine_grid_backward(cotangent, **static)}
    return {name: value for name, value in g._asdict().items()
            if name in arrays and arrays[name] is not None}


def differentiable(arrays):
    return [name for name, value in arrays.items() if value is not None]


def loss_of(op, static, names, arrays, cotangent):
    """A function of the named arrays: <op(arrays), cotangent>."""
    call = OPS[op][1]

    def loss(*values):
        full = dict(arrays, **dict(zip(names, values)))
        return jnp.sum(call(dj, full, static) * cotangent)

    return loss


# --- forward ----------------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_forward_equals_numpy_bit_for_bit(op, jit, dtype, callback):
    problem, call = OPS[op]
    arrays, static = problem(np.random.default_rng(1), dtype)
    expected = call(dc, arrays, static)
    names = differentiable(arrays)

    def run(*values):
        return call(dj, dict(arrays, **dict(zip(names, values))), static)

    got = (jax.jit(run) if jit else run)(*[jnp.asarray(arrays[n]) for n in names])
    assert isinstance(got, jax.Array)
    assert got.dtype == dtype and got.shape == expected.shape
    np.testing.assert_array_equal(np.asarray(got), expected)
    program = str(jax.make_jaxpr(run)(*[jnp.asarray(arrays[n]) for n in names]))
    other = {"buffer": "pure", "pure": "buffer"}[callback]
    assert f"{callback}_callback" in program and f"{other}_callback" not in program


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_grid_sample_modes_equal_numpy(padding_mode, align_corners, mode):
    arrays, static = grid_problem(np.random.default_rng(2), np.float32, padding_mode=padding_mode,
                                  align_corners=align_corners, mode=mode)
    got = jax.jit(lambda i, g: grid_call(dj, {"input": i, "grid": g}, static))(
        arrays["input"], arrays["grid"])
    np.testing.assert_array_equal(np.asarray(got), grid_call(dc, arrays, static))
    grads = jax.grad(lambda i, g: jnp.sum(grid_call(dj, {"input": i, "grid": g}, static) ** 2),
                     argnums=(0, 1))(arrays["input"], arrays["grid"])
    expected = numpy_vjp("grid_sample", arrays, static, 2 * grid_call(dc, arrays, static))
    np.testing.assert_array_equal(np.asarray(grads[0]), expected["input"])
    np.testing.assert_array_equal(np.asarray(grads[1]), expected["grid"])


def test_deform_conv2d_without_mask_and_bias_equals_numpy():
    arrays, static = deform_problem(np.random.default_rng(3), np.float32, mask=False, bias=False)
    got = dj.deform_conv2d(arrays["input"], arrays["offset"], arrays["weight"], **static)
    np.testing.assert_array_equal(np.asarray(got), deform_call(dc, arrays, static))
    grads = jax.grad(lambda *v: jnp.sum(dj.deform_conv2d(*v, **static) ** 2), argnums=(0, 1, 2))(
        arrays["input"], arrays["offset"], arrays["weight"])
    expected = numpy_vjp("deform_conv2d", arrays, static, 2 * deform_call(dc, arrays, static))
    for name, grad in zip(("input", "offset", "weight"), grads):
        np.testing.assert_array_equal(np.asarray(grad), expected[name], err_msg=name)


# --- gradients --------------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_grad_equals_numpy_backward(op, jit, dtype, callback):
    problem, call = OPS[op]
    rng = np.random.default_rng(4)
    arrays, static = problem(rng, dtype)
    names = differentiable(arrays)
    out = call(dc, arrays, static)
    cotangent = rng.standard_normal(out.shape).astype(dtype)
    grad = jax.grad(loss_of(op, static, names, arrays, cotangent), argnums=tuple(range(len(names))))
    got = (jax.jit(grad) if jit else grad)(*[arrays[n] for n in names])
    expected = numpy_vjp(op, arrays, static, cotangent)
    assert sorted(expected) == sorted(names)
    for name, value in zip(names, got):
        assert value.dtype == dtype, name
        np.testing.assert_array_equal(np.asarray(value), expected[name], err_msg=name)


@pytest.mark.parametrize("op", OPS)
def test_value_and_grad_under_jit(op):
    problem, call = OPS[op]
    arrays, static = problem(np.random.default_rng(5), np.float32)
    names = differentiable(arrays)

    def loss(*values):
        return 0.5 * jnp.sum(call(dj, dict(arrays, **dict(zip(names, values))), static) ** 2)

    value, grads = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(names)))))(
        *[arrays[n] for n in names])
    out = call(dc, arrays, static)
    np.testing.assert_allclose(float(value), 0.5 * np.sum(out.astype(np.float64) ** 2), rtol=1e-5)
    expected = numpy_vjp(op, arrays, static, out)
    for name, grad in zip(names, grads):
        np.testing.assert_array_equal(np.asarray(grad), expected[name], err_msg=name)


@pytest.mark.parametrize("op", OPS)
def test_grad_matches_central_differences(op, x64, callback):
    """Directional derivative <grad, d> against (f(p + h d) - f(p - h d)) / 2h in float64, for
    every differentiable input at once and for each alone."""
    problem, call = OPS[op]
    rng = np.random.default_rng(6)
    arrays, static = problem(rng, np.float64)
    names = differentiable(arrays)
    cotangent = rng.standard_normal(call(dc, arrays, static).shape)
    loss = loss_of(op, static, names, arrays, cotangent)
    grads = jax.jit(jax.grad(loss, argnums=tuple(range(len(names)))))(*[arrays[n] for n in names])
    step = 1e-6  # samples move 1e-6 at most: far from every kink (>= 0.1 away)
    for chosen in [names] + [[n] for n in names]:
        direction = {n: rng.uniform(-1, 1, arrays[n].shape) if n in chosen
                     else np.zeros_like(arrays[n]) for n in names}
        plus = loss(*[arrays[n] + step * direction[n] for n in names])
        minus = loss(*[arrays[n] - step * direction[n] for n in names])
        numeric = (float(plus) - float(minus)) / (2 * step)
        analytic = sum(float(np.vdot(np.asarray(g), direction[n])) for n, g in zip(names, grads))
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-6), chosen


def test_backward_computes_only_the_gradients_needed(monkeypatch):
    asked = []
    original = dj._np_deform_conv2d_backward

    def spy(*args, needs, **kwargs):
        asked.append(tuple(needs))
        return original(*args, needs=needs, **kwargs)

    monkeypatch.setattr(dj, "_np_deform_conv2d_backward", spy)
    arrays, static = deform_problem(np.random.default_rng(7), np.float32)
    a = arrays

    def loss(weight, offset):
        return jnp.sum(dj.deform_conv2d(a["input"], offset, weight, a["bias"], mask=a["mask"],
                                        **static))

    jax.grad(loss)(a["weight"], a["offset"])
    jax.jit(jax.grad(loss, argnums=(0, 1)))(a["weight"], a["offset"])
    assert asked == [("weight",), ("offset", "weight")]


def test_no_mask_gives_no_mask_gradient():
    arrays, static = deform_problem(np.random.default_rng(8), np.float32, mask=False)
    names = differentiable(arrays)
    assert "mask" not in names
    grads = jax.grad(loss_of("deform_conv2d", static, ["input", "offset", "weight", "bias", "mask"],
                             arrays, 1.0), argnums=(0, 1, 2, 3, 4))(
        arrays["input"], arrays["offset"], arrays["weight"], arrays["bias"], None)
    assert grads[4] is None
    expected = numpy_vjp("deform_conv2d", arrays, static, np.ones((2, 6, 7, 6), np.float32))
    for name, grad in zip(names, grads):
        np.testing.assert_array_equal(np.asarray(grad), expected[name], err_msg=name)


# --- vmap -------------------------------------------------------------------------------------

def stacked_problems(op, dtype, count=3, n=2):
    problem = OPS[op][0]
    rng = np.random.default_rng(9)
    problems = [problem(rng, dtype, n=n) for _ in range(count)]
    static = problems[0][1]
    names = differentiable(problems[0][0])
    stacked = {name: np.stack([p[0][name] for p in problems]) for name in names}
    return problems, static, names, stacked


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_vmap_equals_loop_of_single_calls(op, jit, dtype, callback):
    """Every input mapped: forward and per-example gradients against a loop."""
    problems, static, names, stacked = stacked_problems(op, dtype)
    call = OPS[op][1]
    template = problems[0][0]

    def single(*values):
        return call(dj, dict(template, **dict(zip(names, values))), static)

    def per_example_grads(*values):
        return jax.grad(lambda *v: jnp.sum(single(*v) ** 2), argnums=tuple(range(len(names))))(
            *values)

    mapped, mapped_grads = jax.vmap(single), jax.vmap(per_example_grads)
    if jit:
        mapped, mapped_grads = jax.jit(mapped), jax.jit(mapped_grads)
    out = mapped(*[stacked[n] for n in names])
    grads = mapped_grads(*[stacked[n] for n in names])
    for index, (arrays, _) in enumerate(problems):
        expected = call(dc, arrays, static)
        np.testing.assert_array_equal(np.asarray(out[index]), expected)
        expected_grads = numpy_vjp(op, arrays, static, 2 * expected)
        for name, grad in zip(names, grads):
            np.testing.assert_array_equal(np.asarray(grad[index]), expected_grads[name],
                                          err_msg=f"{name}[{index}]")


@pytest.mark.parametrize("op", ["deform_conv2d", "conv2d"])
def test_vmap_over_data_with_shared_weights(op):
    """Data mapped, weight and bias shared (folded into one call): forward and the
    gradient of the summed loss against a loop."""
    problems, static, names, stacked = stacked_problems(op, np.float32)
    call = OPS[op][1]
    shared = {n: problems[0][0][n] for n in ("weight", "bias")}
    data = [n for n in names if n not in shared]

    def single(weight, bias, *values):
        return call(dj, dict(zip(data, values), weight=weight, bias=bias,
                             mask=None if "mask" not in data else values[data.index("mask")]),
                    static)

    def loss(weight, bias, *values):
        out = jax.vmap(single, in_axes=(None, None) + (0,) * len(data))(weight, bias, *values)
        return jnp.sum(out ** 2), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
        shared["weight"], shared["bias"], *[stacked[n] for n in data])
    grad_weight = np.zeros_like(shared["weight"])
    for index in range(len(problems)):
        arrays = dict(problems[index][0], **shared)
        expected = call(dc, arrays, static)
        np.testing.assert_array_equal(np.asarray(out[index]), expected)
        expected_grads = numpy_vjp(op, arrays, static, 2 * expected)
        np.testing.assert_array_equal(np.asarray(grads[2][index]), expected_grads["input"])
        grad_weight += expected_grads["weight"]
    # JAX sums the per-example weight gradients itself: equal up to summation order
    np.testing.assert_allclose(np.asarray(grads[0]), grad_weight, rtol=1e-5, atol=1e-5)


def test_vmap_over_weights_with_shared_input(callback):
    """Only the weight mapped: one call per weight, against a loop."""
    arrays, static = deform_problem(np.random.default_rng(10), np.float32)
    weights = np.random.default_rng(11).standard_normal((3,) + arrays["weight"].shape).astype(
        np.float32)
    out = jax.vmap(lambda w: deform_call(dj, dict(arrays, weight=w), static))(weights)
    for index, weight in enumerate(weights):
        np.testing.assert_array_equal(np.asarray(out[index]),
                                      deform_call(dc, dict(arrays, weight=weight), static))


def test_nested_vmap_equals_loop():
    arrays, static = grid_problem(np.random.default_rng(12), np.float32)
    rng = np.random.default_rng(13)
    inputs = rng.standard_normal((2, 3) + arrays["input"].shape).astype(np.float32)
    call = jax.vmap(jax.vmap(lambda i, g: grid_call(dj, {"input": i, "grid": g}, static),
                             in_axes=(0, None)), in_axes=(0, None))
    out = call(inputs, arrays["grid"])
    for a in range(2):
        for b in range(3):
            expected = grid_call(dc, {"input": inputs[a, b], "grid": arrays["grid"]}, static)
            np.testing.assert_array_equal(np.asarray(out[a, b]), expected)


def test_ms_deform_attn_takes_static_levels_as_tuples_numpy_or_concrete_arrays():
    arrays, static = attn_problem(np.random.default_rng(20), np.float32)
    expected = attn_call(dc, arrays, static)
    for shapes, starts in ((np.array(ATTN_SHAPES), np.array(static["level_start_index"])),
                           ([list(p) for p in ATTN_SHAPES], list(static["level_start_index"])),
                           (jnp.asarray(ATTN_SHAPES), jnp.asarray(static["level_start_index"]))):
        got = attn_call(dj, arrays, dict(spatial_shapes=shapes, level_start_index=starts))
        np.testing.assert_array_equal(np.asarray(got), expected)
    with pytest.raises(TypeError, match=r"spatial_shapes must be static"):
        jax.jit(lambda s: attn_call(dj, arrays, dict(static, spatial_shapes=s)))(
            jnp.asarray(ATTN_SHAPES))
    with pytest.raises(ValueError, match=r"level_start_index must be the cumulative level sizes"):
        attn_call(dj, arrays, dict(static, level_start_index=(0, 7)))
    with pytest.raises(ValueError, match=r"spatial_shapes .* give S = "):
        attn_call(dj, arrays, dict(spatial_shapes=((4, 5), (2, 2)), level_start_index=(0, 20)))


def test_new_ops_compute_only_the_gradients_needed(monkeypatch):
    asked = []
    for name in ("_np_ms_deform_attn_backward", "_np_active_conv2d_backward"):
        original = getattr(dj, name)

        def spy(*args, needs, _original=original, **kwargs):
            asked.append(tuple(needs))
            return _original(*args, needs=needs, **kwargs)

        monkeypatch.setattr(dj, name, spy)
    arrays, static = attn_problem(np.random.default_rng(21), np.float32)
    jax.grad(lambda loc: jnp.sum(attn_call(dj, dict(arrays, sampling_locations=loc), static)))(
        arrays["sampling_locations"])
    arrays, static = active_problem(np.random.default_rng(22), np.float32)
    jax.jit(jax.grad(lambda o, b: jnp.sum(active_call(dj, dict(arrays, offset=o, bias=b),
                                                      static)), argnums=(0, 1)))(
        arrays["offset"], arrays["bias"])
    assert asked == [("sampling_locations",), ("offset", "bias")]


def test_active_conv2d_vmap_over_data_with_shared_positions_folds_the_batch(monkeypatch):
    batches = []
    original = dj._np_active_conv2d

    def spy(input, *args, **kwargs):
        batches.append(input.shape[0])
        return original(input, *args, **kwargs)

    monkeypatch.setattr(dj, "_np_active_conv2d", spy)
    problems, static, names, stacked = stacked_problems("active_conv2d", np.float32)
    shared = problems[0][0]
    out = jax.vmap(lambda x: dj.active_conv2d(x, shared["offset"], shared["weight"],
                                              shared["bias"], **static))(stacked["input"])
    assert batches == [6]
    for index, (arrays, _) in enumerate(problems):
        np.testing.assert_array_equal(
            np.asarray(out[index]), active_call(dc, dict(shared, input=arrays["input"]), static))


# --- errors -----------------------------------------------------------------------------------

def test_integer_input_is_refused_naming_it():
    arrays, static = deform_problem(np.random.default_rng(14), np.float32)
    with pytest.raises(TypeError, match=r"input must have dtype float32 or float64, got int32"):
        deform_call(dj, dict(arrays, input=jnp.asarray(arrays["input"]).astype(jnp.int32)), static)


def test_dtype_mix_is_refused_naming_both(x64):
    arrays, static = conv_problem(np.random.default_rng(15), np.float32)
    with pytest.raises(TypeError, match=r"weight has dtype float64 but input has float32"):
        conv_call(dj, dict(arrays, weight=arrays["weight"].astype(np.float64)), static)


def test_non_array_is_refused_with_a_conversion_hint():
    arrays, static = grid_problem(np.random.default_rng(16), np.float32)
    expected = (r"grid must be a jax.Array or numpy.ndarray, got builtins.list: "
                r"convert it with jax.numpy.asarray\(grid\)")
    with pytest.raises(TypeError, match=expected):
        dj.grid_sample(arrays["input"], arrays["grid"].tolist())


def test_numpy_arrays_are_checked_before_conversion():
    arrays, static = conv_problem(np.random.default_rng(18), np.float32)
    with pytest.raises(TypeError, match=r"weight must have dtype float32 or float64, got int64"):
        conv_call(dj, dict(arrays, weight=arrays["weight"].astype(np.int64)), static)
    with pytest.raises(TypeError, match=r"input is a float64 NumPy array but JAX's x64 mode is "
                                        r"off"):
        conv_call(dj, dict(arrays, input=arrays["input"].astype(np.float64)), static)
    got = conv_call(dj, arrays, static)  # float32 NumPy arrays are taken as they are
    np.testing.assert_array_equal(np.asarray(got), conv_call(dc, arrays, static))


def test_float64_numpy_arrays_are_taken_in_x64_mode(x64):
    arrays, static = conv_problem(np.random.default_rng(19), np.float64)
    got = conv_call(dj, arrays, static)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(np.asarray(got), conv_call(dc, arrays, static))


def test_bad_shapes_and_arguments_name_the_argument():
    arrays, static = deform_problem(np.random.default_rng(17), np.float32)
    with pytest.raises(ValueError, match=r"offset"):
        deform_call(dj, dict(arrays, offset=arrays["offset"][:, :5]), static)
    with pytest.raises(ValueError, match=r"mask"):
        deform_call(dj, dict(arrays, mask=arrays["mask"][:, :3]), static)
    with pytest.raises(TypeError, match=r"stride must be an int or a pair of ints"):
        deform_call(dj, arrays, dict(static, stride=1.5))
    with pytest.raises(ValueError, match=r"padding_mode must be one of"):
        dj.grid_sample(jnp.zeros((1, 1, 2, 2)), jnp.zeros((1, 1, 1, 2)), padding_mode="wrap")
    with pytest.raises(ValueError, match=r"theta"):
        dj.affine_grid(jnp.zeros((2, 2, 3)), (3, 1, 4, 4))


def test_errors_are_raised_at_trace_time_under_jit():
    with pytest.raises(TypeError, match=r"weight must have dtype float32 or float64, got int32"):
        jax.jit(lambda x, w: dj.conv2d(x, w))(jnp.zeros((1, 1, 3, 3)),
                                              jnp.zeros((1, 1, 1, 1), jnp.int32))


# --- a network and the example ----------------------------------------------------------------

def test_dcnv2_network_trains_and_gradients_reach_the_offsets():
    example = runpy.run_path(str(EXAMPLE))
    losses, first_grads = example["train"](steps=6)
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0] and all(b < a for a, b in zip(losses, losses[1:])), losses
    # the offset/mask predictor starts at zero; its gradient comes through deform_conv2d's
    # offset and mask gradients, so it must not be zero
    assert float(jnp.abs(first_grads["offset_w"]).max()) > 0
    assert float(jnp.abs(first_grads["offset_b"]).max()) > 0


def test_example_script_runs(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", [str(EXAMPLE), "--steps", "4"])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    printed = capsys.readouterr().out
    assert printed.count("loss") == 4


def test_vmap_folds_the_mapped_axis_into_the_batch(monkeypatch):
    """With weights shared, a vmapped forward is one NumPy call on a batch of count * N."""
    batches = []
    original = dj._np_deform_conv2d

    def spy(input, *args, **kwargs):
        batches.append(input.shape[0])
        return original(input, *args, **kwargs)

    monkeypatch.setattr(dj, "_np_deform_conv2d", spy)
    problems, static, names, stacked = stacked_problems("deform_conv2d", np.float32, count=3, n=2)
    weight, bias = problems[0][0]["weight"], problems[0][0]["bias"]
    jax.vmap(lambda x, o, m: dj.deform_conv2d(x, o, weight, bias, mask=m, **static))(
        stacked["input"], stacked["offset"], stacked["mask"])
    assert batches == [6]

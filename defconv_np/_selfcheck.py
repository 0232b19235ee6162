"""The main job's pieces: backend report, finite-difference gradient checks and
timings, each returning plain rows that ``__main__`` prints as tables."""

import time
import types

import numba
import numpy as np

from . import active, convolution, deformable, spatial

#: The ops the main job checks and times (``--ops``); "grid_sample" includes
#: affine_grid, whose gradient is checked through it.
OPS = ("conv2d", "deform_conv2d", "active_conv2d", "grid_sample")

#: The timing shape (N, C, H, W); C output channels, 3x3 kernel, padding 1.
TIMING_SHAPE = (8, 64, 64, 64)


def cuda_problem():
    """None if CuPy and a GPU are usable, else why not (one line)."""
    try:
        import cupy
    except ImportError:
        return ("CuPy is not installed (pip install defconv_np[cuda13] or [cuda12], "
                "for your CUDA driver)")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy finds no GPU"
        cupy.zeros(1).sum()
    except Exception as exc:  # no driver, no device, a runtime mismatch
        return f"CuPy {cupy.__version__} is installed but no GPU is usable ({exc})"
    return None


def _to_numpy(value):
    if hasattr(value, "_fields"):
        return type(value)(*(_to_numpy(v) for v in value))
    if hasattr(value, "get") and type(value).__module__.startswith("cupy"):
        return value.get()
    return value


def _on_device(module, xp):
    """``module``'s functions taking and returning NumPy arrays, run on CuPy arrays."""
    def wrap(fn):
        def wrapped(*args, **kwargs):
            args = [xp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
            kwargs = {k: xp.asarray(v) if isinstance(v, np.ndarray) else v
                      for k, v in kwargs.items()}
            return _to_numpy(fn(*args, **kwargs))
        return wrapped
    return types.SimpleNamespace(**{name: wrap(getattr(module, name)) for name in dir(module)
                                    if not name.startswith("_")
                                    and callable(getattr(module, name))})


def _modules(device):
    if device == "cpu":
        return convolution, deformable, active, spatial
    import cupy

    return tuple(_on_device(m, cupy) for m in (convolution, deformable, active, spatial))


def backends():
    """Rows (backend, detail) for NumPy/Numba and, when present, CuPy and its GPU."""
    rows = [("numpy", f"NumPy {np.__version__}, Numba {numba.__version__}, "
                      f"{numba.get_num_threads()} threads")]
    try:
        import cupy
    except ImportError:
        rows.append(("cupy", "not installed (GPU paths unavailable)"))
        return rows
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        rows.append(("cupy", f"CuPy {cupy.__version__}, {count} GPU(s), device 0: {name}"))
    except Exception as exc:  # a driver or runtime problem: report it, keep the CPU job going
        rows.append(("cupy", f"CuPy {cupy.__version__} installed, no usable GPU ({exc})"))
    return rows


def _directional_check(loss, arrays, grads, rng, eps=1e-6):
    """Relative error of <grad, d> against a central difference of ``loss`` along
    a random direction d, for each named array."""
    rows = []
    for name, array in arrays.items():
        if grads.get(name) is None:
            continue
        direction = rng.standard_normal(array.shape)
        plus = {**arrays, name: array + eps * direction}
        minus = {**arrays, name: array - eps * direction}
        numeric = (loss(**plus) - loss(**minus)) / (2 * eps)
        analytic = float(np.sum(grads[name] * direction))
        rows.append((name, analytic, numeric, abs(analytic - numeric) / max(1e-12, abs(numeric))))
    return rows


def gradient_checks(seed=0, ops=OPS, device="cpu"):
    """Rows (op, argument, analytic, numeric, relative error) on small float64 cases,
    for the ops named in ``ops``, on NumPy (``device="cpu"``) or CuPy arrays.

    Offsets are drawn as integers plus fractions in [0.2, 0.8], so no sample
    sits on a bilinear kink where finite differences would disagree.
    """
    rows = _gradient_checks(seed, device)
    return [r for r in rows if r[0].split(" ")[0] in ops
            or (r[0].startswith("affine_grid") and "grid_sample" in ops)]


def _gradient_checks(seed, device):
    convolution, deformable, active, spatial = _modules(device)
    rng = np.random.default_rng(seed)
    rows = []
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((6, 2, 3, 3))
    b = rng.standard_normal(6)
    geometry = dict(stride=(2, 1), padding=1, dilation=(1, 2))
    out = convolution.conv2d(x, w, b, groups=2, **geometry)
    go = rng.standard_normal(out.shape)
    g = convolution.conv2d_backward(go, x, w, groups=2, **geometry)
    for row in _directional_check(
            lambda input, weight, bias: np.sum(go * convolution.conv2d(
                input, weight, bias, groups=2, **geometry)),
            {"input": x, "weight": w, "bias": b}, g._asdict(), rng):
        rows.append(("conv2d",) + row)

    offset = (rng.integers(-2, 2, (2, 2 * 2 * 9) + out.shape[2:])
              + rng.uniform(0.2, 0.8, (2, 2 * 2 * 9) + out.shape[2:]))
    mask = rng.uniform(0, 1, (2, 2 * 9) + out.shape[2:])
    wd = rng.standard_normal((6, 2, 3, 3))
    out = deformable.deform_conv2d(x, offset, wd, b, mask=mask, **geometry)
    g = deformable.deform_conv2d_backward(go, x, offset, wd, mask=mask, **geometry)

    def loss(input, offset, mask, weight, bias):
        return np.sum(go * deformable.deform_conv2d(input, offset, weight, bias, mask=mask,
                                                    **geometry))

    for row in _directional_check(loss, {"input": x, "offset": offset, "mask": mask,
                                         "weight": wd, "bias": b}, g._asdict(), rng):
        rows.append(("deform_conv2d",) + row)

    shared = rng.integers(-2, 2, 2 * 2 * 9) + rng.uniform(0.2, 0.8, 2 * 2 * 9)
    out = active.active_conv2d(x, shared, wd, b, **geometry)
    g = active.active_conv2d_backward(go, x, shared, wd, **geometry)
    for row in _directional_check(
            lambda input, offset, weight, bias: np.sum(go * active.active_conv2d(
                input, offset, weight, bias, **geometry)),
            {"input": x, "offset": shared, "weight": wd, "bias": b}, g._asdict(), rng):
        rows.append(("active_conv2d",) + row)

    # grid_sample through affine_grid: grid positions drawn away from pixel
    # centres and edges (the kinks), then theta's gradient by the chain rule.
    size = (2, 3, 6, 7)
    image = rng.standard_normal(size)
    theta = np.array([[[0.9, -0.2, 0.05], [0.15, 0.8, -0.1]]] * 2) + 0.01 * rng.standard_normal((2, 2, 3))
    for padding_mode in ("zeros", "border", "reflection"):
        grid = spatial.affine_grid(theta, size)
        go = rng.standard_normal((2, 3, 6, 7))
        g = spatial.grid_sample_backward(go, image, grid, padding_mode=padding_mode)

        def sample_loss(input, grid, padding_mode=padding_mode, go=go):
            return np.sum(go * spatial.grid_sample(input, grid, padding_mode=padding_mode))

        for row in _directional_check(sample_loss, {"input": image, "grid": grid}, g._asdict(),
                                      rng):
            rows.append((f"grid_sample ({padding_mode})",) + row)
        grads = {"theta": spatial.affine_grid_backward(g.grid, size)}
        for row in _directional_check(
                lambda theta, go=go: sample_loss(image, spatial.affine_grid(theta, size)),
                {"theta": theta}, grads, rng):
            rows.append((f"affine_grid ({padding_mode})",) + row)
    return rows


def timings(repeats=5, seed=0, shape=TIMING_SHAPE, dtype="float32", ops=OPS, device="cpu"):
    """Rows (op, shape, milliseconds): the median of ``repeats`` runs after one
    untimed run, at input ``shape`` (N, C, H, W) with C output channels and a
    3x3 kernel, in ``dtype``, on NumPy (``device="cpu"``) or CuPy arrays."""
    rng = np.random.default_rng(seed)
    if device == "cpu":
        xp, sync = np, lambda: None
    else:
        import cupy as xp

        def sync():
            xp.cuda.get_current_stream().synchronize()
    n, c, h, w = shape
    o, k = c, 3

    def arr(a):
        return xp.asarray(a.astype(dtype))

    x = arr(rng.standard_normal((n, c, h, w)))
    wt = arr(rng.standard_normal((o, c, k, k)) * 0.05)
    off = arr(rng.uniform(-2, 2, (n, 2 * k * k, h, w)))
    mask = arr(rng.uniform(0, 1, (n, k * k, h, w)))
    go = arr(rng.standard_normal((n, o, h, w)))
    shape = f"({n}, {c}, {h}, {w}) -> {o}, {k}x{k}, pad 1"
    theta = arr(np.tile(np.array([[[0.9, -0.3, 0.1], [0.3, 0.9, 0.0]]]), (n, 1, 1)))
    grid = spatial.affine_grid(theta, (n, c, h, w))
    gs_go = arr(rng.standard_normal((n, c, h, w)))
    cases = [
        ("conv2d forward", lambda: convolution.conv2d(x, wt, padding=1)),
        ("conv2d backward", lambda: convolution.conv2d_backward(go, x, wt, padding=1)),
        ("deform_conv2d forward", lambda: deformable.deform_conv2d(x, off, wt, padding=1,
                                                                   mask=mask)),
        ("deform_conv2d backward", lambda: deformable.deform_conv2d_backward(
            go, x, off, wt, padding=1, mask=mask)),
        ("active_conv2d forward", lambda: active.active_conv2d(x, off[0, :, 0, 0], wt,
                                                               padding=1)),
        ("active_conv2d backward", lambda: active.active_conv2d_backward(
            go, x, off[0, :, 0, 0], wt, padding=1)),
        ("grid_sample forward", lambda: spatial.grid_sample(x, grid)),
        ("grid_sample backward", lambda: spatial.grid_sample_backward(gs_go, x, grid)),
    ]
    rows = []
    for name, fn in cases:
        if name.split(" ")[0] not in ops:
            continue
        fn()
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        label = f"({n}, {c}, {h}, {w}), affine grid" if name.startswith("grid") else shape
        rows.append((name, label, 1e3 * float(np.median(times))))
    return rows

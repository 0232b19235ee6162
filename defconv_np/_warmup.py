"""``warmup``: compile every kernel ahead of first use (for container builds)."""

from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from . import _compile_log
from ._compile_log import CompiledKernel

#: The ops ``warmup`` knows, in the order it runs them.
OPS = ("conv2d", "deform_conv2d", "active_conv2d", "grid_sample", "affine_grid",
       "ms_deform_attn")


def _calls(dtype, xp) -> Dict[str, Callable[[], None]]:
    """Per op: a function running its forward and every backward variant on
    tiny arrays of ``dtype`` (mask or not, deterministic or not, every
    sampling and padding mode), so every kernel specialisation compiles."""
    import defconv_np as dc

    rng = np.random.default_rng(0)

    def arr(a):
        return xp.asarray(a.astype(dtype))

    x = arr(rng.standard_normal((2, 4, 5, 5)))
    w = arr(rng.standard_normal((4, 2, 3, 3)))
    b = arr(rng.standard_normal(4))
    geometry = dict(stride=1, padding=1, dilation=1)

    def conv():
        for bias in (None, b):
            out = dc.conv2d(x, w, bias, groups=2, **geometry)
            dc.conv2d_backward(out, x, w, groups=2, **geometry)

    off = arr(rng.uniform(-1, 1, (2, 2 * 9 * 2, 5, 5)))
    mask = arr(rng.uniform(0, 1, (2, 9 * 2, 5, 5)))

    def deform():
        # two images and one: on several CPU lanes the first run in fused
        # tiles (``_cpu_deform``), a single image on the column path
        for n in (2, 1):
            for m in (None, mask):
                m = None if m is None else m[:n]
                out = dc.deform_conv2d(x[:n], off[:n], w, b, mask=m, **geometry)
                for det in (False, True):
                    dc.deform_conv2d_backward(out, x[:n], off[:n], w, mask=m, deterministic=det,
                                              **geometry)

    shared = arr(rng.uniform(-1, 1, 2 * 9 * 2))

    def active():
        out = dc.active_conv2d(x, shared, w, b, **geometry)
        dc.active_conv2d_backward(out, x, shared, w, **geometry)

    grid = arr(rng.uniform(-1.2, 1.2, (2, 3, 4, 2)))

    volume = arr(rng.standard_normal((2, 2, 3, 4, 5)))
    volume_grid = arr(rng.uniform(-1.2, 1.2, (2, 2, 3, 2, 3)))
    cases = [(x, grid, mode) for mode in ("bilinear", "nearest", "bicubic")]
    cases += [(volume, volume_grid, mode) for mode in ("bilinear", "nearest")]

    def sample():
        for planes, points, mode in cases:
            for padding_mode in ("zeros", "border", "reflection"):
                for align in (False, True):
                    out = dc.grid_sample(planes, points, mode, padding_mode, align)
                    for det in (False, True):
                        dc.grid_sample_backward(out, planes, points, mode, padding_mode, align,
                                                deterministic=det)

    theta = arr(np.array([[[0.9, -0.2, 0.1], [0.2, 0.8, 0.0]]] * 2))

    def affine():
        for align in (False, True):
            g = dc.affine_grid(theta, (2, 4, 3, 5), align)
            dc.affine_grid_backward(g, (2, 4, 3, 5), align)

    theta_3d = arr(np.array([[[0.9, -0.2, 0.0, 0.1], [0.2, 0.8, 0.0, 0.0],
                              [0.0, 0.0, 1.0, 0.0]]] * 2))

    def affine_3d():
        for align in (False, True):
            g = dc.affine_grid(theta_3d, (2, 2, 3, 4, 5), align)
            dc.affine_grid_backward(g, (2, 2, 3, 4, 5), align)

    shapes, starts = np.array([[3, 4], [1, 2]]), np.array([0, 12])
    value = arr(rng.standard_normal((2, 14, 2, 3)))
    loc = arr(rng.uniform(-0.1, 1.1, (2, 5, 2, 2, 3, 2)))
    weights = arr(rng.uniform(0, 1, (2, 5, 2, 2, 3)))

    def attention():
        out = dc.ms_deform_attn(value, shapes, starts, loc, weights)
        for det in (False, True):
            dc.ms_deform_attn_backward(out, value, shapes, starts, loc, weights,
                                       deterministic=det)

    return {"conv2d": conv, "deform_conv2d": deform, "active_conv2d": active,
            "grid_sample": sample, "affine_grid": lambda: (affine(), affine_3d()),
            "ms_deform_attn": attention}


def warmup(ops: Optional[Iterable[str]] = None,
           dtypes: Iterable[str] = ("float32", "float64"),
           device: str = "cpu", verbose: bool = False) -> List[CompiledKernel]:
    """Compile the kernels of ``ops`` for ``dtypes`` now, instead of on first use.

    Runs each op's forward and backward (every gradient, every mode and flag
    that selects a different kernel) on tiny arrays, so that every kernel is
    compiled and written to Numba's disk cache; later processes load them from
    there in well under a second. Meant for container builds and CI images:
    ``python -c "import defconv_np; defconv_np.warmup()"``. The cache lives in
    ``__pycache__`` next to the kernel sources (``defconv_np/kernels/cpu``), or
    under ``NUMBA_CACHE_DIR`` when that is set; it must be writable, and is
    keyed on the CPU model, Python and Numba versions.

    Parameters
    ----------
    ops : iterable of str, optional
        A subset of ``"conv2d"``, ``"deform_conv2d"``, ``"active_conv2d"``,
        ``"grid_sample"``, ``"affine_grid"``; all by default.
    dtypes : iterable of str
        ``"float32"`` and/or ``"float64"``.
    device : {"cpu", "cuda"}
        ``"cpu"`` compiles the Numba CPU kernels (NumPy arrays); ``"cuda"`` the
        CUDA kernels (CuPy arrays; Numba CUDA keeps no disk cache, so this only
        warms the current process).
    verbose : bool
        Print a line per compiled kernel to stderr (as
        ``config.verbose_compile`` does).

    Returns
    -------
    list of CompiledKernel
        The kernels this call really compiled (name, argument types, dtypes,
        seconds): empty when every kernel came from the cache or was already
        compiled in this process.

    Raises
    ------
    ValueError
        An unknown op, dtype or device.
    TypeError
        ``ops`` or ``dtypes`` not a string or an iterable of strings.
    ImportError
        ``device="cuda"`` without CuPy.
    """
    from . import config

    ops = OPS if ops is None else ((ops,) if isinstance(ops, str) else tuple(ops))
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ValueError(f"warmup: unknown op(s) {unknown}; expected some of {list(OPS)}")
    dtypes = (dtypes,) if isinstance(dtypes, str) else tuple(dtypes)
    bad = [d for d in dtypes if np.dtype(d) not in (np.float32, np.float64)]
    if bad:
        raise ValueError(f"warmup: dtypes must be float32 or float64, got {bad}")
    if device == "cpu":
        xp = np
    elif device == "cuda":
        try:
            import cupy as xp
        except ImportError as exc:
            raise ImportError("warmup(device='cuda') needs CuPy: pip install "
                              "defconv_np[cuda13] (or [cuda12])") from exc
    else:
        raise ValueError(f"warmup: device must be 'cpu' or 'cuda', got {device!r}")
    previous = config.verbose_compile
    config.verbose_compile = previous or verbose
    try:
        with _compile_log.recording() as compiled, np.errstate(all="ignore"):
            for dtype in dtypes:
                calls = _calls(np.dtype(dtype), xp)
                for op in ops:
                    calls[op]()
    finally:
        config.verbose_compile = previous
    return compiled


__all__ = ["OPS", "warmup"]

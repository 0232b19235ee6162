"""Compile every CUDA kernel to PTX for a real architecture, without a GPU.

The argument types of each kernel are recorded from real calls of the public
ops: NumPy arrays are routed through the CUDA launchers with the launch itself
replaced by a recorder, so the types are exactly the ones a CuPy call would
produce. Each (kernel, types) pair is then compiled with
``numba.cuda.compile_ptx`` and, when ``ptxas`` is on PATH, assembled to report
registers, spills and shared memory per kernel (nvJitLink, from
``numba-cuda[cu13]``; the system ptxas may be too old for NVVM's PTX version).

Used by ``tests/test_ptx.py`` (CI) and ``benchmarks/ptx_report.py``.
"""

import contextlib
import re
import types
from unittest import mock

import numba
import numpy as np


def _example_calls(dtype):
    """Call every op (forward and all gradients) on tiny arrays of ``dtype``."""
    import defconv_np as dc

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 5, 5)).astype(dtype)
    w = rng.standard_normal((4, 2, 3, 3)).astype(dtype)
    geometry = dict(stride=1, padding=1, dilation=1)
    out = dc.conv2d(x, w, groups=2, **geometry)
    dc.conv2d_backward(out, x, w, groups=2, **geometry)
    off = rng.uniform(-1, 1, (2, 2 * 9 * 2, 5, 5)).astype(dtype)
    mask = rng.uniform(0, 1, (2, 9 * 2, 5, 5)).astype(dtype)
    for m in (None, mask):
        out = dc.deform_conv2d(x, off, w, mask=m, **geometry)
        for det in (False, True):
            dc.deform_conv2d_backward(out, x, off, w, mask=m, deterministic=det, **geometry)
    shared = rng.uniform(-1, 1, 2 * 9 * 2).astype(dtype)
    out = dc.active_conv2d(x, shared, w, **geometry)
    dc.active_conv2d_backward(out, x, shared, w, **geometry)
    grid = rng.uniform(-1.2, 1.2, (2, 3, 4, 2)).astype(dtype)
    for mode in ("bilinear", "nearest"):
        for padding_mode in ("zeros", "border", "reflection"):
            out = dc.grid_sample(x, grid, mode, padding_mode)
            for det in (False, True):
                dc.grid_sample_backward(out, x, grid, mode, padding_mode, deterministic=det)
    shapes, starts = np.array([[3, 4], [1, 2]]), np.array([0, 12])
    value = rng.standard_normal((2, 14, 2, 3)).astype(dtype)
    loc = rng.uniform(-0.1, 1.1, (2, 5, 2, 2, 3, 2)).astype(dtype)
    weights = rng.uniform(0, 1, (2, 5, 2, 2, 3)).astype(dtype)
    out = dc.ms_deform_attn(value, shapes, starts, loc, weights)
    for det in (False, True):
        dc.ms_deform_attn_backward(out, value, shapes, starts, loc, weights, deterministic=det)
    volume = rng.standard_normal((2, 2, 3, 4, 5)).astype(dtype)
    volume_grid = rng.uniform(-1.2, 1.2, (2, 2, 3, 2, 3)).astype(dtype)
    for mode, planes, points in (("bilinear", volume, volume_grid), ("nearest", volume, volume_grid),
                                 ("bicubic", x, grid)):
        for padding_mode in ("zeros", "border", "reflection"):
            out = dc.grid_sample(planes, points, mode, padding_mode)
            for det in (False, True):
                dc.grid_sample_backward(out, planes, points, mode, padding_mode,
                                        deterministic=det)


def recorded_launches(dtypes=(np.float32, np.float64)):
    """{(kernel name, dtype name): (kernel, argument types)} for every launch."""
    from . import _cuda, config

    seen = {}

    def record(self, kernel, total, *args):
        sig = tuple(numba.typeof(a) for a in args)
        seen.setdefault((kernel.py_func.__name__, record.dtype), (kernel, sig))

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(_cuda._Launch, "__call__", record))
        stack.enter_context(mock.patch.object(config, "numpy_through_cuda_kernels", True))
        # nothing is launched, so outputs stay uninitialised: silence their maths
        stack.enter_context(np.errstate(all="ignore"))
        for dtype in dtypes:
            record.dtype = np.dtype(dtype).name
            _example_calls(dtype)
    return seen


@contextlib.contextmanager
def _target(cc):
    """Let device functions compile for ``cc`` where no driver is present:
    numba-cuda asks the current device for its compute capability."""
    import numba.cuda.dispatcher as dispatcher

    fake = types.SimpleNamespace(compute_capability=cc)
    with mock.patch.object(dispatcher, "get_current_device", lambda: fake):
        yield


def compile_all(cc=(9, 0)):
    """Rows of dicts: kernel, dtype, ptx (text), f64 (float64 instructions in a
    float32 kernel), and registers/spills/shared bytes when nvJitLink is present."""
    from numba import cuda

    rows = []
    with _target(cc):
        for (name, dtype), (kernel, sig) in sorted(recorded_launches().items()):
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
            body = "\n".join(line for line in ptx.splitlines() if not line.lstrip().startswith("//"))
            row = {"kernel": name, "dtype": dtype, "ptx": ptx,
                   "f64_instructions": len(re.findall(r"\.f64\b", body))}
            row.update(assemble(ptx, cc))
            rows.append(row)
    return rows


def assemble(ptx, cc):
    """Registers, spill bytes and shared memory, from assembling the PTX with
    nvJitLink (``-verbose``); empty where nvJitLink is not installed."""
    try:
        from cuda.bindings import nvjitlink
    except ImportError:
        return {}
    data = ptx.encode()
    handle = nvjitlink.create(2, [f"-arch=sm_{cc[0]}{cc[1]}", "-verbose"])
    try:
        nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), "kernel")
        nvjitlink.complete(handle)
        log = bytearray(nvjitlink.get_info_log_size(handle))
        nvjitlink.get_info_log(handle, log)
    finally:
        nvjitlink.destroy(handle)
    log = log.decode(errors="replace")

    def number(pattern):
        found = re.search(pattern, log)
        return int(found.group(1)) if found else 0

    return {"registers": number(r"[Uu]sed (\d+) registers"),
            "spill_store_bytes": number(r"(\d+) bytes spill stores"),
            "spill_load_bytes": number(r"(\d+) bytes spill loads"),
            "shared_bytes": number(r"(\d+) bytes smem")}

"""CPU benchmark of multi-scale deformable attention against a pure-framework reference.

Deformable DETR's encoder shape: N=2, M=8 heads, D=32, levels 64x64, 32x32,
16x16, 8x8 (S = Lq = 5440 queries), P=4 points, float32.

Run:  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/attention_bench.py
      [--repeats 9] [--out benchmarks/results/attention_cpu.json]

The peer is a reference written from Deformable DETR's documented semantics
(``ms_deform_attn_core_pytorch``: one ``grid_sample`` per level at
``2 * loc - 1``, weighted and summed), in PyTorch when torch is importable
(forward+backward by autograd), else in vectorised NumPy (forward: gather the
four corners of every sample; forward+backward: the forward plus its
hand-written adjoint with ``np.add.at``). Times are medians of interleaved
runs (ours, peer, ours, ...), after a warm-up; the speedup is also given as
the median of each round's ratio, steadier on a shared machine. Peak extra memory: for both
sides the rise of the peak RSS (VmHWM, reset through /proc/self/clear_refs)
over the RSS before the first full call, in a fresh subprocess after a call
on 8 queries
(the only measure that sees PyTorch's allocator and ours alike; Linux only;
results count, inputs do not); for ours also tracemalloc (NumPy reports its
allocations there).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc

import numba
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import defconv_np as dc  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the NumPy reference is the peer then
    torch = None

SHAPES = ((64, 64), (32, 32), (16, 16), (8, 8))
N, M, D, P = 2, 8, 32, 4


def inputs(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    shapes = np.array(SHAPES, np.int64)
    sizes = shapes.prod(axis=1)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    s = int(sizes.sum())
    value = rng.standard_normal((N, s, M, D)).astype(dtype)
    loc = rng.uniform(0, 1, (N, s, M, len(SHAPES), P, 2)).astype(dtype)
    logits = rng.standard_normal((N, s, M, len(SHAPES) * P))
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a = (a / a.sum(-1, keepdims=True)).reshape(N, s, M, len(SHAPES), P).astype(dtype)
    go = rng.standard_normal((N, s, M * D)).astype(dtype)
    return go, value, shapes, starts, loc, a


# --- ours ---


def ours_forward(go, value, shapes, starts, loc, a):
    return dc.ms_deform_attn(value, shapes, starts, loc, a)


def ours_forward_backward(go, value, shapes, starts, loc, a):
    dc.ms_deform_attn(value, shapes, starts, loc, a)
    return dc.ms_deform_attn_backward(go, value, shapes, starts, loc, a)


# --- PyTorch reference (ms_deform_attn_core_pytorch's semantics) ---


def torch_reference(value, shapes, loc, a):
    n, _, m, d = value.shape
    _, lq, _, n_levels, p, _ = loc.shape
    grids = 2 * loc - 1
    samples = []
    first = 0
    for lv, (h, w) in enumerate(shapes):
        plane = value[:, first:first + h * w].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        grid = grids[:, :, :, lv].transpose(1, 2).flatten(0, 1)  # (N*M, Lq, P, 2)
        samples.append(F.grid_sample(plane, grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # (N*M, D, Lq, P)
        first += h * w
    weights = a.transpose(1, 2).reshape(n * m, 1, lq, n_levels * p)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)  # (N*M, D, Lq)
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()


def torch_tensors(go, value, shapes, starts, loc, a, grad):
    t = [torch.from_numpy(x) for x in (go, value, loc, a)]
    if grad:
        for x in t[1:]:
            x.requires_grad_(True)
    return t[0], t[1], [tuple(s) for s in shapes.tolist()], t[2], t[3]


def torch_forward(go, value, shapes, loc, a):
    with torch.no_grad():
        return torch_reference(value, shapes, loc, a)


def torch_forward_backward(go, value, shapes, loc, a):
    for x in (value, loc, a):
        x.grad = None
    torch_reference(value, shapes, loc, a).backward(go)
    return value.grad, loc.grad, a.grad


# --- NumPy reference (when torch is absent) ---


def numpy_taps(shapes, loc):
    """Per level: corner rows (4, N, Lq, M, P) into the level, corner weights
    and in-image masks, from the grid_sample rule."""
    taps = []
    for lv, (h, w) in enumerate(shapes):
        g = 2 * loc[:, :, :, lv] - 1
        x = ((g[..., 0] + 1) * w - 1) / 2
        y = ((g[..., 1] + 1) * h - 1) / 2
        x0, y0 = np.floor(x), np.floor(y)
        lx, ly = x - x0, y - y0
        corners = []
        for dy, wy in ((0, 1 - ly), (1, ly)):
            for dx, wx in ((0, 1 - lx), (1, lx)):
                row, col = y0 + dy, x0 + dx
                ok = (row >= 0) & (row < h) & (col >= 0) & (col < w)
                index = np.where(ok, row * w + col, 0).astype(np.int64)
                corners.append((index, np.where(ok, wy * wx, 0).astype(loc.dtype)))
        taps.append(corners)
    return taps


def numpy_forward(go, value, shapes, starts, loc, a):
    n, _, m, d = value.shape
    out = np.zeros((n, loc.shape[1], m, d), value.dtype)
    heads = np.arange(m)[None, None, :, None]
    batch = np.arange(n)[:, None, None, None]
    for lv, corners in enumerate(numpy_taps(shapes, loc)):
        for index, weight in corners:
            rows = value[batch, starts[lv] + index, heads]  # (N, Lq, M, P, D)
            out += np.einsum("nqmp,nqmpd->nqmd", weight * a[:, :, :, lv], rows)
    return out.reshape(n, loc.shape[1], m * d)


def numpy_forward_backward(go, value, shapes, starts, loc, a):
    numpy_forward(go, value, shapes, starts, loc, a)
    n, _, m, d = value.shape
    g = go.reshape(n, loc.shape[1], m, d)
    grad_value = np.zeros_like(value)
    grad_loc = np.zeros_like(loc)
    grad_a = np.zeros_like(a)
    heads = np.arange(m)[None, None, :, None]
    batch = np.arange(n)[:, None, None, None]
    for lv, corners in enumerate(numpy_taps(shapes, loc)):
        h, w = shapes[lv]
        rows = [value[batch, starts[lv] + index, heads] for index, _ in corners]
        sample = sum(weight[..., None] * r for (_, weight), r in zip(corners, rows))
        grad_a[:, :, :, lv] = np.einsum("nqmd,nqmpd->nqmp", g, sample)
        ga = g[:, :, :, None, :] * a[:, :, :, lv, :, None]  # (N, Lq, M, P, D)
        for (index, weight), _ in zip(corners, rows):
            np.add.at(grad_value, (batch, starts[lv] + index, heads), weight[..., None] * ga)
        # floor-cell derivative; corners outside the image count 0 (their weights are 0)
        g_x = 2 * loc[:, :, :, lv, :, 0] - 1
        g_y = 2 * loc[:, :, :, lv, :, 1] - 1
        x, y = ((g_x + 1) * w - 1) / 2, ((g_y + 1) * h - 1) / 2
        lx, ly = (x - np.floor(x))[..., None], (y - np.floor(y))[..., None]
        v = [r * (wgt > 0)[..., None] for (_, wgt), r in zip(corners, rows)]
        dy = (1 - lx) * (v[2] - v[0]) + lx * (v[3] - v[1])
        dx = (1 - ly) * (v[1] - v[0]) + ly * (v[3] - v[2])
        grad_loc[:, :, :, lv, :, 0] = np.einsum("nqmpd,nqmpd->nqmp", ga, dx) * w
        grad_loc[:, :, :, lv, :, 1] = np.einsum("nqmpd,nqmpd->nqmp", ga, dy) * h
    return grad_value, grad_loc, grad_a


# --- measuring ---


def _status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rss_rise(side, mode):
    """MiB by which one call raised the peak RSS over the RSS before it, in a
    fresh process (see ``_child_peak``)."""
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import attention_bench as b; print(b._child_peak({side!r}, {mode!r}))")
    # a fixed mmap threshold: glibc then maps every large block afresh and
    # unmaps it when freed, so RSS follows what is live (by default, freeing a
    # large block raises the threshold and later blocks reuse resident heap)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    return float(out.stdout.split()[-1])


def _child_peak(side, mode):
    """Make the inputs, run the call on 8 queries (compilation, library
    set-up), reset the kernel's peak-RSS mark (``clear_refs`` 5, Linux) and
    run the full call once: the peak's rise over the RSS before is the memory
    the call needs beyond its inputs, results included, whichever allocator
    holds it. (A second full call would reuse memory that glibc keeps mapped
    after the first, and show nothing.)"""
    go, value, shapes, starts, loc, a = inputs()
    small = (go[:, :8], value, shapes, starts, loc[:, :8], a[:, :8])
    fn, small_args = _callable(side, mode, small)
    fn(*small_args)
    del small_args
    fn, args = _callable(side, mode, (go, value, shapes, starts, loc, a))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_bytes("VmRSS")
    result = fn(*args)  # noqa: F841 (kept alive until the peak is read)
    peak = _status_bytes("VmHWM")
    del result
    return round((peak - before) / 2**20, 1)


def _callable(side, mode, data):
    if side == "ours":
        return (ours_forward if mode == "forward" else ours_forward_backward), data
    if side == "torch":
        fn = torch_forward if mode == "forward" else torch_forward_backward
        return fn, torch_tensors(*data, grad=mode != "forward")
    fn = numpy_forward if mode == "forward" else numpy_forward_backward
    return fn, data


def interleaved_medians(pairs, repeats):
    """{name: median ms} of callables run in turn, ``repeats`` rounds, after a warm-up."""
    for fn, args in pairs.values():
        fn(*args)
    times = {name: [] for name in pairs}
    for _ in range(repeats):
        for name, (fn, args) in pairs.items():
            t0 = time.perf_counter()
            fn(*args)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}, times


def tracemalloc_peak_mib(fn, args):
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn(*args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return round(peak / 2**20, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "attention_cpu.json"))
    args = parser.parse_args()
    threads = numba.get_num_threads()
    peer = "torch" if torch is not None else "numpy"
    if torch is not None:
        torch.set_num_threads(threads)
    data = inputs()

    # the peer agrees with us (a wrong fast op is no result)
    ours_out = ours_forward(*data)
    if peer == "torch":
        peer_out = torch_forward(*torch_tensors(*data, grad=False)).numpy()
    else:
        peer_out = numpy_forward(*data)
    agreement = float(np.abs(ours_out - peer_out).max())
    assert agreement < 1e-4, agreement

    rows = []
    for mode in ("forward", "forward+backward"):
        pairs = {side: _callable(side, mode, data) for side in ("ours", peer)}
        medians, raw = interleaved_medians(pairs, args.repeats)
        row = {"mode": mode, "ours_ms": round(medians["ours"], 2),
               "peer_ms": round(medians[peer], 2),
               "speedup": round(medians[peer] / medians["ours"], 2),
               # each round's peer/ours ratio: the two ran back to back, so
               # this is steadier than the medians' ratio on a shared machine
               "speedup_median_of_rounds": round(statistics.median(
                   p / o for p, o in zip(raw[peer], raw["ours"])), 2),
               "ours_runs_ms": [round(t, 2) for t in raw["ours"]],
               "peer_runs_ms": [round(t, 2) for t in raw[peer]],
               "ours_peak_rss_rise_mib": peak_rss_rise("ours", mode),
               "peer_peak_rss_rise_mib": peak_rss_rise(peer, mode),
               "ours_tracemalloc_peak_mib": tracemalloc_peak_mib(*pairs["ours"])}
        rows.append(row)
        print(f"{mode:17s} ours {row['ours_ms']:8.2f} ms   {peer} {row['peer_ms']:8.2f} ms   "
              f"speedup {row['speedup']:5.2f}x (rounds {row['speedup_median_of_rounds']:5.2f}x)   "
              f"peak RSS rise ours {row['ours_peak_rss_rise_mib']}"
              f" MiB, {peer} {row['peer_peak_rss_rise_mib']} MiB (tracemalloc ours "
              f"{row['ours_tracemalloc_peak_mib']} MiB)")
    result = {
        "shape": {"N": N, "M": M, "D": D, "levels": SHAPES, "P": P, "Lq": int(data[1].shape[1]),
                  "dtype": "float32"},
        "peer": peer,
        "peer_version": torch.__version__ if torch is not None else np.__version__,
        "threads": threads,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "max_abs_difference_forward": agreement,
        "note": "shared, noisy machine; medians of interleaved runs",
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

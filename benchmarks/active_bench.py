"""CPU benchmark of active_conv2d against dc.conv2d and dc.deform_conv2d.

Shape of the CPU benchmark: N=8, C=O=64, 64x64, 3x3, padding 1, float32; the
shared offset is random in (-1, 1) (every kernel point a true four-tap
stencil). Peers: conv2d (the same GEMMs, one tap per kernel point: the floor)
and deform_conv2d on the offset broadcast to (N, 18, Ho, Wo) (the same op
computed per sample). Forward, and forward + backward (every gradient).

Runs are interleaved (each repeat runs every variant once, in a rotating
order) so that the shared machine's load drifts hit all of them alike; medians
with min/max are reported.

Run:  python benchmarks/active_bench.py [--repeats 15] [--blas auto|numba|numpy|mkl]
      [--out benchmarks/results/active_cpu.json]
(``--blas`` sets ``config.cpu_blas``, the lanes' GEMM for all three ops; the
JSON records it)
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numba
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import defconv_np as dc  # noqa: E402


def variants(x, off, w, b, go):
    n, _, ho, wo = go.shape
    off_b = np.ascontiguousarray(np.broadcast_to(off.reshape(1, -1, 1, 1), (n, off.size, ho, wo)))
    kw = dict(padding=1)
    return {
        ("forward", "active_conv2d"): lambda: dc.active_conv2d(x, off, w, b, **kw),
        ("forward", "conv2d"): lambda: dc.conv2d(x, w, b, **kw),
        ("forward", "deform_conv2d"): lambda: dc.deform_conv2d(x, off_b, w, b, **kw),
        ("forward+backward", "active_conv2d"): lambda: (
            dc.active_conv2d(x, off, w, b, **kw), dc.active_conv2d_backward(go, x, off, w, **kw)),
        ("forward+backward", "conv2d"): lambda: (
            dc.conv2d(x, w, b, **kw), dc.conv2d_backward(go, x, w, **kw)),
        ("forward+backward", "deform_conv2d"): lambda: (
            dc.deform_conv2d(x, off_b, w, b, **kw), dc.deform_conv2d_backward(go, x, off_b, w, **kw)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "active_cpu.json"))
    parser.add_argument("--blas", choices=("auto", "numba", "numpy", "mkl"), default="auto",
                        help="config.cpu_blas for every op (default: auto)")
    args = parser.parse_args()
    dc.config.cpu_blas = args.blas
    rng = np.random.default_rng(0)
    dtype = np.float32
    n, c, o, h, w, k = 8, 64, 64, 64, 64, 3
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = (rng.standard_normal((o, c, k, k)) * 0.1).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    off = rng.uniform(-1, 1, 2 * k * k).astype(dtype)
    go = rng.standard_normal((n, o, h, w)).astype(dtype)
    cases = variants(x, off, wt, b, go)
    keys = list(cases)
    for key in keys:  # warm-up (and JIT compile)
        cases[key]()
    times = {key: [] for key in keys}
    for r in range(args.repeats):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            t0 = time.perf_counter()
            cases[key]()
            times[key].append((time.perf_counter() - t0) * 1e3)
    rows = []
    for (phase, op), ts in times.items():
        med = statistics.median(ts)
        rows.append({"phase": phase, "op": op, "median_ms": round(med, 2),
                     "min_ms": round(min(ts), 2), "max_ms": round(max(ts), 2),
                     "runs_ms": [round(t, 2) for t in ts]})
    by = {(r["phase"], r["op"]): r for r in rows}
    print(f"{'phase':18s} {'op':15s} {'median':>8s} {'min':>8s} {'max':>8s}  vs conv2d  vs deform")
    for r in rows:
        conv = by[(r["phase"], "conv2d")]["median_ms"]
        deform = by[(r["phase"], "deform_conv2d")]["median_ms"]
        r["ratio_to_conv2d"] = round(r["median_ms"] / conv, 3)
        r["ratio_to_deform_conv2d"] = round(r["median_ms"] / deform, 3)
        print(f"{r['phase']:18s} {r['op']:15s} {r['median_ms']:8.1f} {r['min_ms']:8.1f} "
              f"{r['max_ms']:8.1f}  {r['ratio_to_conv2d']:8.2f}x {r['ratio_to_deform_conv2d']:8.2f}x")
    result = {
        "shape": dict(N=n, C=c, O=o, H=h, W=w, kernel=k, padding=1, dtype="float32",
                      offset="uniform(-1, 1), shared"),
        "repeats": args.repeats, "interleaved": True, "cpu_blas": args.blas,
        "numba_threads": numba.get_num_threads(), "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "numpy": np.__version__, "numba": numba.__version__,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()

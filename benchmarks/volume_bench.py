"""CPU benchmark of 5-D (trilinear) and bicubic grid_sample against PyTorch.

Shapes: trilinear on (N, C, D, H, W) = (2, 16, 64, 64, 64) at a 64^3 grid,
padding "zeros" and "border"; bicubic on (8, 64, 64, 64) at a 64x64 grid,
padding "zeros". float32; the grids are affine_grid of a small random
rotation, scale and shift (align_corners=False), so samples fall inside and
outside the input. Forward, and forward + backward (input and grid
gradients; torch: autograd with both requiring grad). PyTorch runs with as
many threads as Numba.

Runs are interleaved (each repeat runs every variant once, in a rotating
order) so that the shared machine's load drifts hit all of them alike; medians
with min/max are reported.

Run:  python benchmarks/volume_bench.py [--repeats 9] [--out benchmarks/results/volume_cpu.json]
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
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import defconv_np as dc  # noqa: E402


def rotation_theta(rng, n, dims):
    """(N, dims, dims + 1): a random rotation (about 10 degrees), scale 0.9-1.1, shift 0.1."""
    thetas = []
    for _ in range(n):
        q, _ = np.linalg.qr(np.eye(dims) + rng.uniform(-0.15, 0.15, (dims, dims)))
        q *= np.sign(np.diag(q))
        matrix = q * rng.uniform(0.9, 1.1)
        thetas.append(np.concatenate([matrix, rng.uniform(-0.1, 0.1, (dims, 1))], axis=1))
    return np.stack(thetas).astype(np.float32)


def cases(rng):
    """{(shape name, padding, phase, library): callable}."""
    out = {}
    problems = {
        "trilinear (2,16,64,64,64)": ((2, 16, 64, 64, 64), "bilinear", ("zeros", "border")),
        "bicubic (8,64,64,64)": ((8, 64, 64, 64), "bicubic", ("zeros",)),
    }
    for name, (shape, mode, paddings) in problems.items():
        x = rng.standard_normal(shape).astype(np.float32)
        theta = rotation_theta(rng, shape[0], len(shape) - 2)
        grid = dc.affine_grid(theta, shape)
        go = rng.standard_normal(shape).astype(np.float32)
        tx, tgrid, tgo = torch.from_numpy(x), torch.from_numpy(grid), torch.from_numpy(go)
        for padding in paddings:
            args = (mode, padding, False)

            def ours_fwd(x=x, grid=grid, args=args):
                return dc.grid_sample(x, grid, *args)

            def ours_both(x=x, grid=grid, go=go, args=args):
                dc.grid_sample(x, grid, *args)
                return dc.grid_sample_backward(go, x, grid, *args)

            def torch_fwd(tx=tx, tgrid=tgrid, args=args):
                with torch.no_grad():
                    return torch.nn.functional.grid_sample(tx, tgrid, *args)

            def torch_both(tx=tx, tgrid=tgrid, tgo=tgo, args=args):
                a = tx.detach().requires_grad_()
                g = tgrid.detach().requires_grad_()
                torch.nn.functional.grid_sample(a, g, *args).backward(tgo)
                return a.grad, g.grad

            out[(name, padding, "forward", "defconv_np")] = ours_fwd
            out[(name, padding, "forward", "torch")] = torch_fwd
            out[(name, padding, "forward+backward", "defconv_np")] = ours_both
            out[(name, padding, "forward+backward", "torch")] = torch_both
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "volume_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(numba.get_num_threads())
    variants = cases(np.random.default_rng(0))
    keys = list(variants)
    for key in keys:  # warm-up (and JIT compile)
        variants[key]()
    times = {key: [] for key in keys}
    for r in range(args.repeats):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            t0 = time.perf_counter()
            variants[key]()
            times[key].append((time.perf_counter() - t0) * 1e3)
    rows = []
    for (name, padding, phase, library), ts in times.items():
        rows.append({"problem": name, "padding_mode": padding, "phase": phase,
                     "library": library, "median_ms": round(statistics.median(ts), 2),
                     "min_ms": round(min(ts), 2), "max_ms": round(max(ts), 2),
                     "runs_ms": [round(t, 2) for t in ts]})
    by = {(r["problem"], r["padding_mode"], r["phase"], r["library"]): r for r in rows}
    print(f"{'problem':28s} {'padding':8s} {'phase':17s} {'ours':>8s} {'(min-max)':>17s} "
          f"{'torch':>8s} {'(min-max)':>17s}  ours/torch")
    for r in rows:
        if r["library"] != "defconv_np":
            continue
        t = by[(r["problem"], r["padding_mode"], r["phase"], "torch")]
        r["ratio_to_torch"] = round(r["median_ms"] / t["median_ms"], 3)
        print(f"{r['problem']:28s} {r['padding_mode']:8s} {r['phase']:17s} {r['median_ms']:8.1f} "
              f"({r['min_ms']:7.1f}-{r['max_ms']:7.1f}) {t['median_ms']:8.1f} "
              f"({t['min_ms']:7.1f}-{t['max_ms']:7.1f})  {r['ratio_to_torch']:6.2f}x")
    result = {
        "dtype": "float32", "align_corners": False, "grid": "affine_grid of a small rotation",
        "repeats": args.repeats, "interleaved": True,
        "numba_threads": numba.get_num_threads(), "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "machine": platform.processor() or platform.machine(),
        "numpy": np.__version__, "numba": numba.__version__, "torch": torch.__version__,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()

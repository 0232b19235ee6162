"""grid_sample against torch.nn.functional.grid_sample, each library alone in
its own process.

In one process the two libraries' OpenMP worker threads (Numba's "omp"
threading layer, torch's intra-op pool) keep spinning for milliseconds after
each call and take the cores from the other library's next calls: in
``cpu_bench.py``, after a block of torch's calls, our grid_sample forward
(0.6 ms alone) took 1.7-3 ms on its first call and about 1.2 ms on the next
five. Here each measurement is a fresh process running one library only,
the processes alternating (ours, torch, torch, ours, ...), so nothing else
runs on the cores while either is timed.

Shape of ``cpu_bench.py``: input (8, 64, 64, 64) float32, an affine grid of
the same size, bilinear, 2 threads each; forward and forward+backward (both
gradients), for every padding mode.

Run:  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/grid_alone.py
      [--rounds 4] [--repeats 40] [--out benchmarks/results/grid_alone.json]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

MODES = ("zeros", "border", "reflection")
PHASES = ("forward", "forward+backward")


def problem(seed=0):
    """The input, grid and output gradient of ``cpu_bench.py``'s grid rows."""
    rng = np.random.default_rng(seed)
    n, c, h, w = 8, 64, 64, 64
    angles, zooms = rng.uniform(-0.5, 0.5, n), rng.uniform(0.8, 1.2, n)
    theta = np.stack([np.array([[np.cos(a) * z, -np.sin(a) * z, 0.1],
                                [np.sin(a) * z, np.cos(a) * z, -0.05]])
                      for a, z in zip(angles, zooms)]).astype(np.float32)
    inputs = [rng.standard_normal((n, c, h, w)).astype(np.float32) for _ in range(3)]
    grad_out = rng.standard_normal((n, c, h, w)).astype(np.float32)
    return theta, inputs, grad_out


def worker(library, repeats):
    """Time every (phase, mode) with one library; print a JSON dict of medians (ms)."""
    theta, inputs, grad_out = problem()
    if library == "ours":
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
        import defconv_np as dc

        grid = dc.affine_grid(theta, inputs[0].shape, align_corners=False)

        def call(phase, mode, x):
            dc.grid_sample(x, grid, padding_mode=mode)
            if phase == "forward+backward":
                dc.grid_sample_backward(grad_out, x, grid, padding_mode=mode)
    else:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(2)
        grid_t = F.affine_grid(torch.from_numpy(theta), inputs[0].shape, align_corners=False)
        tensors = [torch.from_numpy(x) for x in inputs]
        go = torch.from_numpy(grad_out)

        def call(phase, mode, x):
            if phase == "forward":
                F.grid_sample(x, grid_t, padding_mode=mode, align_corners=False)
                return
            xg, gg = x.detach().requires_grad_(), grid_t.detach().requires_grad_()
            out = F.grid_sample(xg, gg, padding_mode=mode, align_corners=False)
            torch.autograd.grad(out, (xg, gg), go)

        inputs = tensors
    result = {}
    for phase in PHASES:
        for mode in MODES:
            call(phase, mode, inputs[0])  # warm-up (and JIT compile)
            times = []
            for r in range(repeats):
                t0 = time.perf_counter()
                call(phase, mode, inputs[r % len(inputs)])
                times.append((time.perf_counter() - t0) * 1e3)
            result[f"{phase}/{mode}"] = statistics.median(times)
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "grid_alone.json"))
    parser.add_argument("--worker", choices=("ours", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.repeats)
        return
    runs = {"ours": [], "torch": []}
    for rnd in range(args.rounds):
        for library in (("ours", "torch") if rnd % 2 == 0 else ("torch", "ours")):
            out = subprocess.run([sys.executable, __file__, "--worker", library,
                                  "--repeats", str(args.repeats)],
                                 check=True, capture_output=True, text=True).stdout
            runs[library].append(json.loads(out.strip().splitlines()[-1]))
    rows = []
    print(f"{'phase':18s} {'mode':11s} {'ours ms':>8s} {'torch ms':>9s} {'ratio':>6s}  "
          "(medians over rounds; each round a fresh process per library)")
    for key in runs["ours"][0]:
        ours = statistics.median(r[key] for r in runs["ours"])
        peer = statistics.median(r[key] for r in runs["torch"])
        phase, mode = key.split("/")
        rows.append({"phase": phase, "mode": mode, "ours_ms": round(ours, 3),
                     "torch_ms": round(peer, 3), "ratio": round(ours / peer, 3),
                     "ours_rounds_ms": [round(r[key], 3) for r in runs["ours"]],
                     "torch_rounds_ms": [round(r[key], 3) for r in runs["torch"]]})
        print(f"{phase:18s} {mode:11s} {ours:8.3f} {peer:9.3f} {ours / peer:6.2f}")
    # CPU, BLAS and environment recorded, and the JSON written, as cpu_bench.py does
    from cpu_bench import machine, write_json

    result = {"machine": machine(), "shape": {"N": 8, "C": 64, "H": 64, "W": 64},
              "dtype": "float32", "threads": 2, "rounds": args.rounds, "repeats": args.repeats,
              "rows": rows}
    write_json(args.out, result)


if __name__ == "__main__":
    main()

"""Framework adapter overhead: defconv_np.torch's ops against the NumPy functions they call.

Run:  python benchmarks/adapter_bench.py [--repeats 21]
                                         [--out benchmarks/results/adapter_torch.json]

The CPU benchmark's shape (float32, N=8, C=O=64, 64x64, 3x3, padding 1):
deform_conv2d v2 (with mask), conv2d, and grid_sample (zeros, at an affine
grid), forward and forward+backward (all gradients). The NumPy side calls
``defconv_np.<op>`` and ``defconv_np.<op>_backward``; a framework side runs the
same computation through its adapter (conversion, dispatch, autograd). Each
repeat times every side once, in an order that alternates between repeats, so
load from other processes on a shared machine falls on both sides alike. The
report gives the median of each side, the overhead (framework median / NumPy
median - 1), and the spread: the middle 50% of each side's times and of the
per-repeat ratios. A second table repeats the rows at a tiny shape, on one
Numba thread, where the kernels take microseconds: there the difference is the
adapter's fixed cost per call (conversion, dispatch, autograd).

Adding a framework: write a function like :func:`torch_side` that takes the
NumPy cases and the padding and returns ``{row name: callable(case index)}`` for the rows of
:func:`numpy_side` it covers, and add it to :data:`FRAMEWORKS` (a JAX section
would wrap ``defconv_np.jax``'s ops and call ``block_until_ready``).
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

SHAPE = dict(N=8, C=64, O=64, H=64, W=64, k=3, padding=1)
#: where the kernels take microseconds, so the adapter's fixed cost per call shows
TINY_SHAPE = dict(N=1, C=2, O=2, H=8, W=8, k=3, padding=1)
TINY_CALLS = 200  # calls per timed sample at TINY_SHAPE
ROTATIONS = 3  # distinct inputs, used in turn


def make_cases(rng, shape, dtype=np.float32):
    """ROTATIONS sets of NumPy inputs and output gradients for every row."""
    n, c, o, h, w, k, pad = (shape[key] for key in ("N", "C", "O", "H", "W", "k", "padding"))
    out_hw = (h + 2 * pad - k + 1, w + 2 * pad - k + 1)
    cases = []
    for _ in range(ROTATIONS):
        theta = np.stack([[[np.cos(a) * z, -np.sin(a) * z, 0.1],
                           [np.sin(a) * z, np.cos(a) * z, -0.05]]
                          for a, z in zip(rng.uniform(-0.5, 0.5, n), rng.uniform(0.8, 1.2, n))])
        cases.append(dict(
            input=rng.standard_normal((n, c, h, w)).astype(dtype),
            weight=(0.1 * rng.standard_normal((o, c, k, k))).astype(dtype),
            bias=rng.standard_normal(o).astype(dtype),
            offset=rng.uniform(-2, 2, (n, 2 * k * k) + out_hw).astype(dtype),
            mask=rng.uniform(0, 1, (n, k * k) + out_hw).astype(dtype),
            grad_conv=rng.standard_normal((n, o) + out_hw).astype(dtype),
            grid=dc.affine_grid(theta.astype(dtype), (n, c, h, w)),
            grad_sample=rng.standard_normal((n, c, h, w)).astype(dtype),
        ))
    return cases


def numpy_side(cases, pad):
    """The reference: defconv_np's NumPy functions called directly."""

    def deform(i):
        a = cases[i]
        return dc.deform_conv2d(a["input"], a["offset"], a["weight"], a["bias"], padding=pad,
                                mask=a["mask"])

    def deform_fb(i):
        a = cases[i]
        deform(i)
        return dc.deform_conv2d_backward(a["grad_conv"], a["input"], a["offset"], a["weight"],
                                         padding=pad, mask=a["mask"])

    def conv(i):
        a = cases[i]
        return dc.conv2d(a["input"], a["weight"], a["bias"], padding=pad)

    def conv_fb(i):
        a = cases[i]
        conv(i)
        return dc.conv2d_backward(a["grad_conv"], a["input"], a["weight"], padding=pad)

    def sample(i):
        return dc.grid_sample(cases[i]["input"], cases[i]["grid"])

    def sample_fb(i):
        a = cases[i]
        sample(i)
        return dc.grid_sample_backward(a["grad_sample"], a["input"], a["grid"])

    return {"deform_conv2d v2 forward": deform, "deform_conv2d v2 forward+backward": deform_fb,
            "conv2d forward": conv, "conv2d forward+backward": conv_fb,
            "grid_sample forward": sample, "grid_sample forward+backward": sample_fb}


def torch_side(cases, pad):
    """defconv_np.torch: tensors sharing the NumPy inputs' memory; forward
    without autograd, forward+backward with every input requiring grad."""
    import torch

    import defconv_np.torch as dct

    torch.set_num_threads(numba.get_num_threads())
    tcases = [{key: torch.from_numpy(value) for key, value in a.items()} for a in cases]

    def deform_call(a):
        return dct.deform_conv2d(a["input"], a["offset"], a["weight"], a["bias"], padding=pad,
                                 mask=a["mask"])

    def conv_call(a):
        return dct.conv2d(a["input"], a["weight"], a["bias"], padding=pad)

    def sample_call(a):
        return dct.grid_sample(a["input"], a["grid"])

    def forward(call):
        def run(i):
            with torch.no_grad():
                return call(tcases[i])
        return run

    def forward_backward(call, grad_key, used):
        def run(i):
            a = {key: (t.detach().requires_grad_() if key in used else t)
                 for key, t in tcases[i].items()}
            call(a).backward(a[grad_key])
            return [a[key].grad for key in used]
        return run

    deform_used = ("input", "offset", "weight", "bias", "mask")
    return {"deform_conv2d v2 forward": forward(deform_call),
            "deform_conv2d v2 forward+backward": forward_backward(deform_call, "grad_conv",
                                                                  deform_used),
            "conv2d forward": forward(conv_call),
            "conv2d forward+backward": forward_backward(conv_call, "grad_conv",
                                                        ("input", "weight", "bias")),
            "grid_sample forward": forward(sample_call),
            "grid_sample forward+backward": forward_backward(sample_call, "grad_sample",
                                                             ("input", "grid"))}


#: name -> function(cases, padding) -> {row: callable(case index)}; "numpy" is the reference
FRAMEWORKS = {"torch": torch_side}


def quartiles(values):
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return round(q1, 3), round(median, 3), round(q3, 3)


def interleaved_times(sides, repeats, calls=1):
    """Milliseconds per call of each side: every repeat times ``calls`` calls of
    every side, the order of the sides rotating between repeats (after one
    warm-up call each)."""
    names = list(sides)
    for name in names:
        sides[name](0)
    times = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            call, case = sides[name], r % ROTATIONS
            t0 = time.perf_counter()
            for _ in range(calls):
                call(case)
            times[name].append((time.perf_counter() - t0) * 1e3 / calls)
    return times


def run_rows(shape, repeats, frameworks, calls, label):
    cases = make_cases(np.random.default_rng(0), shape)
    reference = numpy_side(cases, shape["padding"])
    others = {name: make(cases, shape["padding"]) for name, make in frameworks.items()}
    print(f"{label}: float32 " + " ".join(f"{k}={v}" for k, v in shape.items()) +
          f", median of {repeats} repeats" + (f" of {calls} calls" if calls > 1 else ""))
    print(f"{'row':36s} {'side':6s} {'median ms':>10s} {'IQR ms':>17s} {'overhead':>9s} "
          f"{'per-repeat ratio IQR':>21s}")
    rows = []
    for row, numpy_call in reference.items():
        sides = {"numpy": numpy_call}
        sides.update({name: calls_[row] for name, calls_ in others.items() if row in calls_})
        times = interleaved_times(sides, repeats, calls)
        base = statistics.median(times["numpy"])
        for name, values in times.items():
            q1, median, q3 = quartiles(values)
            entry = {"shape": label, "row": row, "side": name, "median_ms": median,
                     "iqr_ms": [q1, q3], "min_ms": round(min(values), 4),
                     "max_ms": round(max(values), 4)}
            text = ""
            if name != "numpy":
                ratios = [v / b for v, b in zip(values, times["numpy"])]
                r1, _, r3 = quartiles(ratios)
                entry["overhead"] = round(median / base - 1, 4)
                entry["overhead_ms"] = round(median - base, 4)
                entry["per_repeat_ratio_iqr"] = [r1, r3]
                text = f"{entry['overhead']:+9.1%} {r1:9.3f}-{r3:7.3f}"
            rows.append(entry)
            print(f"{row:36s} {name:6s} {median:10.3f} {q1:8.3f}-{q3:8.3f} {text}", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "adapter_torch.json"))
    args = parser.parse_args()
    frameworks = {name: FRAMEWORKS[name] for name in args.frameworks}
    versions = {"numpy": np.__version__, "numba": numba.__version__}
    print(f"threads={numba.get_num_threads()}")
    rows = run_rows(SHAPE, args.repeats, frameworks, 1, "benchmark")
    versions.update({name: sys.modules[name].__version__ for name in frameworks
                     if name in sys.modules})
    # One Numba thread at the tiny shape: with a thread pool, how long its
    # threads take to wake up after the adapter's few microseconds of Python
    # varies by milliseconds on a loaded machine (it does between plain NumPy
    # calls too), and would drown the adapter's own cost.
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        rows += run_rows(TINY_SHAPE, args.repeats, frameworks, TINY_CALLS, "tiny, 1 thread")
    finally:
        numba.set_num_threads(threads)
    result = {"machine": platform.machine(), "threads": numba.get_num_threads(),
              "load_average": os.getloadavg(), "versions": versions, "dtype": "float32",
              "shapes": {"benchmark": SHAPE, "tiny": TINY_SHAPE}, "repeats": args.repeats,
              "tiny_calls_per_repeat": TINY_CALLS, "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

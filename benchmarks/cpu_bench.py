"""CPU benchmark: defconv_np against torch.nn.functional on the same shapes.

conv2d and deform_conv2d at (N=8, C=O=64, 64x64, 3x3; dilation 1 and 2) and
grid_sample at input (8, 64, 64, 64) with an affine grid, all float32.

Run:  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/cpu_bench.py [--repeats 7]
      [--out benchmarks/results/cpu.json]
(unset only where a workplace sets those OpenBLAS overrides, which select a
slower GEMM kernel than a user's machine gets; the JSON records the CPU, the
BLAS kernel threadpoolctl reports and those variables)

Times forward and forward+backward (median of --repeats runs after a warm-up,
inputs rotated between runs; ours and torch's in alternating blocks),
side by side with torch.nn.functional.conv2d on the same shape when torch is
installed: a dense conv does the same GEMM
arithmetic and is the floor a deformable conv can reach. Where the ``mkl``
wheel is installed (``pip install defconv_np[mkl]``), the conv rows also time
ours with the lanes' GEMMs on MKL (``config.cpu_blas = "mkl"``), in the same
alternating blocks, beside ours on our own GEMM (``"numba"``, what ``"auto"``
takes on CPUs with AVX-512 without MKL) and on NumPy's own BLAS
(``"numpy"``). The row's ``ours_ms`` is what ``"auto"`` takes, the others
``ours_<blas>_ms``. Peak extra memory of
our calls is measured with tracemalloc (NumPy reports its allocations there),
at two batch sizes to show that the column buffer is chunked.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc

import numba
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import defconv_np as dc  # noqa: E402
from defconv_np import _cpu, _cpu_blas  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # torch is optional: our numbers alone are still printed
    torch = None


#: Blocks per function: each function runs its calls in consecutive blocks
#: (a library's worker threads stay warm within a block, as in a training
#: loop), the functions' blocks alternating, the order reversed each round.
#: Calls are not interleaved one by one: torch's OpenMP threads spin for a
#: while after each call and slowed whatever ran next on the two cores (by up
#: to 2x), and a pause before each call let the cores clock down instead.
BLOCKS = 3


#: Every peer time taken, by (op, config): the dense peer is timed beside
#: each conv row, and the pooled median of its times is a steadier floor.
PEER_SAMPLES = {}


def side_by_side(fns, inputs, repeats, pool=None):
    """Median ms of each function over ``repeats`` calls (at least one per
    block), in alternating blocks, inputs rotated; None for a None entry.
    The last function's times (the peer's) are also kept under ``pool``."""
    live = [fn for fn in fns if fn is not None]
    for fn in live:
        fn(*inputs[0])  # warm-up (and JIT compile)
    times = {id(fn): [] for fn in live}
    per_block = max(1, -(-repeats // BLOCKS))
    for block in range(BLOCKS):
        for fn in (live if block % 2 == 0 else live[::-1]):
            for r in range(per_block):
                args = inputs[(block * per_block + r) % len(inputs)]
                t0 = time.perf_counter()
                fn(*args)
                times[id(fn)].append((time.perf_counter() - t0) * 1e3)
    if pool is not None and fns[-1] is not None:
        PEER_SAMPLES.setdefault(pool, []).extend(times[id(fns[-1])])
    return [None if fn is None else statistics.median(times[id(fn)]) for fn in fns]


#: The ``config.cpu_blas`` choices the conv rows time ours under (set in ``main``).
BLASES = ["numpy"]


def _under(blas, fn):
    """``fn`` run with ``config.cpu_blas = blas``, the setting restored after."""
    def call(*args):
        previous, dc.config.cpu_blas = dc.config.cpu_blas, blas
        try:
            return fn(*args)
        finally:
            dc.config.cpu_blas = previous
    return call


def _ours_and_peer(ours, peer, blases=("numpy",)):
    """The callables ``side_by_side`` times for one row: ours under each of
    ``blases``, then the peer. Each takes (our arrays, the peer's tensors) and
    calls its own function on its own."""
    return [*[(lambda arrays, tensors, f=_under(b, ours): f(*arrays)) for b in blases],
            None if peer is None else (lambda arrays, tensors: peer(*tensors))]


def machine():
    """What the numbers depend on: CPU, BLAS library and kernel, the
    OpenBLAS variables that override the kernel choice, and glibc's malloc
    thresholds, and OpenMP's wait policy (torch's OpenMP threads spin after
    its calls, taking the cores from ours: ``OMP_WAIT_POLICY=PASSIVE`` stops
    that). torch's CPU tensors come from malloc: with the default,
    adaptive ones, its conv2d forward+backward at the benchmark shape paid
    page faults on fresh mappings, 27 ms against 19.6 with
    ``MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824``;
    ours, 44 ms, did not move."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        import threadpoolctl
        blas = [{k: lib.get(k) for k in ("internal_api", "version", "architecture",
                                          "threading_layer", "num_threads")}
                for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    except ImportError:
        blas = None
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                          "OMP_NUM_THREADS", "OMP_WAIT_POLICY",
                                          "NUMBA_NUM_THREADS",
                                          "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    return {"cpu": cpu, "cores": os.cpu_count(), "blas": blas, "environment": env}


def write_json(path, result):
    """``result`` as indented JSON at ``path`` (its folder made), and say so."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")


def peak_mib(fn, *args):
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn(*args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def conv_cases(shape, rng, dtype, rotations):
    n, c, o, h, w, k = shape
    return [(rng.standard_normal((n, c, h, w)).astype(dtype),
             rng.standard_normal((o, c, k, k)).astype(dtype) * 0.1) for _ in range(rotations)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "cpu.json"))
    parser.add_argument("--blas", nargs="+", choices=_cpu_blas.CHOICES, default=None,
                        help="the lanes' GEMMs for the conv rows, the first giving the row's "
                             "ours_ms (default: auto, then the others available)")
    args = parser.parse_args()
    have_mkl = _cpu_blas.mkl_gemm(np.float32) is not None
    available = ["numba", "numpy"] + (["mkl"] if have_mkl else [])
    # "auto" itself, not the GEMM it takes for conv2d: deform_conv2d takes
    # our fused tiles under it even where MKL is installed
    BLASES[:] = args.blas or ["auto"] + available
    threads = numba.get_num_threads()
    if torch is not None:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    dtype = np.float32
    n, c, o, h, w, k = 8, 64, 64, 64, 64, 3
    rows = []

    def record(op, config, ours, peer, peer_name, peak=None):
        """``ours``: ms, or {blas: ms} for the conv rows (the first of
        ``BLASES`` is the row's ``ours_ms``; each other ``ours_<blas>_ms``)."""
        by_blas = ours if isinstance(ours, dict) else {}
        ours = by_blas[BLASES[0]] if by_blas else ours
        row = {"op": op, "config": config, "lane_blas": BLASES[0] if by_blas else None,
               "ours_ms": round(ours, 2),
               "peer": peer_name, "peer_ms": None if peer is None else round(peer, 2),
               "ratio": None if peer is None else round(ours / peer, 3),
               "peak_extra_mib": None if peak is None else round(peak, 1)}
        rows.append(row)
        ratio = "" if peer is None else f"{peer:9.2f} {ours / peer:7.2f}x"
        for blas in BLASES[1:] if by_blas else ():
            row[f"ours_{blas}_ms"] = round(by_blas[blas], 2)
            row[f"ratio_{blas}"] = None if peer is None else round(by_blas[blas] / peer, 3)
            ratio += f"  {blas} {by_blas[blas]:7.2f}" + (
                "" if peer is None else f" {row[f'ratio_{blas}']:5.2f}x")
        peak_s = "" if peak is None else f"  peak {peak:7.1f} MiB"
        print(f"{op:34s} {config:22s} {ours:9.2f} {ratio}{peak_s}", flush=True)

    print(f"threads={threads} dtype=float32 shape N={n} C={c} O={o} {h}x{w} k={k} padding=1; "
          f"conv rows on the lanes' BLAS: {', '.join(BLASES)}")
    print(f"machine: {machine()}")
    print(f"{'op':34s} {'config':22s} {'ours ms':>9s} {'torch ms':>9s} {'ratio':>8s}")
    cases = conv_cases((n, c, o, h, w, k), rng, dtype, rotations=3)
    for dil in (1, 2):
        pad = dil
        cfg = f"dilation {dil} pad {pad}"
        out_shape = dc.conv2d(*cases[0], padding=pad, dilation=dil).shape
        go = rng.standard_normal(out_shape).astype(dtype)
        offsets = [rng.uniform(-2, 2, (n, 2 * k * k) + out_shape[2:]).astype(dtype) for _ in cases]
        masks = [rng.uniform(0, 1, (n, k * k) + out_shape[2:]).astype(dtype) for _ in cases]

        def ours_conv(x, wt):
            return dc.conv2d(x, wt, padding=pad, dilation=dil)

        def ours_conv_fb(x, wt):
            dc.conv2d(x, wt, padding=pad, dilation=dil)
            return dc.conv2d_backward(go, x, wt, padding=pad, dilation=dil)

        peer_f = peer_fb = None
        if torch is not None:
            tcases = [(torch.from_numpy(x), torch.from_numpy(wt)) for x, wt in cases]
            tgo = torch.from_numpy(go)

            def torch_conv(x, wt):
                with torch.no_grad():
                    return F.conv2d(x, wt, padding=pad, dilation=dil)

            def torch_conv_fb(x, wt):
                x = x.requires_grad_(True)
                wt = wt.requires_grad_(True)
                F.conv2d(x, wt, padding=pad, dilation=dil).backward(tgo)
                x.grad = wt.grad = None
                x.requires_grad_(False)
                wt.requires_grad_(False)

        else:
            tcases, torch_conv, torch_conv_fb = cases, None, None
        # ours and torch's timed side by side (alternating blocks), same inputs
        both = list(zip(cases, tcases))
        *conv_f, peer_f = side_by_side(_ours_and_peer(ours_conv, torch_conv, BLASES), both,
                                       args.repeats, pool=("forward", cfg))
        *conv_fb, peer_fb = side_by_side(_ours_and_peer(ours_conv_fb, torch_conv_fb, BLASES),
                                         both, args.repeats, pool=("fwd+bwd", cfg))
        conv_f, conv_fb = dict(zip(BLASES, conv_f)), dict(zip(BLASES, conv_fb))
        record("conv2d forward", cfg, conv_f, peer_f, "torch conv2d",
               peak_mib(ours_conv, *cases[0]))
        record("conv2d forward+backward", cfg, conv_fb, peer_fb, "torch conv2d",
               peak_mib(ours_conv_fb, *cases[0]))
        for masked in (False, True):
            dcases = [(x, off, wt, m if masked else None)
                      for (x, wt), off, m in zip(cases, offsets, masks)]

            def ours_deform(x, off, wt, m):
                return dc.deform_conv2d(x, off, wt, padding=pad, dilation=dil, mask=m)

            def ours_deform_fb(x, off, wt, m):
                dc.deform_conv2d(x, off, wt, padding=pad, dilation=dil, mask=m)
                return dc.deform_conv2d_backward(go, x, off, wt, padding=pad, dilation=dil, mask=m)

            name = "deform_conv2d v2 (mask)" if masked else "deform_conv2d v1"
            # the dense peer timed again, beside this row
            dboth = list(zip(dcases, tcases))
            *def_f, dense_f = side_by_side(_ours_and_peer(ours_deform, torch_conv, BLASES),
                                           dboth, args.repeats, pool=("forward", cfg))
            *def_fb, dense_fb = side_by_side(
                _ours_and_peer(ours_deform_fb, torch_conv_fb, BLASES), dboth, args.repeats,
                pool=("fwd+bwd", cfg))
            def_f, def_fb = dict(zip(BLASES, def_f)), dict(zip(BLASES, def_fb))
            record(f"{name} forward", cfg, def_f, dense_f, "torch conv2d (dense floor)",
                   peak_mib(ours_deform, *dcases[0]))
            record(f"{name} fwd+bwd", cfg, def_fb, dense_fb, "torch conv2d (dense floor)",
                   peak_mib(ours_deform_fb, *dcases[0]))

    # The dense peer's times pooled over all rows of a config (conv and both
    # deformable rows): ratios against that steadier floor, beside each row's own.
    for row in rows:
        kind = "fwd+bwd" if ("backward" in row["op"] or "bwd" in row["op"]) else "forward"
        samples = PEER_SAMPLES.get((kind, row["config"]))
        if samples:
            pooled = statistics.median(samples)
            row["peer_pooled_ms"] = round(pooled, 2)
            row["ratio_pooled"] = round(row["ours_ms"] / pooled, 3)
            others = ""
            for blas in BLASES[1:] if row["lane_blas"] else ():
                row[f"ratio_{blas}_pooled"] = round(row[f"ours_{blas}_ms"] / pooled, 3)
                others += f"  {blas} {row[f'ratio_{blas}_pooled']:5.2f}x"
            print(f"{row['op']:34s} {row['config']:22s} against the pooled dense peer "
                  f"{pooled:8.2f} ms: {row['ratio_pooled']:5.2f}x{others}")

    # grid_sample at input (8, 64, 64, 64) with an affine grid of the same size.
    theta = np.stack([np.array([[np.cos(a) * z, -np.sin(a) * z, 0.1], [np.sin(a) * z, np.cos(a) * z, -0.05]])
                      for a, z in zip(rng.uniform(-0.5, 0.5, n), rng.uniform(0.8, 1.2, n))])
    theta = theta.astype(dtype)
    grid = dc.affine_grid(theta, (n, c, h, w), align_corners=False)
    gcases = [(x, grid) for x, _ in cases]
    go_gs = rng.standard_normal((n, c, h, w)).astype(dtype)
    for padding_mode in ("zeros", "border", "reflection"):
        cfg = f"{padding_mode}, bilinear"

        def ours_gs(x, g):
            return dc.grid_sample(x, g, padding_mode=padding_mode)

        def ours_gs_fb(x, g):
            dc.grid_sample(x, g, padding_mode=padding_mode)
            return dc.grid_sample_backward(go_gs, x, g, padding_mode=padding_mode)

        peer_f = peer_fb = None
        if torch is not None:
            tg = [(torch.from_numpy(x), torch.from_numpy(g)) for x, g in gcases]
            tgo = torch.from_numpy(go_gs)

            def torch_gs(x, g):
                with torch.no_grad():
                    return F.grid_sample(x, g, padding_mode=padding_mode, align_corners=False)

            def torch_gs_fb(x, g):
                x = x.detach().requires_grad_(True)
                g = g.detach().requires_grad_(True)
                F.grid_sample(x, g, padding_mode=padding_mode, align_corners=False).backward(tgo)

        else:
            tg, torch_gs, torch_gs_fb = gcases, None, None
        gboth = list(zip(gcases, tg))
        gs_f, peer_f = side_by_side(_ours_and_peer(ours_gs, torch_gs), gboth, args.repeats)
        gs_fb, peer_fb = side_by_side(_ours_and_peer(ours_gs_fb, torch_gs_fb), gboth,
                                      args.repeats)
        record("grid_sample forward", cfg, gs_f, peer_f, "torch grid_sample",
               peak_mib(ours_gs, *gcases[0]))
        record("grid_sample forward+backward", cfg, gs_fb, peer_fb, "torch grid_sample",
               peak_mib(ours_gs_fb, *gcases[0]))

    # Bounded scratch: from N=8 to N=32 the peak extra memory of a backward
    # grows by the per-image results only (input gradient, offset gradient),
    # not by the column buffers, which stay under the budget, nor by layout
    # copies (each lane copies only the images it is working on).
    scaling = []
    itemsize = np.dtype(dtype).itemsize
    per_image_mib = (c * h * w + 2 * k * k * h * w) * itemsize / 2**20
    for batch in (8, 32):
        x = rng.standard_normal((batch, c, h, w)).astype(dtype)
        wt = rng.standard_normal((o, c, k, k)).astype(dtype)
        off = rng.uniform(-2, 2, (batch, 2 * k * k, h, w)).astype(dtype)
        gout = rng.standard_normal((batch, o, h, w)).astype(dtype)
        peak = peak_mib(lambda: dc.deform_conv2d_backward(gout, x, off, wt, padding=1))
        scaling.append({"batch": batch, "backward_peak_extra_mib": round(peak, 1),
                        "per_image_results_mib": round(per_image_mib, 2),
                        "column_budget_mib": _cpu.column_budget(2) / 2**20})
        print(f"deform_conv2d_backward N={batch}: peak extra {peak:.1f} MiB")
    growth = (scaling[1]["backward_peak_extra_mib"] - scaling[0]["backward_peak_extra_mib"]) / 24
    print(f"  growth per image {growth:.2f} MiB, the results of one image "
          f"({per_image_mib:.2f} MiB); column scratch stays under "
          f"{_cpu.column_budget(2) / 2**20:.0f} MiB (a backward's two buffers)")

    # The column bytes per lane and buffer (``config.cpu_lane_column_bytes``;
    # a backward holds two buffers, twice this a lane): deform_conv2d v2
    # forward and forward+backward at several sizes, interleaved round by
    # round so that machine noise hits all alike. (Results before 2026-12-03
    # scanned ``lane_mib``, bytes a lane for all its buffers together.)
    buffer_mib = [0.5, 1, 2, 4, 8]
    scan = {(b, kind): [] for b in buffer_mib for kind in ("fwd", "fwd_bwd")}
    defaults = dc.config.column_budget_bytes, dc.config.cpu_lane_column_bytes
    x, wt = cases[0]
    off = rng.uniform(-2, 2, (n, 2 * k * k, h, w)).astype(dtype)
    m = rng.uniform(0, 1, (n, k * k, h, w)).astype(dtype)
    gout = rng.standard_normal((n, o, h, w)).astype(dtype)

    def deform_f():
        dc.deform_conv2d(x, off, wt, padding=1, mask=m)

    def deform_fb():
        deform_f()
        dc.deform_conv2d_backward(gout, x, off, wt, padding=1, mask=m)

    deform_fb()
    for rnd in range(args.repeats):
        for b in (buffer_mib if rnd % 2 == 0 else buffer_mib[::-1]):
            dc.config.cpu_lane_column_bytes = int(b * 2**20)
            dc.config.column_budget_bytes = 2 * threads * dc.config.cpu_lane_column_bytes
            for kind, fn in (("fwd", deform_f), ("fwd_bwd", deform_fb)):
                t0 = time.perf_counter()
                fn()
                scan[b, kind].append((time.perf_counter() - t0) * 1e3)
    dc.config.column_budget_bytes, dc.config.cpu_lane_column_bytes = defaults
    budget_scan = [{"buffer_mib": b,
                    "deform_v2_fwd_ms": round(statistics.median(scan[b, "fwd"]), 2),
                    "deform_v2_fwd_bwd_ms": round(statistics.median(scan[b, "fwd_bwd"]), 2)}
                   for b in buffer_mib]
    print("column bytes per lane and buffer (deform_conv2d v2, median ms fwd / fwd+bwd): "
          + ", ".join(f"{r['buffer_mib']} MiB {r['deform_v2_fwd_ms']} / {r['deform_v2_fwd_bwd_ms']}"
                      for r in budget_scan))

    result = {"machine": machine(), "threads": threads,
              "numpy": np.__version__, "numba": numba.__version__,
              "torch": None if torch is None else torch.__version__, "dtype": "float32",
              "shape": {"N": n, "C": c, "O": o, "H": h, "W": w, "k": k},
              "repeats": args.repeats, "lane_blas": BLASES,
              "column_budget_mib": defaults[0] / 2**20,
              "lane_column_mib_per_buffer": defaults[1] / 2**20, "rows": rows,
              "memory_scaling": scaling, "budget_scan": budget_scan}
    write_json(args.out, result)


if __name__ == "__main__":
    main()

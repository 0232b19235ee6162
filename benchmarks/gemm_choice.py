"""Which GEMM for the CPU convs: candidate BLAS libraries at the conv's own
shapes, on one core, side by side in one run.

The CPU convs multiply pixels-first column tiles (P x C*K) by the weight
(C*K x O) on each lane, one BLAS thread per lane. At the benchmark shape
(C = O = 64, 3x3: C*K = 576) this times, for a tile of P pixels:

* NumPy's ``matmul`` (the OpenBLAS NumPy ships), both orientations:
  ``cols @ w.T`` (P x O, what the convs do) and ``w @ cols.T`` (O x P, NCHW
  directly but a slower kernel), and the two backward products;
* SciPy's ``sgemm`` wrapper (SciPy's own OpenBLAS build), if installed;
* BLIS through the ``blis`` package (cython-blis), if installed;
* ``torch.mm`` (oneDNN/MKL-style kernels), if installed, as a reference only:
  the library does not depend on torch;
* MKL's ``cblas_sgemm`` (sequential), if the ``mkl`` wheel is installed in
  this environment (``pip install defconv_np[mkl]``, about 1 GB with its
  dependencies; ``config.cpu_blas``);
* our own GEMM (``_cpu_blas.NumbaGemm``, ``config.cpu_blas = "numba"``), the
  forward and both backward products;

and then NumPy's CBLAS, MKL's and ours on both cores at once, as the conv
lanes call them (the weight transposed and contiguous, as the convs pass it),
on column tiles kept in cache and on tiles rewritten before each call (as the
deformable sampling writes them).

Run:  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/gemm_choice.py
(the workplace's OPENBLAS_CORETYPE=Haswell selects a slower kernel than a
user's machine gets). Writes benchmarks/results/gemm_choice.json (or --out).
"""

import json
import os
import platform
import statistics
import sys
import threading
import time

import numpy as np
import threadpoolctl

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from defconv_np import _cpu_blas  # noqa: E402


def gflops(fn, flop, repeats=40):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    best = statistics.median(times)
    return round(best * 1e3, 4), round(flop / best / 1e9, 1)


def _mkl_sgemm():
    """MKL's sequential ``cblas_sgemm`` from the ``mkl`` wheel, as the library
    loads it (``_cpu_blas.mkl_gemm``), or None if not installed."""
    return _cpu_blas.mkl_gemm(np.float32)


def concurrent_rows(fns, rows_k, out_ch, repeats=60):
    """Each CBLAS ``fn`` on both cores at once, one thread each, as the conv
    lanes run it: the same (P x K) @ (K x O) GEMM per thread, on a tile kept
    in cache ("warm") and on one rewritten just before each call, as the
    deformable sampling writes its columns ("fresh", four tiles in turn)."""
    results = []
    for npix in (832, 4096):
        for fresh in (False, True):
            for name, fn in fns.items():
                rates = []

                def lane(seed):
                    local = np.random.default_rng(seed)  # a Generator per thread
                    tiles = [local.standard_normal((npix, rows_k)).astype(np.float32)
                             for _ in range(4 if fresh else 1)]
                    w_t = local.standard_normal((rows_k, out_ch)).astype(np.float32)
                    c = np.empty((npix, out_ch), np.float32)
                    spent = 0.0
                    for r in range(repeats + 1):
                        a = tiles[r % len(tiles)]
                        if fresh:
                            a += 0  # rewritten: its lines dirty, as after a fill
                        t0 = time.perf_counter()
                        fn(101, 111, 111, npix, out_ch, rows_k, 1.0, a.ctypes.data, rows_k,
                           w_t.ctypes.data, out_ch, 0.0, c.ctypes.data, out_ch)
                        if r:
                            spent += time.perf_counter() - t0
                    rates.append(2 * npix * rows_k * out_ch * repeats / spent / 1e9)

                threads = [threading.Thread(target=lane, args=(seed,)) for seed in range(2)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                row = {"pixels": npix, "gemm": f"{name} cols @ w_t, two cores at once, "
                       + ("fresh columns" if fresh else "warm columns"),
                       "gflops_per_core": round(min(rates), 1)}
                results.append(row)
                print(f"P={npix:5d} {row['gemm']:62s} {row['gflops_per_core']:7.1f} "
                      "GFLOP/s per core", flush=True)
    return results


def main():
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "gemm_choice.json"))
    args = parser.parse_args()
    limits = threadpoolctl.threadpool_limits(1)
    rng = np.random.default_rng(0)
    rows_k, out_ch = 576, 64
    w = rng.standard_normal((out_ch, rows_k)).astype(np.float32)
    results = []
    optional = {}
    try:
        import scipy.linalg.blas as scipy_blas
        optional["scipy"] = scipy_blas
    except ImportError:
        pass
    try:
        import blis.py as blis_py
        optional["blis"] = blis_py
    except ImportError:
        pass
    try:
        import torch
        torch.set_num_threads(1)
        optional["torch"] = torch
    except ImportError:
        pass
    mkl_sgemm = _mkl_sgemm()
    for npix in (896, 1792, 4096):
        cols = rng.standard_normal((npix, rows_k)).astype(np.float32)
        go = rng.standard_normal((out_ch, npix)).astype(np.float32)
        flop = 2 * npix * rows_k * out_ch
        rows = {
            "numpy cols @ w.T (forward, pixels-first)": lambda: np.matmul(cols, w.T),
            "numpy w @ cols.T (forward, NCHW out)": lambda: np.matmul(w, cols.T),
            "numpy go.T @ w (column gradient)": lambda: np.matmul(go.T, w),
            "numpy go @ cols (weight gradient)": lambda: np.matmul(go, cols),
        }
        if "scipy" in optional:
            rows["scipy sgemm cols @ w.T"] = lambda: optional["scipy"].sgemm(
                1.0, cols, w, trans_b=True)
        if "blis" in optional:
            out = np.empty((npix, out_ch), np.float32)
            w_t = np.ascontiguousarray(w.T)
            rows["blis gemm cols @ w.T"] = lambda: optional["blis"].gemm(
                cols, w_t, out=out, beta=0.0)
        if "torch" in optional:
            tc, tw = optional["torch"].from_numpy(cols), optional["torch"].from_numpy(w)
            rows["torch.mm cols @ w.T (reference)"] = lambda: tc @ tw.T
        w_t = np.ascontiguousarray(w.T)
        rows["numpy cols @ w_t (contiguous, as the convs pass it)"] = lambda: np.matmul(cols, w_t)
        ours = _cpu_blas.numba_gemm(np.float32)
        if ours is not None:
            c_ours = np.empty((npix, out_ch), np.float32)
            gc_ours = np.empty((npix, rows_k), np.float32)
            gw_ours = np.empty((out_ch, rows_k), np.float32)
            rows["ours cols @ w_t (forward)"] = lambda: ours(
                101, 111, 111, npix, out_ch, rows_k, 1.0, cols.ctypes.data, rows_k,
                w_t.ctypes.data, out_ch, 0.0, c_ours.ctypes.data, out_ch)
            rows["ours go.T @ w (column gradient)"] = lambda: ours(
                101, 112, 111, npix, rows_k, out_ch, 1.0, go.ctypes.data, npix,
                w.ctypes.data, rows_k, 0.0, gc_ours.ctypes.data, rows_k)
            rows["ours go @ cols (weight gradient)"] = lambda: ours(
                101, 111, 111, out_ch, rows_k, npix, 1.0, go.ctypes.data, npix,
                cols.ctypes.data, rows_k, 0.0, gw_ours.ctypes.data, rows_k)
        if mkl_sgemm is not None:
            out_mkl = np.empty((npix, out_ch), np.float32)
            rows["mkl cblas_sgemm cols @ w.T (sequential)"] = lambda: mkl_sgemm(
                101, 111, 112, npix, out_ch, rows_k, 1.0, cols.ctypes.data, rows_k,
                w.ctypes.data, rows_k, 0.0, out_mkl.ctypes.data, out_ch)
        for name, fn in rows.items():
            ms, rate = gflops(fn, flop)
            results.append({"pixels": npix, "gemm": name, "ms": ms, "gflops": rate})
            print(f"P={npix:5d} {name:44s} {ms:8.3f} ms {rate:7.1f} GFLOP/s", flush=True)
    lane_fns = {"numpy's cblas_sgemm": _cpu_blas.gemm(np.float32)}
    if mkl_sgemm is not None:
        lane_fns["mkl cblas_sgemm (sequential)"] = mkl_sgemm
    lane_fns["ours (NumbaGemm)"] = _cpu_blas.numba_gemm(np.float32)
    results += concurrent_rows({k: v for k, v in lane_fns.items() if v is not None},
                               rows_k, out_ch)
    blas = [{k: lib.get(k) for k in ("internal_api", "version", "architecture", "filepath")}
            for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    limits.restore_original_limits()
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    print("BLAS:", blas)
    print("environment:", env)
    out = args.out
    with open(out, "w") as f:
        json.dump({"machine": platform.machine(), "cpu": _cpu_name(), "threads": 1,
                   "dtype": "float32", "K": rows_k, "O": out_ch, "blas": blas,
                   "environment": env, "rows": results}, f, indent=1)
    print(f"wrote {out}")


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()

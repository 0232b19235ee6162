"""Where the GPU time of one call goes: the kernels each op launches (CUPTI,
through torch.profiler, which sees CuPy's and Numba's launches too) and the
host time to enqueue a call against its wall time to completion.

A call whose enqueue time is close to its wall time is bound by the host
(Python and launch overhead), not by its kernels.

Run:  PYTHONPATH=$PWD python3 benchmarks/gpu_profile.py [--rows 12]
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def cases(cp, dc):
    rng = cp.random.default_rng(0)

    def randn(*shape):
        return rng.standard_normal(shape, dtype=cp.float32)

    def deform(n, c, o, h, w, og):
        x, wt = randn(n, c, h, w), randn(o, c, 3, 3) / (3 * c**0.5)
        off = rng.uniform(-2, 2, (n, 2 * og * 9, h, w), dtype=cp.float32)
        mask = rng.uniform(0, 1, (n, og * 9, h, w), dtype=cp.float32)
        go = randn(n, o, h, w)
        shape = f"{n}x{c}x{h}x{w} O{o} og{og} mask"
        yield f"deform_conv2d fwd {shape}", lambda: dc.deform_conv2d(x, off, wt, padding=1,
                                                                     mask=mask)
        yield f"deform_conv2d bwd {shape}", lambda: dc.deform_conv2d_backward(
            go, x, off, wt, padding=1, mask=mask, needs=("input", "offset", "mask", "weight"))

    yield from deform(16, 256, 256, 64, 64, 1)
    yield from deform(2, 512, 512, 32, 32, 4)
    x = randn(16, 64, 128, 128)
    theta = cp.asarray([[[0.9, -0.2, 0.05], [0.2, 0.9, -0.05]]] * 16, dtype=cp.float32)
    grid = dc.affine_grid(theta, x.shape)
    go = randn(16, 64, 128, 128)
    yield "grid_sample fwd 16x64x128x128 zeros", lambda: dc.grid_sample(x, grid)
    yield "grid_sample bwd 16x64x128x128 zeros", lambda: dc.grid_sample_backward(go, x, grid)
    xc, wc = randn(16, 256, 64, 64), randn(256, 256, 3, 3) / 48
    yield "conv2d fwd 16x256x64x64 dil2", lambda: dc.conv2d(xc, wc, padding=2, dilation=2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args(argv)
    import cupy as cp
    import torch
    from torch.profiler import ProfilerActivity, profile

    import defconv_np as dc

    for name, fn in cases(cp, dc):
        for _ in range(2):
            fn()
        cp.cuda.Device().synchronize()
        enqueue, wall = [], []
        for _ in range(7):
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
            cp.cuda.Device().synchronize()
            t2 = time.perf_counter()
            enqueue.append(1e3 * (t1 - t0))
            wall.append(1e3 * (t2 - t0))
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            cp.cuda.Device().synchronize()
        events = prof.key_averages()
        device_us = sum(getattr(e, "self_device_time_total", 0) or 0 for e in events)
        print(f"\n### {name}: host enqueue {statistics.median(enqueue):.3f} ms, wall "
              f"{statistics.median(wall):.3f} ms, kernels {device_us / 1e3:.3f} ms (median of 7; "
              f"kernels from one profiled call)")
        try:
            table = events.table(sort_by="self_device_time_total", row_limit=args.rows,
                                  max_name_column_width=60)
        except Exception:  # noqa: BLE001 - older torch names the column after CUDA
            table = events.table(sort_by="self_cuda_time_total", row_limit=args.rows,
                                 max_name_column_width=60)
        print(table, flush=True)
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()

"""GPU benchmark: defconv_np on CuPy arrays against torchvision / torch on the same device.

Run:  PYTHONPATH=$PWD python benchmarks/gpu_bench.py [--quick]
          [--out benchmarks/results/gpu_h200.json]

First measures the device's own floors: device-to-device copy bandwidth (1 GiB,
read + write counted) and the float32 GEMM rate (8192x8192, TF32 off in CuPy and
torch). Then times, with CUDA events after a warm-up, the median of --repeats
runs on rotating preallocated inputs, forward and forward+backward of ours and
the peer in the same run: deform_conv2d (v1 and v2) against
torchvision.ops.deform_conv2d, grid_sample against
torch.nn.functional.grid_sample (when defconv_np has it), and a dilated conv2d
against torch.nn.functional.conv2d (cuDNN). Both sides read the same memory
(CuPy views of the torch tensors through DLPack). Peak extra device memory of
each call is measured from the CuPy memory pool (ours) and torch's caching
allocator statistics (peer). Results go to --out as JSON, with a PNG bar chart
of the ratios next to it when matplotlib is available.
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback

import numpy as np

# DEFCONV_BENCH_ROOT: the folder holding the defconv_np to time (another
# version side by side in the same session); default this checkout
sys.path.insert(0, os.environ.get("DEFCONV_BENCH_ROOT") or os.path.join(os.path.dirname(__file__), ".."))

F32 = 4  # bytes per float32 value
COPY_BYTES = 2**30  # device copy bandwidth buffer
GEMM_SIZE = 8192  # float32 GEMM rate: GEMM_SIZE^3 matmul
DEVICE = "cuda"

# (N, C, O, H, W, k, padding, offset groups)
DEFORM_SHAPES = [
    (16, 256, 256, 64, 64, 3, 1, 1),
    (64, 64, 64, 56, 56, 3, 1, 1),
    (2, 512, 512, 32, 32, 3, 1, 4),
]
# (N, C, H, W); the grid has the input's spatial size
GRID_SHAPES = [(16, 64, 128, 128), (64, 256, 32, 32)]
GRID_PADDING_MODES = ("zeros", "border")
# (N, C, O, H, W, k, padding, dilation): the first deform shape, dilated
CONV_SHAPES = [(16, 256, 256, 64, 64, 3, 2, 2)]
# (N, heads M, head dim D, levels (H, W), points P): Deformable DETR's encoder
ATTENTION_SHAPES = [(2, 8, 32, ((64, 64), (32, 32), (16, 16), (8, 8)), 4)]

DEFORM_NEEDS = ("input", "offset", "mask", "weight")
PASSES = ("forward", "forward+backward")


# --------------------------------------------------------------------------------------
# Pure helpers (no GPU): arithmetic, traffic, table, JSON, chart.


def numel(shape):
    return math.prod(shape)


def conv_out_hw(h, w, k, padding, dilation, stride=1):
    ho = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    return ho, wo


def conv_gemm_flop(n, c, o, ho, wo, kh, kw, groups=1):
    """Floating-point operations of one im2col GEMM of a conv: 2*N*O*Ho*Wo*(C/groups)*kh*kw."""
    return 2 * n * o * ho * wo * (c // groups) * kh * kw


def conv_flop(n, c, o, ho, wo, kh, kw, groups, pass_name):
    """One GEMM forward; three (forward, input columns, weight) forward+backward."""
    gemms = 1 if pass_name == "forward" else 3
    return gemms * conv_gemm_flop(n, c, o, ho, wo, kh, kw, groups)


def min_bytes(reads, writes, itemsize=F32):
    """Fewest bytes a call must move: each input read once, each output written once."""
    return itemsize * (sum(numel(s) for s in reads) + sum(numel(s) for s in writes))


def pass_bytes(inputs, outputs, grad_inputs, pass_name, itemsize=F32):
    """Minimum traffic of a forward, or of a forward plus its backward.

    ``inputs`` are the forward's operands (shapes), ``outputs`` its results and
    ``grad_inputs`` the gradients the backward writes. The backward reads the
    grad_output (shaped like the outputs) and the inputs again.
    """
    fwd = min_bytes(inputs, outputs, itemsize)
    if pass_name == "forward":
        return fwd
    return fwd + min_bytes(list(outputs) + list(inputs), grad_inputs, itemsize)


def rate(amount, ms):
    """``amount`` per second in units of 1e9 (GFLOP/s from FLOP, GB/s from bytes)."""
    if amount is None or ms is None or ms <= 0:
        return None
    return amount / (ms * 1e-3) / 1e9


def ratio(ours_ms, peer_ms):
    """ours / peer: below 1 means ours is faster."""
    if ours_ms is None or peer_ms is None or peer_ms <= 0:
        return None
    return ours_ms / peer_ms


def _round(value, digits):
    return None if value is None else round(float(value), digits)


def make_row(op, shape, config, pass_name, peer, ours_ms=None, peer_ms=None, flop=None,
             nbytes=None, ours_peak_mib=None, peer_peak_mib=None, peaks=None, **extra):
    """One result row; rates and ratios derived from the timings (None where unknown)."""
    peaks = peaks or {}
    ours_gflops, peer_gflops = rate(flop, ours_ms), rate(flop, peer_ms)
    ours_gbs, peer_gbs = rate(nbytes, ours_ms), rate(nbytes, peer_ms)
    gemm_peak = peaks.get("gemm_tflops")
    copy_peak = peaks.get("copy_gbs")
    row = {
        "op": op, "shape": shape, "config": config, "pass": pass_name, "peer": peer,
        "ours_ms": _round(ours_ms, 4), "peer_ms": _round(peer_ms, 4),
        "ratio": _round(ratio(ours_ms, peer_ms), 3),
        "gflop": _round(None if flop is None else flop / 1e9, 3),
        "min_mbytes": _round(None if nbytes is None else nbytes / 1e6, 2),
        "ours_gflops": _round(ours_gflops, 1), "peer_gflops": _round(peer_gflops, 1),
        "ours_gbs": _round(ours_gbs, 1), "peer_gbs": _round(peer_gbs, 1),
        "ours_pct_gemm_peak": (None if ours_gflops is None or not gemm_peak
                               else round(100 * ours_gflops / (gemm_peak * 1e3), 1)),
        "ours_pct_copy_peak": (None if ours_gbs is None or not copy_peak
                               else round(100 * ours_gbs / copy_peak, 1)),
        "ours_peak_mib": _round(ours_peak_mib, 1), "peer_peak_mib": _round(peer_peak_mib, 1),
    }
    row.update(extra)
    return row


TABLE_COLUMNS = (
    # header, width, row -> text
    ("op", 26, lambda r: f"{r['op']} {'fwd' if r['pass'] == 'forward' else 'fwd+bwd'}"),
    ("shape", 24, lambda r: r["shape"]),
    ("config", 18, lambda r: r["config"]),
    ("ours ms", 9, lambda r: _fmt(r["ours_ms"], ".3f")),
    ("peer ms", 9, lambda r: _fmt(r["peer_ms"], ".3f")),
    ("ratio", 7, lambda r: _fmt(r["ratio"], ".2f")),
    ("GFLOP/s", 8, lambda r: _fmt(r["ours_gflops"], ".0f")),
    ("GB/s", 7, lambda r: _fmt(r["ours_gbs"], ".0f")),
    ("ours MiB", 9, lambda r: _fmt(r["ours_peak_mib"], ".1f")),
    ("peer MiB", 9, lambda r: _fmt(r["peer_peak_mib"], ".1f")),
)


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def table_header():
    return " ".join(f"{h:<{w}s}" if i < 3 else f"{h:>{w}s}"
                    for i, (h, w, _) in enumerate(TABLE_COLUMNS))


def table_line(row):
    cells = []
    for i, (_, w, get) in enumerate(TABLE_COLUMNS):
        text = str(get(row))
        cells.append(f"{text:<{w}s}" if i < 3 else f"{text:>{w}s}")
    line = " ".join(cells)
    errors = [f"{k}: {row[k]}" for k in ("ours_error", "peer_error", "error") if row.get(k)]
    if errors:
        line += "  ! " + " | ".join(e.splitlines()[0][:160] for e in errors)
    return line


def format_table(rows):
    return "\n".join([table_header()] + [table_line(r) for r in rows])


def write_json(path, result):
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def chart_path(json_path):
    return os.path.splitext(json_path)[0] + ".png"


def write_chart(path, rows, title):
    """Horizontal bars of ours/peer per row (log scale, 1 = parity). Returns the
    path written, or None (with a printed note) without matplotlib or ratios."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # noqa: BLE001 - any import problem just skips the chart
        print(f"note: no chart ({type(exc).__name__}: {exc}); matplotlib is not importable")
        return None
    plotted = [r for r in rows if r.get("ratio")]
    if not plotted:
        print("note: no chart (no row has a ratio)")
        return None
    labels = [f"{r['op']} {'fwd' if r['pass'] == 'forward' else 'fwd+bwd'} | {r['shape']} | "
              f"{r['config']}" for r in plotted]
    values = [r["ratio"] for r in plotted]
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(plotted) + 1.6))
    ypos = list(range(len(plotted)))[::-1]
    colors = ["tab:green" if v < 1 else "tab:red" for v in values]
    ax.barh(ypos, values, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_yticks(ypos)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("time ours / peer (log scale; < 1: ours faster)")
    ax.set_title(title, fontsize=9)
    for y, v in zip(ypos, values):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def git_revision():
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=10,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


def error_text(exc):
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------------
# Timing and memory (GPU).


class Deadline:
    """Time caps: each measurement stops adding runs after ``per_measure_s`` (at
    least ``min_runs`` runs); once the whole run passes ``total_s``, every
    later measurement does only ``min_runs``."""

    def __init__(self, per_measure_s, total_s, min_runs=3):
        self.start = time.perf_counter()
        self.per_measure_s = per_measure_s
        self.total_s = total_s
        self.min_runs = min_runs

    def cap(self):
        if time.perf_counter() - self.start > self.total_s:
            return 0.0
        return self.per_measure_s


class CupyTimer:
    """CUDA events on CuPy's current stream (where defconv_np launches)."""

    def __init__(self, cp):
        self.cp = cp

    def events(self):
        return self.cp.cuda.Event(), self.cp.cuda.Event()

    def elapsed_ms(self, start, end):
        end.synchronize()
        return self.cp.cuda.get_elapsed_time(start, end)

    def sync(self):
        self.cp.cuda.Device().synchronize()


class TorchTimer:
    """CUDA events on torch's current stream."""

    def __init__(self, torch):
        self.torch = torch

    def events(self):
        e = self.torch.cuda.Event
        return e(enable_timing=True), e(enable_timing=True)

    def elapsed_ms(self, start, end):
        end.synchronize()
        return start.elapsed_time(end)

    def sync(self):
        self.torch.cuda.synchronize()


def median_ms(fn, inputs, timer, repeats, deadline, warmup=2):
    """Median event time of ``fn(*inputs[r % len(inputs)])`` over up to ``repeats``
    runs after ``warmup`` calls (the first compiles our kernels / tunes cuDNN)."""
    for i in range(warmup):
        fn(*inputs[i % len(inputs)])
    timer.sync()
    cap = deadline.cap()
    times = []
    t0 = time.perf_counter()
    for r in range(repeats):
        start, end = timer.events()
        start.record()
        fn(*inputs[r % len(inputs)])
        end.record()
        times.append(timer.elapsed_ms(start, end))
        if len(times) >= deadline.min_runs and time.perf_counter() - t0 > cap:
            break
    return statistics.median(times), len(times)


def peak_extra_mib_cupy(cp, fn, args):
    """Peak bytes held in CuPy's default pool during ``fn(*args)``, above what was
    held before: an allocator hook records ``used_bytes`` after every malloc."""
    pool = cp.get_default_memory_pool()
    cp.cuda.Device().synchronize()
    base = pool.used_bytes()
    peak = [base]

    def tracking_malloc(size):
        mem = pool.malloc(size)
        used = pool.used_bytes()
        if used > peak[0]:
            peak[0] = used
        return mem

    cp.cuda.set_allocator(tracking_malloc)
    try:
        fn(*args)
        cp.cuda.Device().synchronize()
    finally:
        cp.cuda.set_allocator(pool.malloc)
    return (peak[0] - base) / 2**20


def peak_extra_mib_torch(torch, fn, args):
    """torch.cuda.max_memory_allocated during ``fn(*args)`` minus the memory
    allocated before it (cuDNN workspaces and saved tensors included)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn(*args)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def rel_err(cp, ours, peer):
    """max |ours - peer| / max |peer| (CuPy arrays), as a Python float."""
    if ours is None or peer is None:
        return None
    scale = float(cp.abs(peer).max()) if peer.size else 0.0
    diff = float(cp.abs(ours - peer).max()) if peer.size else 0.0
    return diff / scale if scale > 0 else diff


# --------------------------------------------------------------------------------------
# The benchmark.


class Bench:
    def __init__(self, args, cp, torch, dc):
        self.args = args
        self.cp, self.torch, self.dc = cp, torch, dc
        import torch.nn.functional as F
        self.F = F
        self.ours_timer, self.peer_timer = CupyTimer(cp), TorchTimer(torch)
        self.deadline = Deadline(args.measure_cap_s, args.total_s)
        self.device = torch.device(DEVICE)
        self.rows = []
        self.peaks = {}
        self.seed = 0

    # ---- data, shared through DLPack

    def to_cupy(self, tensor):
        if tensor is None:
            return None
        cp = self.cp
        if hasattr(cp, "from_dlpack"):
            return cp.from_dlpack(tensor)
        from torch.utils import dlpack
        return cp.fromDlpack(dlpack.to_dlpack(tensor))  # CuPy < 10

    def generator(self):
        self.seed += 1
        g = self.torch.Generator(device=self.device)
        g.manual_seed(self.seed)
        return g

    def randn(self, g, shape, scale=1.0):
        return self.torch.randn(shape, device=self.device, generator=g) * scale

    def uniform(self, g, lo, hi, shape):
        return self.torch.rand(shape, device=self.device, generator=g) * (hi - lo) + lo

    # ---- device floors

    def device_peaks(self):
        cp, torch = self.cp, self.torch
        repeats = max(3, min(self.args.repeats, 10))
        nbytes = COPY_BYTES
        src = cp.ones(nbytes // F32, cp.float32)
        dst = cp.empty_like(src)
        ms_memcpy, _ = median_ms(lambda: dst.data.copy_from_device_async(src.data, nbytes), [()],
                                 self.ours_timer, repeats, self.deadline)
        ms_kernel, _ = median_ms(lambda: cp.copyto(dst, src), [()], self.ours_timer, repeats,
                                 self.deadline)
        del src, dst
        size = GEMM_SIZE
        g = cp.random.RandomState(0)
        a = g.standard_normal((size, size), dtype=cp.float32)
        b = g.standard_normal((size, size), dtype=cp.float32)
        ms_gemm, _ = median_ms(lambda: cp.matmul(a, b), [()], self.ours_timer, repeats,
                               self.deadline)
        tg = self.generator()
        ta, tb = self.randn(tg, (size, size)), self.randn(tg, (size, size))
        ms_torch_gemm, _ = median_ms(lambda: torch.matmul(ta, tb), [()], self.peer_timer,
                                     repeats, self.deadline)
        del a, b, ta, tb
        self.cleanup()
        flop = 2 * size**3
        self.peaks = {
            "copy_gbs_memcpy": round(2 * nbytes / (ms_memcpy * 1e-3) / 1e9, 1),
            "copy_gbs_kernel": round(2 * nbytes / (ms_kernel * 1e-3) / 1e9, 1),
            "gemm_tflops": round(flop / (ms_gemm * 1e-3) / 1e12, 2),
            "torch_gemm_tflops": round(flop / (ms_torch_gemm * 1e-3) / 1e12, 2),
        }
        self.peaks["copy_gbs"] = max(self.peaks["copy_gbs_memcpy"], self.peaks["copy_gbs_kernel"])
        print(f"device copy ({nbytes / 2**30:g} GiB, read+write): "
              f"{self.peaks['copy_gbs_memcpy']:.0f} GB/s memcpy, "
              f"{self.peaks['copy_gbs_kernel']:.0f} GB/s copy kernel", flush=True)
        print(f"float32 GEMM {size}^3: {self.peaks['gemm_tflops']:.2f} TFLOP/s cupy.matmul, "
              f"{self.peaks['torch_gemm_tflops']:.2f} TFLOP/s torch.matmul (TF32 off)", flush=True)

    def cleanup(self):
        self.cp.cuda.Device().synchronize()
        self.cp.get_default_memory_pool().free_all_blocks()
        self.torch.cuda.synchronize()
        self.torch.cuda.empty_cache()

    # ---- one (op, shape, config): both passes, both sides

    def run_case(self, op, shape, config, peer_name, flops, nbytes, ours, peer, ours_inputs,
                 peer_inputs, check=None):
        """``ours``/``peer``: {pass: fn}; ``*_inputs``: {pass: [arg tuples]} (rotated);
        ``flops``/``nbytes``: {pass: number}; ``check()`` -> dict of relative errors."""
        errors = {}
        if check is not None:
            try:
                errors = check()
            except Exception as exc:  # noqa: BLE001
                errors = {"error": error_text(exc)}
        for pass_name in PASSES:
            res = {}
            for side, fns, inputs, timer in (("ours", ours, ours_inputs, self.ours_timer),
                                             ("peer", peer, peer_inputs, self.peer_timer)):
                try:
                    ms, runs = median_ms(fns[pass_name], inputs[pass_name], timer,
                                         self.args.repeats, self.deadline)
                    res[f"{side}_ms"], res[f"{side}_runs"] = ms, runs
                    if side == "ours":
                        res["ours_peak_mib"] = peak_extra_mib_cupy(self.cp, fns[pass_name],
                                                                   inputs[pass_name][0])
                    else:
                        res["peer_peak_mib"] = peak_extra_mib_torch(self.torch, fns[pass_name],
                                                                    inputs[pass_name][0])
                except Exception as exc:  # noqa: BLE001
                    res[f"{side}_error"] = error_text(exc)
                    traceback.print_exc()
                    try:
                        self.cp.cuda.set_allocator(self.cp.get_default_memory_pool().malloc)
                    except Exception:  # noqa: BLE001
                        pass
            row = make_row(op, shape, config, pass_name, peer_name,
                           flop=flops.get(pass_name), nbytes=nbytes.get(pass_name),
                           peaks=self.peaks, check_rel_err=errors or None, **res)
            self.rows.append(row)
            print(table_line(row), flush=True)

    def guarded(self, op, shape, config, peer_name, build):
        """Run ``build()`` (which sets up the data and calls run_case); a failure in
        the setup is printed and recorded as rows carrying the error."""
        try:
            build()
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            for pass_name in PASSES:
                if any(r["op"] == op and r["shape"] == shape and r["config"] == config
                       and r["pass"] == pass_name for r in self.rows):
                    continue
                row = make_row(op, shape, config, pass_name, peer_name, error=error_text(exc))
                self.rows.append(row)
                print(table_line(row), flush=True)
        finally:
            try:
                self.cleanup()
            except Exception:  # noqa: BLE001
                traceback.print_exc()

    # ---- deform_conv2d

    def deform(self, spec, masked):
        n, c, o, h, w, k, pad, og = spec
        op = "deform_conv2d v2" if masked else "deform_conv2d v1"
        shape = f"{n}x{c}x{h}x{w} O{o} k{k}"
        config = f"pad{pad} og{og}" + (" mask" if masked else "")
        peer_name = "torchvision.ops.deform_conv2d"
        self.guarded(op, shape, config, peer_name,
                     lambda: self._deform(op, shape, config, peer_name, spec, masked))

    def _deform(self, op, shape, config, peer_name, spec, masked):
        torch, dc, cp = self.torch, self.dc, self.cp
        from torchvision.ops import deform_conv2d as tv_deform
        n, c, o, h, w, k, pad, og = spec
        ho, wo = conv_out_hw(h, w, k, pad, 1)
        g = self.generator()
        sets = []
        for _ in range(self.args.rotations):
            x = self.randn(g, (n, c, h, w))
            off = self.uniform(g, -2.0, 2.0, (n, 2 * og * k * k, ho, wo))
            wt = self.randn(g, (o, c, k, k), 1.0 / math.sqrt(c * k * k))
            m = self.uniform(g, 0.0, 1.0, (n, og * k * k, ho, wo)) if masked else None
            sets.append((x, off, wt, m))
        tgo = self.randn(g, (n, o, ho, wo))
        cgo = self.to_cupy(tgo)
        csets = [tuple(self.to_cupy(t) for t in s) for s in sets]
        # leaves for autograd sharing the same storage
        gsets = [tuple(None if t is None else t.detach().requires_grad_(True) for t in s)
                 for s in sets]
        padding = (pad, pad)

        def ours_fwd(x, off, wt, m):
            return dc.deform_conv2d(x, off, wt, padding=pad, mask=m)

        def ours_fb(x, off, wt, m):
            dc.deform_conv2d(x, off, wt, padding=pad, mask=m)
            return dc.deform_conv2d_backward(cgo, x, off, wt, padding=pad, mask=m,
                                             needs=DEFORM_NEEDS)

        def peer_fwd(x, off, wt, m):
            with torch.no_grad():
                return tv_deform(x, off, wt, padding=padding, mask=m)

        def peer_fb(x, off, wt, m):
            out = tv_deform(x, off, wt, padding=padding, mask=m)
            leaves = (x, off, wt) if m is None else (x, off, wt, m)
            return torch.autograd.grad(out, leaves, tgo)

        def check():
            peer_out = self.to_cupy(peer_fwd(*sets[0]))
            errs = {"output": rel_err(cp, ours_fwd(*csets[0]), peer_out)}
            ours_g = ours_fb(*csets[0])
            peer_g = peer_fb(*gsets[0])
            names = ("input", "offset", "weight") + (("mask",) if masked else ())
            for name, pg in zip(names, peer_g):
                errs[f"grad_{name}"] = rel_err(cp, getattr(ours_g, name), self.to_cupy(pg))
            return {key: _round(v, 8) for key, v in errs.items()}

        ins = [(n, c, h, w), (n, 2 * og * k * k, ho, wo), (o, c, k, k)]
        if masked:
            ins.append((n, og * k * k, ho, wo))
        outs = [(n, o, ho, wo)]
        flops = {p: conv_flop(n, c, o, ho, wo, k, k, 1, p) for p in PASSES}
        nbytes = {p: pass_bytes(ins, outs, ins, p) for p in PASSES}
        self.run_case(op, shape, config, peer_name, flops, nbytes,
                      {"forward": ours_fwd, "forward+backward": ours_fb},
                      {"forward": peer_fwd, "forward+backward": peer_fb},
                      {"forward": csets, "forward+backward": csets},
                      {"forward": sets, "forward+backward": gsets}, check)

    # ---- grid_sample

    def grid(self, spec, padding_mode):
        n, c, h, w = spec
        op = "grid_sample"
        shape = f"{n}x{c}x{h}x{w}"
        config = f"bilinear {padding_mode}"
        peer_name = "torch.nn.functional.grid_sample"
        self.guarded(op, shape, config, peer_name,
                     lambda: self._grid(op, shape, config, peer_name, spec, padding_mode))

    def _grid(self, op, shape, config, peer_name, spec, padding_mode):
        torch, dc, cp, F = self.torch, self.dc, self.cp, self.F
        n, c, h, w = spec
        g = self.generator()
        sets = []
        for _ in range(self.args.rotations):
            x = self.randn(g, (n, c, h, w))
            angle = self.uniform(g, -0.25, 0.25, (n,))
            scale = self.uniform(g, 0.85, 1.15, (n,))
            shift = self.uniform(g, -0.1, 0.1, (n, 2))
            cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
            theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], dim=-1),
                                 torch.stack([sin, cos, shift[:, 1]], dim=-1)], dim=1)
            grid = F.affine_grid(theta, (n, c, h, w), align_corners=False).contiguous()
            sets.append((x, grid))
        tgo = self.randn(g, (n, c, h, w))
        cgo = self.to_cupy(tgo)
        csets = [tuple(self.to_cupy(t) for t in s) for s in sets]
        gsets = [tuple(t.detach().requires_grad_(True) for t in s) for s in sets]

        def ours_fwd(x, grid):
            return dc.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode,
                                  align_corners=False)

        def ours_fb(x, grid):
            ours_fwd(x, grid)
            return dc.grid_sample_backward(cgo, x, grid, "bilinear", padding_mode, False,
                                           needs=("input", "grid"))

        def peer_fwd(x, grid):
            with torch.no_grad():
                return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode,
                                     align_corners=False)

        def peer_fb(x, grid):
            out = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode,
                                align_corners=False)
            return torch.autograd.grad(out, (x, grid), tgo)

        def check():
            peer_out = self.to_cupy(peer_fwd(*sets[0]))
            errs = {"output": rel_err(cp, ours_fwd(*csets[0]), peer_out)}
            ours_g = ours_fb(*csets[0])
            peer_g = peer_fb(*gsets[0])
            for name, pg in zip(("input", "grid"), peer_g):
                errs[f"grad_{name}"] = rel_err(cp, getattr(ours_g, name), self.to_cupy(pg))
            return {key: _round(v, 8) for key, v in errs.items()}

        ins = [(n, c, h, w), (n, h, w, 2)]
        outs = [(n, c, h, w)]
        nbytes = {p: pass_bytes(ins, outs, ins, p) for p in PASSES}
        self.run_case(op, shape, config, peer_name, {}, nbytes,
                      {"forward": ours_fwd, "forward+backward": ours_fb},
                      {"forward": peer_fwd, "forward+backward": peer_fb},
                      {"forward": csets, "forward+backward": csets},
                      {"forward": sets, "forward+backward": gsets}, check)

    # ---- conv2d

    def attention(self, spec):
        n, heads, dim, shapes, points = spec
        op = "ms_deform_attn"
        shape = f"N{n} M{heads} D{dim} L{len(shapes)} P{points}"
        config = "levels " + ",".join(f"{h}x{w}" for h, w in shapes)
        peer_name = "ms_deform_attn_core_pytorch (grid_sample per level)"
        self.guarded(op, shape, config, peer_name,
                     lambda: self._attention(op, shape, config, peer_name, spec))

    def _attention(self, op, shape, config, peer_name, spec):
        torch, dc, cp, F = self.torch, self.dc, self.cp, self.F
        n, heads, dim, shapes, points = spec
        levels = len(shapes)
        total = sum(h * w for h, w in shapes)
        queries = total  # the encoder: every pixel queries
        shapes_np = np.array(shapes, np.int64)
        starts_np = np.concatenate([[0], np.cumsum(shapes_np.prod(1))[:-1]]).astype(np.int64)
        shapes_cp, starts_cp = cp.asarray(shapes_np), cp.asarray(starts_np)
        g = self.generator()
        sets = []
        for _ in range(self.args.rotations):
            value = self.randn(g, (n, total, heads, dim))
            loc = self.uniform(g, 0.0, 1.0, (n, queries, heads, levels, points, 2))
            weights = torch.softmax(self.randn(g, (n, queries, heads, levels * points)), -1)
            sets.append((value, loc, weights.view(n, queries, heads, levels, points)))
        tgo = self.randn(g, (n, queries, heads * dim))
        cgo = self.to_cupy(tgo)
        csets = [tuple(self.to_cupy(t) for t in s) for s in sets]
        gsets = [tuple(t.detach().requires_grad_(True) for t in s) for s in sets]

        def ours_fwd(value, loc, weights):
            return dc.ms_deform_attn(value, shapes_cp, starts_cp, loc, weights)

        def ours_fb(value, loc, weights):
            ours_fwd(value, loc, weights)
            return dc.ms_deform_attn_backward(cgo, value, shapes_cp, starts_cp, loc, weights)

        def peer_fwd(value, loc, weights):
            with torch.no_grad():
                return torch_ms_deform_attn(torch, F, value, shapes, loc, weights)

        def peer_fb(value, loc, weights):
            out = torch_ms_deform_attn(torch, F, value, shapes, loc, weights)
            return torch.autograd.grad(out, (value, loc, weights), tgo)

        def check():
            errs = {"output": rel_err(cp, ours_fwd(*csets[0]), self.to_cupy(peer_fwd(*sets[0])))}
            ours_g = ours_fb(*csets[0])
            for name, pg in zip(("value", "sampling_locations", "attention_weights"),
                                peer_fb(*gsets[0])):
                errs[f"grad_{name}"] = rel_err(cp, getattr(ours_g, name), self.to_cupy(pg))
            return {key: _round(v, 8) for key, v in errs.items()}

        ins = [(n, total, heads, dim), (n, queries, heads, levels, points, 2),
               (n, queries, heads, levels, points)]
        outs = [(n, queries, heads * dim)]
        nbytes = {p: pass_bytes(ins, outs, ins, p) for p in PASSES}
        self.run_case(op, shape, config, peer_name, {}, nbytes,
                      {"forward": ours_fwd, "forward+backward": ours_fb},
                      {"forward": peer_fwd, "forward+backward": peer_fb},
                      {"forward": csets, "forward+backward": csets},
                      {"forward": sets, "forward+backward": gsets}, check)

    def conv(self, spec):
        n, c, o, h, w, k, pad, dil = spec
        op = "conv2d"
        shape = f"{n}x{c}x{h}x{w} O{o} k{k}"
        config = f"pad{pad} dil{dil}"
        peer_name = "torch.nn.functional.conv2d (cuDNN)"
        self.guarded(op, shape, config, peer_name,
                     lambda: self._conv(op, shape, config, peer_name, spec))

    def _conv(self, op, shape, config, peer_name, spec):
        torch, dc, cp, F = self.torch, self.dc, self.cp, self.F
        n, c, o, h, w, k, pad, dil = spec
        ho, wo = conv_out_hw(h, w, k, pad, dil)
        g = self.generator()
        wscale = 1.0 / math.sqrt(c * k * k)
        sets = [(self.randn(g, (n, c, h, w)), self.randn(g, (o, c, k, k), wscale))
                for _ in range(self.args.rotations)]
        tgo = self.randn(g, (n, o, ho, wo))
        cgo = self.to_cupy(tgo)
        csets = [tuple(self.to_cupy(t) for t in s) for s in sets]
        gsets = [tuple(t.detach().requires_grad_(True) for t in s) for s in sets]

        def ours_fwd(x, wt):
            return dc.conv2d(x, wt, padding=pad, dilation=dil)

        def ours_fb(x, wt):
            dc.conv2d(x, wt, padding=pad, dilation=dil)
            return dc.conv2d_backward(cgo, x, wt, padding=pad, dilation=dil,
                                      needs=("input", "weight"))

        def peer_fwd(x, wt):
            with torch.no_grad():
                return F.conv2d(x, wt, padding=pad, dilation=dil)

        def peer_fb(x, wt):
            out = F.conv2d(x, wt, padding=pad, dilation=dil)
            return torch.autograd.grad(out, (x, wt), tgo)

        def check():
            peer_out = self.to_cupy(peer_fwd(*sets[0]))
            errs = {"output": rel_err(cp, ours_fwd(*csets[0]), peer_out)}
            ours_g = ours_fb(*csets[0])
            peer_g = peer_fb(*gsets[0])
            for name, pg in zip(("input", "weight"), peer_g):
                errs[f"grad_{name}"] = rel_err(cp, getattr(ours_g, name), self.to_cupy(pg))
            return {key: _round(v, 8) for key, v in errs.items()}

        ins = [(n, c, h, w), (o, c, k, k)]
        outs = [(n, o, ho, wo)]
        flops = {p: conv_flop(n, c, o, ho, wo, k, k, 1, p) for p in PASSES}
        nbytes = {p: pass_bytes(ins, outs, ins, p) for p in PASSES}
        self.run_case(op, shape, config, peer_name, flops, nbytes,
                      {"forward": ours_fwd, "forward+backward": ours_fb},
                      {"forward": peer_fwd, "forward+backward": peer_fb},
                      {"forward": csets, "forward+backward": csets},
                      {"forward": sets, "forward+backward": gsets}, check)


def torch_ms_deform_attn(torch, F, value, shapes, locations, weights):
    """Deformable DETR's pure-PyTorch reference (``ms_deform_attn_core_pytorch``),
    written here from its documented semantics: each level sampled by
    grid_sample(bilinear, zeros, align_corners=False) at ``2 * loc - 1``,
    weighted and summed over levels and points."""
    n, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    sampled = []
    for level, (h, w) in enumerate(shapes):
        v = per_level[level].flatten(2).transpose(1, 2).reshape(n * heads, dim, h, w)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (N*M, Lq, P, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # (N*M, D, Lq, P)
    a = weights.transpose(1, 2).reshape(n * heads, 1, queries, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * a).sum(-1)  # (N*M, D, Lq)
    return out.view(n, heads * dim, queries).transpose(1, 2).contiguous()


def disable_tf32(torch):
    """Plain float32 in torch's GEMMs and cuDNN convs (cuDNN allows TF32 by default)."""
    try:
        if hasattr(torch.backends, "fp32_precision"):  # torch >= 2.9 API
            torch.backends.fp32_precision = "ieee"
            torch.backends.cuda.matmul.fp32_precision = "ieee"
            torch.backends.cudnn.fp32_precision = "ieee"
            torch.backends.cudnn.conv.fp32_precision = "ieee"
            return
    except Exception:  # noqa: BLE001 - fall back to the older flags
        pass
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def tf32_state(torch):
    state = {}
    for name, get in (
            ("cuda.matmul.allow_tf32", lambda: torch.backends.cuda.matmul.allow_tf32),
            ("cudnn.allow_tf32", lambda: torch.backends.cudnn.allow_tf32),
            ("cuda.matmul.fp32_precision", lambda: torch.backends.cuda.matmul.fp32_precision),
            ("cudnn.conv.fp32_precision", lambda: torch.backends.cudnn.conv.fp32_precision)):
        try:
            state[name] = get()
        except Exception:  # noqa: BLE001
            pass
    return state


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="5 runs per measurement and tighter time caps (about 3 minutes)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per measurement (default 20, 5 with --quick)")
    parser.add_argument("--rotations", type=int, default=3,
                        help="preallocated input sets cycled through between runs")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "gpu_h200.json"))
    parser.add_argument("--only", nargs="+", default=None,
                        choices=("deform_conv2d", "grid_sample", "conv2d", "ms_deform_attn"),
                        help="run only these ops (default: all)")
    parser.add_argument("--column-budget-mib", type=float, default=None,
                        help="set defconv_np.config.cuda_column_budget_bytes for this run")
    parser.add_argument("--no-chart", action="store_true", help="write the JSON only")
    parser.add_argument("--measure-cap-s", type=float, default=None,
                        help="seconds after which one measurement stops adding runs "
                             "(default 6, 2.5 with --quick)")
    parser.add_argument("--total-s", type=float, default=None,
                        help="seconds after which every measurement does only 3 runs "
                             "(default 420, 150 with --quick)")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 5 if args.quick else 20
    args.repeats = max(1, args.repeats)
    args.rotations = max(1, args.rotations)
    # per-measurement and whole-run time caps (seconds): see Deadline
    if args.measure_cap_s is None:
        args.measure_cap_s = 2.5 if args.quick else 6.0
    if args.total_s is None:
        args.total_s = 150.0 if args.quick else 420.0
    return args


def main(argv=None):
    args = parse_args(argv)
    wall0 = time.perf_counter()
    os.environ["CUPY_TF32"] = "0"  # plain float32 cuBLAS (read when CuPy loads)
    import cupy as cp
    import torch
    import torchvision

    import defconv_np as dc

    if args.column_budget_mib is not None:
        dc.config.cuda_column_budget_bytes = int(args.column_budget_mib * 2**20)
    disable_tf32(torch)
    torch.backends.cudnn.benchmark = True  # the peer gets its best cuDNN algorithm
    torch.cuda.init()
    cp.cuda.set_allocator(cp.get_default_memory_pool().malloc)

    bench = Bench(args, cp, torch, dc)
    device_name = torch.cuda.get_device_name(0)
    print(f"{device_name}  cupy {cp.__version__}  torch {torch.__version__}  "
          f"torchvision {torchvision.__version__}  defconv_np {dc.__version__}  "
          f"repeats {args.repeats}  rotations {args.rotations}  float32, TF32 off", flush=True)
    peaks_error = None
    try:
        bench.device_peaks()
    except Exception as exc:  # noqa: BLE001 - the op timings are still worth having
        traceback.print_exc()
        peaks_error = error_text(exc)
        bench.peaks = {}
        bench.cleanup()
    print(f"GFLOP/s and GB/s are ours; floors: GEMM "
          f"{_fmt(bench.peaks.get('gemm_tflops'), '.2f')} TFLOP/s, copy "
          f"{_fmt(bench.peaks.get('copy_gbs'), '.0f')} GB/s. ratio = ours/peer (<1: ours faster)",
          flush=True)
    print(table_header(), flush=True)

    def wanted(name):
        return args.only is None or name in args.only

    def safely(case, *case_args):
        try:
            case(*case_args)
        except Exception:  # noqa: BLE001 - one broken case must not stop the others
            traceback.print_exc()

    if wanted("deform_conv2d"):
        for spec in DEFORM_SHAPES:
            for masked in (False, True):
                safely(bench.deform, spec, masked)
    if wanted("grid_sample"):
        if hasattr(dc, "grid_sample"):
            for spec in GRID_SHAPES:
                for padding_mode in GRID_PADDING_MODES:
                    safely(bench.grid, spec, padding_mode)
        else:
            print("note: defconv_np has no grid_sample yet; skipped", flush=True)
    if wanted("conv2d"):
        for spec in CONV_SHAPES:
            safely(bench.conv, spec)
    if wanted("ms_deform_attn"):
        if hasattr(dc, "ms_deform_attn"):
            for spec in ATTENTION_SHAPES:
                safely(bench.attention, spec)
        else:
            print("note: defconv_np has no ms_deform_attn yet; skipped", flush=True)

    print()
    print(format_table(bench.rows))
    result = {
        "device": device_name,
        "machine": platform.node(),
        "cupy": cp.__version__, "torch": torch.__version__,
        "torchvision": torchvision.__version__, "defconv_np": dc.__version__,
        "git": git_revision(),
        "package": os.path.dirname(os.path.abspath(dc.__file__)),
        "cuda_channels_per_thread": getattr(dc.config, "cuda_channels_per_thread", None),
        "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
        "dtype": "float32", "tf32": {"CUPY_TF32": os.environ.get("CUPY_TF32"),
                                     **tf32_state(torch)},
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cuda_column_budget_bytes": dc.config.cuda_column_budget_bytes,
        "repeats": args.repeats, "rotations": args.rotations, "quick": args.quick,
        "copy_gbs": bench.peaks.get("copy_gbs"),
        "copy_gbs_memcpy": bench.peaks.get("copy_gbs_memcpy"),
        "copy_gbs_kernel": bench.peaks.get("copy_gbs_kernel"),
        "gemm_tflops": bench.peaks.get("gemm_tflops"),
        "torch_gemm_tflops": bench.peaks.get("torch_gemm_tflops"),
        "peaks_error": peaks_error,
        "wall_s": round(time.perf_counter() - wall0, 1),
        "rows": bench.rows,
    }
    write_json(args.out, result)
    print(f"wrote {args.out} ({result['wall_s']:.0f} s)")
    png = None if args.no_chart else write_chart(
        chart_path(args.out), bench.rows,
        f"defconv_np vs peer on {device_name}: time ratio (float32, TF32 off)")
    if png:
        print(f"wrote {png}")


if __name__ == "__main__":
    main()

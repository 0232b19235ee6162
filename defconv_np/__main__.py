"""``python -m defconv_np``: report backends, check gradients, time the ops."""

import argparse
import json
import os
import sys
import time

from . import __version__, _selfcheck, config

TOLERANCE = 1e-6

DESCRIPTION = """\
Check that defconv_np works on this machine: list the backends found (NumPy and
Numba, and CuPy with its GPU when installed), compare every analytic gradient
with central finite differences (float64, small shapes), then time the forward
and backward pass of each op. The first run compiles the kernels (about 40 s;
one line per kernel on stderr); later runs load them from Numba's disk cache.
Exits 1 if a gradient check fails."""


def _shape(text):
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,C,H,W (four integers), got {text!r}")
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected N,C,H,W (four positive integers), "
                                         f"got {text!r}")
    return shape


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _ops(text):
    ops = [op.strip() for op in text.split(",") if op.strip()]
    unknown = [op for op in ops if op not in _selfcheck.OPS]
    if unknown or not ops:
        raise argparse.ArgumentTypeError(
            f"unknown op(s) {', '.join(unknown) or text!r}; choose from {', '.join(_selfcheck.OPS)}")
    return ops


def parser():
    p = argparse.ArgumentParser(prog="python -m defconv_np", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"defconv_np {__version__}")
    p.add_argument("--repeats", type=_positive, default=5,
                   help="timed runs per op, the median is reported (default 5)")
    p.add_argument("--no-timing", action="store_true", help="skip the timing table")
    p.add_argument("--shape", type=_shape, default=_selfcheck.TIMING_SHAPE,
                   metavar="N,C,H,W",
                   help="input shape for the timings, with C output channels and a 3x3 "
                        "kernel (default %s)" % ",".join(map(str, _selfcheck.TIMING_SHAPE)))
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="dtype for the timings (default float32; the gradient check is "
                        "always float64)")
    p.add_argument("--ops", type=_ops, default=list(_selfcheck.OPS), metavar="OP[,OP...]",
                   help="ops to check and time, comma-separated (default all: %s)"
                        % ",".join(_selfcheck.OPS))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: NumPy arrays on the Numba CPU kernels (default); cuda: CuPy "
                        "arrays on the CUDA kernels (needs CuPy and a GPU)")
    p.add_argument("--json", metavar="PATH",
                   help="also write the results (backends, gradient checks, timings) to PATH "
                        "as JSON")
    return p


def _table(header, rows, formats):
    if not rows:
        print("(none)")
        return
    widths = [max(len(h), *(len(f.format(r[i])) for r in rows)) for i, (h, f)
              in enumerate(zip(header, formats))]
    print("  ".join(h.ljust(wd) for h, wd in zip(header, widths)).rstrip())
    for r in rows:
        print("  ".join(f.format(r[i]).ljust(wd)
                        for i, (f, wd) in enumerate(zip(formats, widths))).rstrip())


def _run(args, p):
    if args.device == "cuda":
        problem = _selfcheck.cuda_problem()
        if problem:
            p.error(f"--device cuda: {problem}")

    print("backends")
    backends = _selfcheck.backends()
    _table(("backend", "detail"), backends, ("{}", "{}"))

    print(f"\ngradient check ({args.device}, float64, central differences along a random "
          f"direction)", flush=True)
    t0 = time.perf_counter()
    rows = _selfcheck.gradient_checks(ops=args.ops, device=args.device)
    failed = [r for r in rows if not r[4] <= TOLERANCE]
    _table(("op", "gradient", "analytic", "numeric", "rel. error", "status"),
           [r + ("ok" if r[4] <= TOLERANCE else "FAIL",) for r in rows],
           ("{}", "{}", "{:.9g}", "{:.9g}", "{:.1e}", "{}"))
    print(f"({time.perf_counter() - t0:.1f} s)")

    timings = []
    if not args.no_timing:
        print(f"\ntiming ({args.device}, {args.dtype}, median of {args.repeats} runs)",
              flush=True)
        timings = _selfcheck.timings(args.repeats, shape=args.shape, dtype=args.dtype,
                                     ops=args.ops, device=args.device)
        _table(("op", "shape", "ms"), timings, ("{}", "{}", "{:.1f}"))
    if args.json:
        result = {
            "version": __version__,
            "device": args.device,
            "backends": [dict(backend=b, detail=d) for b, d in backends],
            "gradient_checks": [dict(op=r[0], gradient=r[1], analytic=r[2], numeric=r[3],
                                     relative_error=r[4], ok=bool(r[4] <= TOLERANCE))
                                for r in rows],
            "tolerance": TOLERANCE,
            "timings": [dict(op=r[0], shape=r[1], ms=r[2], dtype=args.dtype,
                             repeats=args.repeats) for r in timings],
            "failed": len(failed),
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    if failed:
        print(f"\n{len(failed)} gradient check(s) above tolerance {TOLERANCE:g}", file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    previous = config.verbose_compile
    config.verbose_compile = True  # a line per kernel that really compiles, on stderr
    try:
        status = _run(args, p)
        sys.stdout.flush()  # a pipe's buffered output: fail here, not at exit
        return status
    except BrokenPipeError:
        # the reader went away (``| head``): stop quietly, as Unix tools do
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    finally:
        config.verbose_compile = previous


if __name__ == "__main__":
    sys.exit(main())

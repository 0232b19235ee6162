"""``python -m defconv_np``: report backends, check gradients, time the ops."""

import argparse
import sys
import time

from . import _selfcheck

TOLERANCE = 1e-6


def _table(header, rows, formats):
    widths = [max(len(h), *(len(f.format(r[i])) for r in rows)) for i, (h, f)
              in enumerate(zip(header, formats))]
    print("  ".join(h.ljust(wd) for h, wd in zip(header, widths)))
    for r in rows:
        print("  ".join(f.format(r[i]).ljust(wd) for i, (f, wd) in enumerate(zip(formats, widths))))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m defconv_np", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per op (median)")
    parser.add_argument("--no-timing", action="store_true", help="skip the timing table")
    args = parser.parse_args(argv)

    print("backends")
    _table(("backend", "detail"), _selfcheck.backends(), ("{}", "{}"))

    print("\ngradient check (float64, central differences along a random direction)")
    print("... compiling kernels on first use (cached on disk afterwards)", flush=True)
    t0 = time.perf_counter()
    rows = _selfcheck.gradient_checks()
    failed = [r for r in rows if r[4] > TOLERANCE]
    _table(("op", "gradient", "analytic", "numeric", "rel. error", "status"),
           [r + ("ok" if r[4] <= TOLERANCE else "FAIL",) for r in rows],
           ("{}", "{}", "{:.9g}", "{:.9g}", "{:.1e}", "{}"))
    print(f"({time.perf_counter() - t0:.1f} s)")

    if not args.no_timing:
        print("\ntiming (float32, median of %d runs)" % args.repeats, flush=True)
        _table(("op", "shape", "ms"), _selfcheck.timings(args.repeats), ("{}", "{}", "{:.1f}"))
    if failed:
        print(f"\n{len(failed)} gradient check(s) above tolerance {TOLERANCE:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Compile every CUDA kernel for a GPU architecture and record its resources.

Run:  python benchmarks/ptx_report.py [--cc 9.0] [--out benchmarks/results/ptx_sm90.json]

No GPU is needed (numba-cuda[cu13] provides NVVM and nvJitLink). For each
kernel and dtype: registers per thread, spill bytes, shared memory, the
float64 instructions left in its PTX (a float32 kernel should have none), and
the kinds of global loads (vectorised ``.v2``/``.v4`` or scalar) as a first
look at its access pattern.
"""

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from defconv_np import _ptx  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cc", default="9.0", help="compute capability, e.g. 9.0")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "ptx_sm90.json"))
    args = parser.parse_args()
    cc = tuple(int(v) for v in args.cc.split("."))
    rows = []
    print(f"{'kernel':32s} {'dtype':8s} {'regs':>4s} {'spill st/ld':>11s} {'smem':>5s} "
          f"{'f64':>4s} {'ld.global':>9s} {'vector ld':>9s}")
    for r in _ptx.compile_all(cc=cc):
        loads = re.findall(r"ld\.global(\.\w+)*", r["ptx"])
        vector = len(re.findall(r"ld\.global(?:\.\w+)*\.v[24]", r["ptx"]))
        row = {k: v for k, v in r.items() if k != "ptx"}
        row.update(global_loads=len(loads), vector_loads=vector)
        rows.append(row)
        print(f"{row['kernel']:32s} {row['dtype']:8s} {row.get('registers')!s:>4} "
              f"{row.get('spill_store_bytes')!s:>5}/{row.get('spill_load_bytes')!s:<5} "
              f"{row.get('shared_bytes')!s:>5} {row['f64_instructions']:4d} "
              f"{row['global_loads']:9d} {row['vector_loads']:9d}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"cc": list(cc), "kernels": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""defconv_np against torchvision.ops.deform_conv2d where torchvision runs (a GPU
machine), float64, on the cases where implementations disagree: zero offsets
and integer-lattice offsets (samples exactly on cell edges and on y, x = -1)
with padding 1 and 2, with and without a mask, and random fractional offsets.

Prints, per case and per result (output and each gradient), the largest
absolute difference of ours (NumPy, and CuPy when present) and of
torchvision's CPU kernel from torchvision's CUDA kernel, and writes them as
JSON to --out.

Run:  PYTHONPATH=$PWD python3 benchmarks/gpu_torchvision_check.py --out tv_check.json
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import defconv_np as dc  # noqa: E402

NAMES = ("output", "input", "offset", "mask", "weight")


def torchvision_results(torch, tv_deform, device, x, off, w, m, go, padding):
    t = {k: (None if v is None else torch.tensor(v, device=device, requires_grad=True))
         for k, v in dict(input=x, offset=off, weight=w, mask=m).items()}
    out = tv_deform(t["input"], t["offset"], t["weight"], padding=(padding, padding),
                    mask=t["mask"])
    out.backward(torch.tensor(go, device=device))
    res = {"output": out.detach().cpu().numpy()}
    for k in ("input", "offset", "mask", "weight"):
        res[k] = None if t[k] is None else t[k].grad.cpu().numpy()
    return res


def ours(xp, x, off, w, m, go, padding):
    a = [None if v is None else xp.asarray(v) for v in (x, off, w, m, go)]
    out = dc.deform_conv2d(a[0], a[1], a[2], padding=padding, mask=a[3])
    g = dc.deform_conv2d_backward(a[4], a[0], a[1], a[2], padding=padding, mask=a[3])
    host = (lambda v: v) if xp is np else (lambda v: None if v is None else xp.asnumpy(v))
    return {"output": host(out), "input": host(g.input), "offset": host(g.offset),
            "mask": host(g.mask), "weight": host(g.weight)}


def cases(rng):
    # the repro: [[1, 2], [3, 4]], 1x1 ones, padding 1, zero offset,
    # grad_output 1 at output (0, 1) only
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    go = np.zeros((1, 1, 4, 4))
    go[0, 0, 0, 1] = 1.0
    yield "repro 2x2 pad1 zero-offset", x, np.zeros((1, 2, 4, 4)), np.ones((1, 1, 1, 1)), None, go, 1
    for padding in (1, 2):
        for kind in ("zero", "integer", "fractional"):
            for masked in (False, True):
                n, c, o, h, w, k, groups = 2, 4, 3, 6, 5, 3, 2
                ho, wo = h + 2 * padding - k + 1, w + 2 * padding - k + 1
                shape = (n, 2 * groups * k * k, ho, wo)
                if kind == "zero":
                    off = np.zeros(shape)
                elif kind == "integer":
                    off = rng.integers(-3, 4, shape).astype(np.float64)
                else:
                    off = rng.uniform(-3, 3, shape)
                yield (f"{kind} pad{padding} {'mask' if masked else 'nomask'}",
                       rng.standard_normal((n, c, h, w)), off,
                       rng.standard_normal((o, c, k, k)),
                       rng.uniform(0, 1, (n, groups * k * k, ho, wo)) if masked else None,
                       rng.standard_normal((n, o, ho, wo)), padding)


def max_diff(a, b):
    if a is None or b is None:
        return None
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    import torch
    from torchvision.ops import deform_conv2d as tv_deform

    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 - the NumPy comparison still runs
        cupy = None
    has_cuda = torch.cuda.is_available()
    ref_device = "cuda" if has_cuda else "cpu"
    print(f"torch {torch.__version__}, reference: torchvision on {ref_device}; "
          f"max |x - torchvision {ref_device}| (float64)")
    rows = []
    rng = np.random.default_rng(0)
    for name, x, off, w, m, go, padding in cases(rng):
        ref = torchvision_results(torch, tv_deform, ref_device, x, off, w, m, go, padding)
        sides = {"ours_numpy": ours(np, x, off, w, m, go, padding)}
        if cupy is not None:
            sides["ours_cupy"] = ours(cupy, x, off, w, m, go, padding)
        if has_cuda:
            sides["torchvision_cpu"] = torchvision_results(torch, tv_deform, "cpu", x, off, w, m,
                                                           go, padding)
        row = {"case": name}
        for side, res in sides.items():
            row[side] = {k: max_diff(res[k], ref[k]) for k in NAMES}
        if name.startswith("repro"):
            row["d_dy_at_output_0_1"] = {
                "torchvision": float(ref["offset"][0, 0, 0, 1]),
                **{side: float(res["offset"][0, 0, 0, 1]) for side, res in sides.items()}}
        rows.append(row)
        text = "  ".join(
            f"{side}: " + " ".join(f"{k}={'-' if v is None else format(v, '.1e')}"
                                   for k, v in diffs.items())
            for side, diffs in ((s, row[s]) for s in sides))
        print(f"{name:30s} {text}")
        if "d_dy_at_output_0_1" in row:
            print(f"{'':30s} d/d(dy) at output (0, 1): {row['d_dy_at_output_0_1']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"torch": torch.__version__, "reference": f"torchvision {ref_device}",
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

"""Bar charts of timing results.

    python benchmarks/plot.py RESULT.json [RESULT.json ...] -o timings.png

Reads ``python -m defconv_np --json`` output ("timings": op, ms) and the
benchmark files in benchmarks/results/ ("rows": op, config, ours_ms and, where
measured, peer_ms); one group of bars per op, one bar per file (and per peer).
Needs matplotlib (``pip install defconv_np[plot]``); renders headless.
"""

import argparse
import json
import pathlib
import sys


def series(path):
    """{label: {op: ms}} for one result file."""
    data = json.loads(pathlib.Path(path).read_text())
    name = pathlib.Path(path).stem
    if "timings" in data:
        return {name: {r["op"]: r["ms"] for r in data["timings"]}}
    if "rows" in data:
        ours, peers = {}, {}
        for r in data["rows"]:
            op = r["op"] + (f" ({r['config']})" if r.get("config") else "")
            if r.get("ours_ms") is not None:
                ours[op] = r["ours_ms"]
            if r.get("peer_ms") is not None:
                peers.setdefault(f"{name}: {r.get('peer', 'peer')}", {})[op] = r["peer_ms"]
        return {f"{name}: defconv_np": ours, **peers}
    raise ValueError(f"{path}: neither 'timings' (python -m defconv_np --json) nor 'rows' "
                     f"(a benchmark file)")


def figure(all_series):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ops = []
    for values in all_series.values():
        ops += [op for op in values if op not in ops]
    width = 0.8 / max(1, len(all_series))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(ops) + 2), 4.5))
    for n, (label, values) in enumerate(all_series.items()):
        x = np.arange(len(ops)) + (n - (len(all_series) - 1) / 2) * width
        ax.bar(x, [values.get(op, np.nan) for op in ops], width, label=label)
    ax.set_xticks(np.arange(len(ops)), ops, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("ms (median)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description="Bar charts of timing results (JSON) as a PNG.")
    p.add_argument("results", nargs="+", help="JSON files (python -m defconv_np --json, or "
                                              "benchmarks/results/*.json)")
    p.add_argument("-o", "--output", default="timings.png", help="image to write")
    args = p.parse_args(argv)
    merged = {}
    for path in args.results:
        merged.update(series(path))
    figure(merged).savefig(args.output, dpi=120)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Markdown table of baseline/ours median-time ratios from a pytest-benchmark JSON file.

Usage: python benchmarks/report.py bench.json
Each group holds our implementation ("tiled" or "ours") and one baseline (naive, torchsde, torchdiffeq).
"""

import json
import sys
from collections import defaultdict

OURS = ("tiled", "ours")


def main(path):
    data = json.load(open(path))
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"]][b["params"]["impl"]] = b["stats"]["median"]
    print("| case | baseline | baseline median (ms) | ours median (ms) | baseline / ours |")
    print("|---|---|---:|---:|---:|")
    for g in sorted(groups):
        t = groups[g]
        ours = [k for k in t if k in OURS]
        base = [k for k in t if k not in OURS]
        if ours and base:
            o, b = t[ours[0]], t[base[0]]
            print(f"| {g} | {base[0]} | {b * 1e3:.1f} | {o * 1e3:.1f} | {b / o:.2f}x |")


if __name__ == "__main__":
    main(sys.argv[1])

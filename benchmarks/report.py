"""Markdown table of baseline/ours median-time ratios from a pytest-benchmark JSON file.

Usage: python benchmarks/report.py bench.json
Each group holds one or more of our implementations (names starting "tiled" or "ours", e.g.
"ours-compiled") and one or more baselines (naive, keops, torchsde, torchdiffeq); one row per
(baseline, implementation of ours) pair.
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
    print("| case | baseline | baseline median (ms) | ours | ours median (ms) | baseline / ours |")
    print("|---|---|---:|---|---:|---:|")
    for g in sorted(groups):
        t = groups[g]
        ours = sorted(k for k in t if k.startswith(OURS))
        for base in sorted(k for k in t if not k.startswith(OURS)):
            b = t[base]
            for k in ours:
                print(f"| {g} | {base} | {b * 1e3:.1f} | {k} | {t[k] * 1e3:.1f} | {b / t[k]:.2f}x |")


if __name__ == "__main__":
    main(sys.argv[1])

"""Markdown table of naive/tiled median-time ratios from a pytest-benchmark JSON file.

Usage: python benchmarks/report.py .benchmarks/.../0001_run.json
"""

import json
import sys
from collections import defaultdict


def main(path):
    data = json.load(open(path))
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        impl = b["params"]["impl"]
        groups[b["group"]][impl] = b["stats"]["median"]
    print("| op and size | naive median (ms) | tiled median (ms) | naive / tiled |")
    print("|---|---:|---:|---:|")
    for g in sorted(groups):
        t = groups[g]
        if "naive" in t and "tiled" in t:
            print(f"| {g} | {t['naive'] * 1e3:.1f} | {t['tiled'] * 1e3:.1f} | {t['naive'] / t['tiled']:.2f}x |")


if __name__ == "__main__":
    main(sys.argv[1])

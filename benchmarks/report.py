"""Markdown table of baseline/ours median-time ratios from a pytest-benchmark JSON file.

Usage: python benchmarks/report.py bench.json
Each group holds one or more of our implementations and one or more baselines; one row per
(baseline, implementation of ours) pair. Ours are the GPU backends ("triton", "cuda") where a
group has them, else the fused CPU kernels ("fused") where it has them (the tiled torch path is
then a baseline), else the names starting "tiled" or "ours" (e.g. "ours-compiled"). Baselines:
naive, keops, torchsde, torchdiffeq, and so on. Benchmarks without an "impl" (a yardstick such
as torch.exp's throughput) are left out.
"""

import json
import sys
from collections import defaultdict

OURS_GPU = ("triton", "cuda")
OURS_FUSED = ("fused",)
OURS_CPU = ("tiled", "ours")


def rows(data):
    """[(group, baseline, baseline median s, ours, ours median s)] in a stable order."""
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        if (b.get("params") or {}).get("impl") is not None:
            groups[b["group"]][b["params"]["impl"]] = b["stats"]["median"]
    out = []
    for g in sorted(groups):
        t = groups[g]
        prefix = next((p for p in (OURS_GPU, OURS_FUSED) if any(k.startswith(p) for k in t)), OURS_CPU)
        ours = sorted(k for k in t if k.startswith(prefix))
        for base in sorted(k for k in t if not k.startswith(prefix)):
            for k in ours:
                out.append((g, base, t[base], k, t[k]))
    return out


def main(path):
    print("| case | baseline | baseline median (ms) | ours | ours median (ms) | baseline / ours |")
    print("|---|---|---:|---|---:|---:|")
    for g, base, b, k, o in rows(json.load(open(path))):
        print(f"| {g} | {base} | {b * 1e3:.1f} | {k} | {o * 1e3:.1f} | {b / o:.2f}x |")


if __name__ == "__main__":
    main(sys.argv[1])

"""Peak extra resident memory of each op: fused CPU kernels (backend="cpu"), tiled torch
(backend="torch") and naive dense torch, each in a fresh subprocess.

Usage: python benchmarks/peak_memory.py [N]   (default N = M = 8192, D = 2, float32)
"""

import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, torch
sys.path.insert(0, sys.argv[3])
import gpflow_kernels as gk, naive
op, impl, n = sys.argv[1], sys.argv[2], int(sys.argv[4])
g = torch.Generator().manual_seed(0)
x, y, v = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g), torch.randn(n, 4, generator=g)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if impl in ("fused", "tiled"):
    be = "cpu" if impl == "fused" else "torch"
    {"mmd_field": lambda: gk.mmd_field(x, y, bandwidth=0.5, backend=be),
     "kernel_integral": lambda: gk.kernel_integral(x, y, v, bandwidth=0.5, backend=be),
     "kde_score": lambda: gk.kde_score(x, y, bandwidth=0.5, backend=be)}[op]()
else:
    {"mmd_field": lambda: naive.mmd_field(x, y, 0.5),
     "kernel_integral": lambda: naive.kernel_integral(x, y, v, 0.5),
     "kde_score": lambda: naive.kde_score(x, y, 0.5)}[op]()
print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024))
"""


def main(n=8192):
    here = str(Path(__file__).parent)
    print(f"| op (N = M = {n}, D = 2, float32) | naive peak extra (MB) | tiled peak extra (MB) | fused peak extra (MB) |")
    print("|---|---:|---:|---:|")
    for op in ("mmd_field", "kernel_integral", "kde_score"):
        mb = {}
        for impl in ("naive", "tiled", "fused"):
            out = subprocess.run([sys.executable, "-c", CHILD, op, impl, here, str(n)], capture_output=True, text=True, check=True)
            mb[impl] = json.loads(out.stdout)
        print(f"| {op} | {mb['naive']:.0f} | {mb['tiled']:.0f} | {mb['fused']:.0f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8192)

"""Fused CPU kernels against KeOps' CPU backend at N = M = 4096, D = 2 only (KeOps at D = 64 takes
seconds per call), implementations alternated round by round, 7 rounds, medians.

Usage: OMP_NUM_THREADS=2 python benchmarks/fused_cpu_keops_d2.py   (needs pykeops)
"""
import statistics
import sys
import time

import torch
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fused_cpu_cases import OPS, make
torch.set_num_threads(2)
print("| op | D | pass | fused (ms) | keops (ms) | keops / fused |"); print("|---|---:|---|---:|---:|---:|")
for op in OPS:
    for bw in (False, True):
        fns = {impl: make(op, impl, 4096, 2, bw) for impl in ("fused", "keops")}
        for f in fns.values(): f()
        ts = {k: [] for k in fns}
        for _ in range(7):
            for k, f in fns.items():
                t0 = time.perf_counter(); f(); ts[k].append(time.perf_counter() - t0)
        a, b = (statistics.median(ts[k]) * 1e3 for k in ("fused", "keops"))
        print(f"| {op} | 2 | {'fwd+bwd' if bw else 'fwd'} | {a:.1f} | {b:.1f} | {b/a:.2f}x |")

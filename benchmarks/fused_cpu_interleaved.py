"""Fused CPU kernels (#17) against the tiled torch path and KeOps' CPU backend, implementations
alternated round by round; prints a Markdown table of medians, ratios and the fraction of
torch.exp's throughput for the forward passes (kernel evaluations per second / exp elements
per second, same threads).

Usage: OMP_NUM_THREADS=2 python benchmarks/fused_cpu_interleaved.py [rounds] [op ...]
(the ops default to all; GPFLOW_BENCH_KEOPS=0 leaves KeOps out)
The thread count is torch's (OMP_NUM_THREADS). KeOps joins where pykeops imports; its first call
compiles, and every implementation's result is checked against the tiled one before timing.
"""

import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from fused_cpu_cases import OPS, SIZES, exp_rate, make, pair_evals  # noqa: E402


def has_keops():
    try:
        import pykeops  # noqa: F401
        return True
    except ImportError:
        return False


def main(rounds=7, ops=OPS):
    threads = torch.get_num_threads()
    keops = has_keops() and os.environ.get("GPFLOW_BENCH_KEOPS", "1") != "0"
    impls = ["fused", "tiled"] + (["keops"] if keops else [])
    rate = exp_rate(threads)
    print(f"threads {threads}; torch.exp: {rate / 1e9:.2f} G elements/s")
    print("| op | N = M | D | pass | impl | median (ms) | tiled / impl | keops / impl | exp-throughput fraction |")
    print("|---|---:|---:|---|---|---:|---:|---:|---:|")
    for n, d in SIZES:
        for op in ops:
            for backward in (False, True):
                fns = {k: make(op, k, n, d, backward) for k in impls}
                ref = fns["tiled"]()
                for k, f in fns.items():  # same numbers first (and KeOps compiles here)
                    torch.testing.assert_close(f(), ref, rtol=2e-3, atol=2e-4 * float(ref.abs().max()))
                times = {k: [] for k in impls}
                for _ in range(rounds):
                    for k, f in fns.items():
                        t = time.perf_counter()
                        f()
                        times[k].append(time.perf_counter() - t)
                med = {k: statistics.median(v) for k, v in times.items()}
                for k in impls:
                    frac = "" if backward else f"{pair_evals(op, n) / med[k] / rate:.0%}"
                    kr = f"{med['keops'] / med[k]:.2f}x" if "keops" in med else ""
                    print(f"| {op} | {n} | {d} | {'fwd+bwd' if backward else 'fwd'} | {k} | {med[k] * 1e3:.1f} | "
                          f"{med['tiled'] / med[k]:.2f}x | {kr} | {frac} |", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7, sys.argv[2:] or OPS)

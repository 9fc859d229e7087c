"""Time the adaptive cases with every implementation alternated round by round; print medians.

Usage: OMP_NUM_THREADS=1 python benchmarks/adaptive_interleaved.py [rounds]
A shared, noisy machine makes back-to-back blocks of rounds unfair to whichever ran in the busy
spell; alternating them gives each implementation the same conditions. Prints a Markdown table
with the median seconds, the field evaluations and the baseline/ours ratio.
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from adaptive_cases import ADJOINT, FORWARD, LOG_PROB, make_adjoint, make_forward, make_log_prob  # noqa: E402


def interleaved(impls, rounds):
    times = {k: [] for k in impls}
    nfe = {k: fn() for k, fn in impls.items()}  # warm-up
    for _ in range(rounds):
        for k, fn in impls.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}, nfe


def main(rounds=7):
    cases = [("dopri5 forward {} N={} D={} tol={:g}".format(*c), make_forward(*c)) for c in FORWARD]
    cases += [("adjoint fwd+bwd mlp N={} D={} tol={:g}".format(*c), make_adjoint(*c)) for c in ADJOINT]
    cases += [("log_prob mlp N={} D={}".format(*c), make_log_prob(*c)) for c in LOG_PROB]
    print("| case | impl | median (ms) | field evals | baseline / impl |")
    print("|---|---|---:|---:|---:|")
    for name, impls in cases:
        med, nfe = interleaved(impls, rounds)
        base = [k for k in impls if not k.startswith("ours")][0]
        for k in impls:
            ratio = f"{med[base] / med[k]:.2f}x" if k != base else ""
            print(f"| {name} | {k} | {med[k] * 1e3:.1f} | {nfe[k]} | {ratio} |", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)

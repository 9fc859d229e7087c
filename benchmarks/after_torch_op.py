"""A fused CPU call alone and right after a torch op (whose OpenMP workers may still be spinning).

Usage: OMP_NUM_THREADS=2 python benchmarks/after_torch_op.py
Prints the median of 9 kde_score calls (N = M = 4096, D = 2) in each situation. With the kernels on
torch's own OpenMP pool the three agree; a second pool of threads would compete with torch's.
"""

import statistics
import time

import torch

import gpflow_kernels as gk


def main():
    x, y = torch.randn(4096, 2), torch.randn(4096, 2)
    fused = lambda: gk.kde_score(x, y, bandwidth=0.42, backend="cpu")
    before = {
        "alone": None,
        "after the tiled kde_score": lambda: gk.kde_score(x, y, bandwidth=0.42, backend="torch"),
        "after a 2000x2000 matmul": lambda: torch.randn(2000, 2000) @ torch.randn(2000, 2000),
    }
    fused()
    for name, pre in before.items():
        times = []
        for _ in range(9):
            if pre is not None:
                pre()
            t = time.perf_counter()
            fused()
            times.append(time.perf_counter() - t)
        print(f"{name}: {statistics.median(times) * 1e3:.1f} ms", flush=True)


if __name__ == "__main__":
    main()

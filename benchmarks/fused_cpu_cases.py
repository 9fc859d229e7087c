"""Cases of the fused-CPU benchmarks (#17): each public op, forward and forward+backward, with our
fused kernels (backend="cpu"), the tiled torch path (backend="torch") and KeOps' CPU backend where
pykeops is installed, plus torch.exp's throughput as the yardstick.

``pair_evals`` counts the kernel evaluations of one call (the exps): mmd_field and svgd_field
evaluate two pair sums, kernel_integral and kde_score one. Shared by test_bench_fused_cpu.py
(pytest-benchmark) and fused_cpu_interleaved.py (alternating rounds, for RESULTS.md).
"""

import torch

import gpflow_kernels as gk

SIZES = [(4096, 2), (4096, 64)]
OPS = ["mmd_field", "kernel_integral", "kde_score", "svgd_field"]


def points(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def inputs(op, n, d):
    x, y = points(n, d, 0), points(n, d, 1) + 0.5
    s = (0.3 if op == "kde_score" else 0.5) * d**0.5
    extra = points(n, 4, 2) if op == "kernel_integral" else (-x if op == "svgd_field" else None)
    return x, y, s, extra


def pair_evals(op, n):
    return 2 * n * n if op in ("mmd_field", "svgd_field") else n * n


def ours(op, backend, x, y, s, extra):
    if op == "mmd_field":
        return gk.mmd_field(x, y, bandwidth=s, backend=backend)
    if op == "kernel_integral":
        return gk.kernel_integral(x, y, extra, bandwidth=s, backend=backend)
    if op == "kde_score":
        return gk.kde_score(x, y, bandwidth=s, backend=backend)
    return gk.svgd_field(x, extra, bandwidth=s, backend=backend)


def keops(op, x, y, s, extra):
    import keops_ops

    if op == "svgd_field":
        return keops_ops.svgd_field(x, extra, s)
    if op == "kernel_integral":
        return keops_ops.kernel_integral(x, y, extra, s)
    return getattr(keops_ops, op)(x, y, s)


def make(op, impl, n, d, backward):
    """A no-argument callable running the case; with ``backward``, the gradient of a fixed random
    projection of the output with respect to x as well."""
    x, y, s, extra = inputs(op, n, d)
    if impl == "keops":
        f = lambda a: keops(op, a, y, s, extra)
    else:
        backend = {"fused": "cpu", "tiled": "torch"}[impl]
        f = lambda a: ours(op, backend, a, y, s, extra)
    if not backward:
        return lambda: f(x)
    r = torch.randn(f(x).shape, generator=torch.Generator().manual_seed(5))

    def fwd_bwd():
        xr = x.detach().requires_grad_(True)
        (f(xr) * r).sum().backward()
        return xr.grad

    return fwd_bwd


def exp_rate(threads, n=1 << 14, reps=200):
    """torch.exp elements per second over a cache-resident float32 tensor with ``threads`` threads."""
    import time

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t = -3 * torch.rand(n * threads)
        out = torch.empty_like(t)
        for _ in range(20):
            torch.exp(t, out=out)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(reps):
                torch.exp(t, out=out)
            times.append((time.perf_counter() - start) / reps)
        return t.numel() / sorted(times)[2]
    finally:
        torch.set_num_threads(before)

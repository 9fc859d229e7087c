"""Each op's tiled torch path (backend="torch") against its naive dense torch version (and KeOps,
where pykeops is installed), in the same pytest-benchmark group. The fused CPU kernels, the CPU
default since #17, are compared with both in test_bench_fused_cpu.py.

Run: pytest benchmarks --benchmark-only   (ratios: python benchmarks/report.py FILE.json)
"""

import pytest
import torch

import gpflow_kernels as gk
import naive

SIZES = [(1024, 2), (4096, 2), (4096, 64)]


def headline(p):  # the default run (benchmarks/conftest.py); --bench-full runs every size
    return (p["n"], p["d"]) == (4096, 2)


def points(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g)


def run(benchmark, fn):
    benchmark.pedantic(fn, rounds=9, warmup_rounds=2, iterations=1)


def keops_baseline(name, ours, *args):
    """The KeOps version of op ``name``, checked against ours on these inputs (first call compiles)."""
    pytest.importorskip("pykeops")
    import keops_ops

    fn = lambda: getattr(keops_ops, name)(*args)
    torch.testing.assert_close(fn(), ours(), rtol=1e-3, atol=1e-4)
    return fn


def pick(impl, name, ours, dense, *args):
    """What to time for ``impl``: ours (tiled), the naive dense version, or KeOps (checked)."""
    if impl == "tiled":
        return ours
    if impl == "naive":
        return lambda: dense(*args)
    return keops_baseline(name, ours, *args)


@pytest.mark.parametrize("n,d", SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("impl", ["tiled", "naive", "keops"])
def test_mmd_field(benchmark, impl, n, d):
    benchmark.group = f"mmd_field N=M={n} D={d}"
    x, y, s = points(n, d, 0), points(n, d, 1) + 0.5, 0.5 * d**0.5
    run(benchmark, pick(impl, "mmd_field", lambda: gk.mmd_field(x, y, bandwidth=s, backend="torch"), naive.mmd_field, x, y, s))


@pytest.mark.parametrize("n,d", SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("impl", ["tiled", "naive"])
def test_mmd2_value_and_grad(benchmark, impl, n, d):
    benchmark.group = f"mmd2+grad N=M={n} D={d}"
    x, y, s = points(n, d, 0), points(n, d, 1) + 0.5, 0.5 * d**0.5

    def tiled():
        xr = x.clone().requires_grad_(True)
        val = gk.mmd2(xr, y, bandwidth=s, backend="torch")
        val.backward()
        return val, xr.grad

    run(benchmark, tiled if impl == "tiled" else (lambda: naive.mmd2_with_grad(x, y, s)))


@pytest.mark.parametrize("n,d", SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("impl", ["tiled", "naive", "keops"])
def test_kernel_integral(benchmark, impl, n, d):
    benchmark.group = f"kernel_integral P=4 N=M={n} D={d}"
    x, y, v, s = points(n, d, 0), points(n, d, 1), points(n, 4, 2), 0.5 * d**0.5
    run(benchmark, pick(impl, "kernel_integral", lambda: gk.kernel_integral(x, y, v, bandwidth=s, backend="torch"), naive.kernel_integral, x, y, v, s))


@pytest.mark.parametrize("n,d", SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("impl", ["tiled", "naive", "keops"])
def test_kde_score(benchmark, impl, n, d):
    benchmark.group = f"kde_score N=M={n} D={d}"
    x, y, s = points(n, d, 0), points(n, d, 1), 0.3 * d**0.5
    run(benchmark, pick(impl, "kde_score", lambda: gk.kde_score(x, y, bandwidth=s, backend="torch"), naive.kde_score, x, y, s))


@pytest.mark.parametrize("n,d", SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("impl", ["tiled", "naive"])
def test_svgd_field(benchmark, impl, n, d):
    benchmark.group = f"svgd_field N={n} D={d}"
    x = points(n, d, 0)
    score = -x
    s = 0.5 * d**0.5
    run(benchmark, (lambda: gk.svgd_field(x, score, bandwidth=s, backend="torch")) if impl == "tiled" else (lambda: naive.svgd_field(x, score, s)))

"""Our GPU backends (Triton, CUDA) against the tiled torch path, naive dense torch and KeOps.

Skipped without CUDA. Run on a GPU: pytest benchmarks -k gpu --benchmark-only
(for pairs/s and the fraction of the exp ceiling, run benchmarks/gpu_check.py). Every baseline
and backend is checked against the tiled torch path on the same inputs before it is timed.
"""

import pytest
import torch

import gpflow_kernels as gk
import naive
from gpflow_kernels.reference import EXACT_MAX_D
from gpu_check import TF32, call

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
pytest.importorskip("triton")

SIZES = [(1_000, 2), (10_000, 2), (100_000, 3), (10_000, 16), (10_000, 64), (10_000, 128), (1_000_000, 2)]


def headline(p):  # the default run (benchmarks/conftest.py); --bench-full runs every size
    return (p["n"], p["d"]) in {(10_000, 2), (10_000, 64)}
# triton-tf32x3 / triton-tf32: Triton under torch.set_float32_matmul_precision("high") / ("medium").
IMPLS = ["triton", *TF32, "cuda", "tiled", "naive", "keops"]
# name -> (ours(x, y, v, s, backend), naive(x, y, v, s), KeOps baseline name or None)
OPS = {
    "mmd_field": (lambda x, y, v, s, be: gk.mmd_field(x, y, bandwidth=s, backend=be), lambda x, y, v, s: naive.mmd_field(x, y, s)),
    "kernel_integral": (lambda x, y, v, s, be: gk.kernel_integral(x, y, v, bandwidth=s, backend=be),
                        lambda x, y, v, s: naive.kernel_integral(x, y, v, s)),
    "kde_score": (lambda x, y, v, s, be: gk.kde_score(x, y, bandwidth=s, backend=be), lambda x, y, v, s: naive.kde_score(x, y, s)),
}


def run(benchmark, fn):
    def timed():
        out = fn()
        torch.cuda.synchronize()
        return out

    benchmark.pedantic(timed, rounds=10, warmup_rounds=2, iterations=1)


def implementation(op, impl, n, d, args):
    """The callable to time, checked against the tiled torch path first (skips what cannot run)."""
    ours, dense = OPS[op]
    if impl == "naive" and n * n > 2e8:
        pytest.skip("dense pair matrix does not fit")
    if impl == "tiled" and n * n > 1e11:
        pytest.skip("too slow for the tiled torch path")
    if impl == "cuda":
        from gpflow_kernels import _cuda

        if not _cuda.available():
            pytest.skip(f"CUDA extension not built: {_cuda.IMPORT_ERROR}")
        if d > _cuda.MAX_D:
            pytest.skip(f"the CUDA kernels take D <= {_cuda.MAX_D}")
    if impl in TF32 and d <= EXACT_MAX_D:
        pytest.skip("exact differences at this D: the distances are not dots")
    if impl == "keops":
        pytest.importorskip("pykeops")
        import keops_ops

        fn = lambda: getattr(keops_ops, op)(*(args if op == "kernel_integral" else (args[0], args[1], args[3])))
    elif impl == "naive":
        fn = lambda: dense(*args)
    else:
        fn = lambda: call(ours, args, "torch" if impl == "tiled" else impl)
    if impl != "tiled" and n * n <= 1e11:
        tol = 1e-2 if impl == "triton-tf32" else 1e-3
        torch.testing.assert_close(fn(), ours(*args, "torch"), rtol=tol, atol=tol / 10)
    return fn


@pytest.mark.parametrize("n,d", SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", list(OPS))
def test_op_gpu(benchmark, op, impl, n, d):
    benchmark.group = f"{op} cuda N=M={n} D={d}"
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, d, device="cuda", generator=g)
    y = torch.randn(n, d, device="cuda", generator=g) + 0.5
    v = torch.randn(n, 4, device="cuda", generator=g)
    args = (x, y, v, 0.5 * d**0.5)
    run(benchmark, implementation(op, impl, n, d, args))

"""Triton kernels against the tiled torch path, naive dense torch and KeOps, on a CUDA device.

Skipped without CUDA. Run on a GPU: pytest benchmarks -k triton --benchmark-only
(for pairs/s and the fraction of the exp ceiling, run benchmarks/gpu_check.py).
"""

import pytest
import torch

import gpflow_kernels as gk
import naive

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
pytest.importorskip("triton")

SIZES = [(1_000, 2), (10_000, 2), (100_000, 3), (10_000, 16), (10_000, 64), (10_000, 128), (1_000_000, 2)]
IMPLS = ["triton", "tiled", "naive", "keops"]


def run(benchmark, fn):
    def timed():
        out = fn()
        torch.cuda.synchronize()
        return out

    benchmark.pedantic(timed, rounds=10, warmup_rounds=2, iterations=1)


@pytest.mark.parametrize("n,d", SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("impl", IMPLS)
def test_mmd_field_gpu(benchmark, impl, n, d):
    benchmark.group = f"mmd_field cuda N=M={n} D={d}"
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, d, device="cuda", generator=g)
    y = torch.randn(n, d, device="cuda", generator=g) + 0.5
    s = 0.5 * d**0.5
    if impl == "naive" and n * n > 2e8:
        pytest.skip("dense pair matrix does not fit")
    if impl == "tiled" and n * n > 1e11:
        pytest.skip("too slow for the tiled torch path")
    if impl == "keops":
        pytest.importorskip("pykeops")
        import keops_ops

        fn = lambda: keops_ops.mmd_field(x, y, s)
    elif impl == "naive":
        fn = lambda: naive.mmd_field(x, y, s)
    else:
        fn = lambda: gk.mmd_field(x, y, bandwidth=s, backend="triton" if impl == "triton" else "torch")
    run(benchmark, fn)

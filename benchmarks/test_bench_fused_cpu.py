"""Fused CPU kernels (#17): each op, forward and forward+backward, fused vs tiled torch vs KeOps
CPU (where pykeops is installed), in one pytest-benchmark group per case; plus torch.exp's
throughput as the yardstick. Ratios: python benchmarks/report.py FILE.json. For RESULTS.md we use
fused_cpu_interleaved.py, which alternates the implementations round by round.
"""

import pytest
import torch

from gpflow_kernels import _cpu
from fused_cpu_cases import OPS, SIZES, make


def headline(p):  # the default run (benchmarks/conftest.py): forward at D = 64, and the exp yardstick
    return not p or ((p["n"], p["d"]) == (4096, 64) and not p["backward"])

pytestmark = pytest.mark.skipif(not _cpu.available(), reason="the CPU extension is not built")


@pytest.mark.parametrize("n,d", SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("impl", ["fused", "tiled", "keops"])
def test_fused_cpu(benchmark, impl, op, backward, n, d):
    if impl == "keops":
        pytest.importorskip("pykeops")
    benchmark.group = f"cpu {op} {'fwd+bwd' if backward else 'fwd'} N=M={n} D={d} threads={torch.get_num_threads()}"
    fn = make(op, impl, n, d, backward)
    if impl != "tiled":
        ref = make(op, "tiled", n, d, backward)()
        torch.testing.assert_close(fn(), ref, rtol=2e-3, atol=2e-4 * float(ref.abs().max()))
    benchmark.pedantic(fn, rounds=7, warmup_rounds=1, iterations=1)


def test_exp_throughput(benchmark):
    """torch.exp over a cache-resident float32 tensor (the pairs/s yardstick)."""
    t = -3 * torch.rand(1 << 14)
    out = torch.empty_like(t)
    benchmark.group = f"cpu torch.exp 16384 floats threads={torch.get_num_threads()}"
    benchmark.pedantic(lambda: torch.exp(t, out=out), rounds=50, warmup_rounds=5, iterations=20)

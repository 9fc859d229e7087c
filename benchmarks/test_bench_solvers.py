"""Fixed-step loops against torchsde (euler + BrownianInterval) and torchdiffeq (rk4, fixed step).

A cheap linear (Ornstein–Uhlenbeck) field, so the figures measure the integrators' own cost.
"ours-compiled" is the same loop with ``compile=True`` (the warm-up round pays the compile).
Run: pytest benchmarks -k solvers --benchmark-only
"""

import pytest
import torch

import solvers

torchsde = pytest.importorskip("torchsde")
torchdiffeq = pytest.importorskip("torchdiffeq")

CASES = [(10_000, 2, 100), (10_000, 64, 100), (100_000, 2, 100), (10_000, 2, 1000), (1_000_000, 2, 100), (100_000, 64, 100)]


def headline(p):  # the default run (benchmarks/conftest.py): one small and one large case
    return (p["n"], p["d"], p["steps"]) in {(10_000, 2, 100), (100_000, 64, 100)}


class OU(solvers.SDE):
    noise_type = "diagonal"

    def drift(self, t, x):
        return -x

    def diffusion(self, t, x):
        return torch.full_like(x, 0.5)


def field(t, x):
    return -x


def run(benchmark, fn):
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("n,d,steps", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("impl", ["ours", "ours-compiled", "torchsde"])
def test_sde_euler(benchmark, impl, n, d, steps):
    benchmark.group = f"sde euler N={n} D={d} steps={steps}"
    x0 = torch.randn(n, d)
    ts = torch.tensor([0.0, 1.0])
    dt = 1.0 / steps
    sde = OU()
    if impl.startswith("ours"):
        g = torch.Generator().manual_seed(0)
        kw = dict(compile=impl == "ours-compiled")
        run(benchmark, lambda: solvers.sdeint(sde, x0, ts, dt=dt, generator=g, save="last", **kw))
    else:
        def theirs():
            bm = torchsde.BrownianInterval(t0=0.0, t1=1.0, size=x0.shape, dt=dt, entropy=0, levy_area_approximation="none")
            return torchsde.sdeint(sde, x0, ts, method="euler", dt=dt, bm=bm)[-1]
        run(benchmark, theirs)


@pytest.mark.parametrize("n,d,steps", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("impl", ["ours", "ours-compiled", "torchdiffeq"])
def test_ode_rk4(benchmark, impl, n, d, steps):
    benchmark.group = f"ode rk4 N={n} D={d} steps={steps}"
    x0 = torch.randn(n, d)
    ts = torch.tensor([0.0, 1.0])
    grid = torch.linspace(0.0, 1.0, steps + 1)
    if impl.startswith("ours"):
        kw = dict(compile=impl == "ours-compiled")
        run(benchmark, lambda: solvers.odeint(field, x0, grid, method="rk4", save="last", **kw))
    else:
        run(benchmark, lambda: torchdiffeq.odeint(field, x0, ts, method="rk4", options=dict(step_size=1.0 / steps))[-1])


# ---- On a GPU: the same loops on CUDA, eager, compiled and graph-replayed ---------------------
# (launch-bound at these sizes, which is what graph capture removes; the field is still -x).
GPU_CASES = [(10_000, 2, 1000), (1_000_000, 2, 100), (100_000, 64, 100)]
on_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def synced(fn):
    def call():
        out = fn()
        torch.cuda.synchronize()
        return out
    return call


@on_gpu
@pytest.mark.parametrize("n,d,steps", GPU_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("impl", ["ours", "ours-compiled", "ours-graph", "torchsde"])
def test_sde_euler_cuda(benchmark, impl, n, d, steps):
    benchmark.group = f"sde euler cuda N={n} D={d} steps={steps}"
    x0 = torch.randn(n, d, device="cuda")
    ts = torch.tensor([0.0, 1.0], device="cuda")
    dt = 1.0 / steps
    if impl.startswith("ours"):
        g = torch.Generator(device="cuda").manual_seed(0)
        kw = dict(compile=impl == "ours-compiled", cuda_graph=impl == "ours-graph")
        run(benchmark, synced(lambda: solvers.sdeint(OU(), x0, ts, dt=dt, generator=g, save="last", **kw)))
    else:
        def theirs():
            bm = torchsde.BrownianInterval(t0=0.0, t1=1.0, size=x0.shape, dt=dt, entropy=0, device="cuda",
                                           levy_area_approximation="none")
            return torchsde.sdeint(OU(), x0, ts, method="euler", dt=dt, bm=bm)[-1]
        run(benchmark, synced(theirs))


@on_gpu
@pytest.mark.parametrize("n,d,steps", GPU_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("impl", ["ours", "ours-compiled", "ours-graph", "torchdiffeq"])
def test_ode_rk4_cuda(benchmark, impl, n, d, steps):
    benchmark.group = f"ode rk4 cuda N={n} D={d} steps={steps}"
    x0 = torch.randn(n, d, device="cuda")
    grid = torch.linspace(0.0, 1.0, steps + 1, device="cuda")
    if impl.startswith("ours"):
        kw = dict(compile=impl == "ours-compiled", cuda_graph=impl == "ours-graph")
        run(benchmark, synced(lambda: solvers.odeint(field, x0, grid, method="rk4", save="last", **kw)))
    else:
        ts = torch.tensor([0.0, 1.0], device="cuda")
        run(benchmark, synced(lambda: torchdiffeq.odeint(field, x0, ts, method="rk4", options=dict(step_size=1.0 / steps))[-1]))

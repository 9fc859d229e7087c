"""The compiled and CUDA-graph loops of odeint/sdeint give the eager loop's numbers.

The real CUDA-graph capture needs a GPU (the ``cuda`` tests below). On the CPU the graph loop's
plumbing (static buffers, per-step inputs, increments drawn outside the graph, saved states,
callbacks, the on-device finiteness check) runs with a stand-in capture that re-runs the captured
step and writes into the same output buffer, as a graph replay does.
"""

import re

import pytest
import torch

import solvers
from solvers import SDE, NonFiniteError, _graph, odeint, sdeint

F64 = torch.float64


class OU(SDE):
    noise_type = "additive"

    def drift(self, t, x):
        return -1.5 * x + torch.sin(3 * t)

    def diffusion(self, t, x):
        return torch.full_like(x, 0.8) * (1 + t)


class Multiplicative(SDE):
    """State-dependent (diagonal) noise: the increments enter through g(x)."""

    noise_type = "diagonal"

    def drift(self, t, x):
        return -x * torch.cos(t)

    def diffusion(self, t, x):
        return 0.3 * torch.sqrt(1 + x * x)


class Explode(OU):
    def drift(self, t, x):
        return x**3 * 1e4


class ReplayOnCPU:
    """Stand-in for CudaCapture: replay() re-runs the step into the captured output buffer."""

    def capture(self, run):
        run(), run()  # the warm-ups
        self.run, self.out = run, run()
        return self.out

    def replay(self):
        self.out.copy_(self.run())


@pytest.fixture
def cpu_graphs(monkeypatch):
    monkeypatch.setattr(_graph, "CudaCapture", ReplayOnCPU)
    monkeypatch.setattr(_graph, "check_options", lambda x, compile, cuda_graph: None)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def x0(n=16, d=2):
    return torch.randn(n, d, dtype=F64, generator=gen(11))


TS = torch.tensor([0.0, 0.1, 0.35, 1.0], dtype=F64)  # uneven: one graph must serve all step sizes


def sde_cases():
    ts_back = TS.flip(0)
    return {
        "em": dict(sde=OU(), ts=TS, kw=dict(dt=0.05)),
        "heun": dict(sde=OU(), ts=TS, kw=dict(dt=0.05, method="heun")),
        "diagonal-backwards": dict(sde=Multiplicative(), ts=ts_back, kw=dict(dt=0.05)),
        "given-increments": dict(sde=OU(), ts=TS, kw=dict(bm=torch.randn(3, 16, 2, dtype=F64, generator=gen(5)) * 0.3)),
        "brownian-backwards": dict(sde=Multiplicative(), ts=ts_back, kw=dict(dt=0.05, bm=solvers.brownian_interval(x0(), 0.0, 1.0, 0.05, seed=1))),
    }


def run_sde(case, seed=1, **extra):
    c = sde_cases()[case]
    kw = dict(c["kw"])
    if "bm" not in kw:
        kw["generator"] = gen(seed)
    return sdeint(c["sde"], x0(), c["ts"], **kw, **extra)


@pytest.mark.parametrize("case", list(sde_cases()))
def test_sde_graph_loop_plumbing_matches_eager(cpu_graphs, case):
    seen = {}
    eager = run_sde(case, callback=lambda i, t, x: seen.setdefault("eager", []).append((i, float(t), x.clone())))
    graph = run_sde(case, cuda_graph=True, callback=lambda i, t, x: seen.setdefault("graph", []).append((i, float(t), x.clone())))
    torch.testing.assert_close(graph, eager, rtol=1e-13, atol=1e-13)
    assert [(i, t) for i, t, _ in seen["graph"]] == [(i, t) for i, t, _ in seen["eager"]]
    for (_, _, a), (_, _, b) in zip(seen["graph"], seen["eager"]):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    last = run_sde(case, cuda_graph=True, save="last")
    torch.testing.assert_close(last, eager[-1], rtol=1e-13, atol=1e-13)


def test_sde_saves_the_requested_times_on_a_backwards_substepped_grid():
    # dt splits each interval; the rows of the output must still follow ts (here decreasing).
    ts = torch.tensor([1.0, 0.5, 0.0], dtype=F64)
    dw = torch.randn(4, 5, 1, dtype=F64, generator=gen(2)) * 0.1
    got = sdeint(OU(), torch.ones(5, 1, dtype=F64), ts, dt=0.25, bm=dw)
    want, x, grid = [torch.ones(5, 1, dtype=F64)], torch.ones(5, 1, dtype=F64), torch.linspace(1, 0, 5, dtype=F64)
    sde = OU()
    for k in range(4):
        x = x + (grid[k + 1] - grid[k]) * sde.drift(grid[k], x) + sde.diffusion(grid[k], x) * dw[k]
        if k in (1, 3):
            want.append(x)
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun", "rk4"])
def test_ode_graph_loop_plumbing_matches_eager(cpu_graphs, method):
    field = lambda t, x: -2 * x + torch.cos(t)
    ts = solvers.karras_sigmas(9, 0.01, 2.0, append_zero=False).to(F64).flip(0)
    eager = odeint(field, x0(), ts, method=method)
    torch.testing.assert_close(odeint(field, x0(), ts, method=method, cuda_graph=True), eager, rtol=1e-13, atol=1e-13)


def test_graph_loop_names_the_same_non_finite_step_as_eager(cpu_graphs):
    def message(**kw):
        with pytest.raises(NonFiniteError) as err:
            sdeint(Explode(), torch.ones(3, 2, dtype=F64), torch.linspace(0, 1, 100, dtype=F64), generator=gen(0), **kw)
        return str(err.value)

    eager, graph = message(), message(cuda_graph=True)
    assert re.search(r"non-finite at step \d+ \(t = ", eager)
    assert graph == eager
    with pytest.raises(NonFiniteError, match=r"at step \d+"):
        odeint(lambda t, x: x * x * 1e3, torch.ones(3, 2), torch.linspace(0, 1, 50), method="euler", cuda_graph=True)


@pytest.mark.parametrize("case", ["em", "heun"])
def test_sde_compiled_loop_matches_eager(case):
    eager = run_sde(case)
    torch.testing.assert_close(run_sde(case, compile=True), eager, rtol=1e-12, atol=1e-12)


def test_bad_fast_loop_options():
    with pytest.raises(ValueError, match="cuda_graph=True needs particles on a CUDA device"):
        sdeint(OU(), torch.ones(3, 2), TS, cuda_graph=True)
    with pytest.raises(ValueError, match="choose one of compile=True and cuda_graph=True"):
        sdeint(OU(), torch.ones(3, 2), TS, compile=True, cuda_graph=True)
    with pytest.raises(ValueError, match='not "edm"'):
        sdeint(solvers.KDEDenoiser(torch.zeros(2, 2)), torch.ones(3, 2), solvers.karras_sigmas(3), method="edm", compile=True)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph capture needs a CUDA device (none on CI)")


@cuda
@pytest.mark.parametrize("method", ["euler_maruyama", "heun"])
def test_sde_cuda_graph_matches_eager_on_the_gpu(method):
    g = lambda: torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(256, 3, device="cuda", generator=g())
    ts = torch.linspace(0, 1, 31, device="cuda")
    eager = sdeint(OU(), x, ts, method=method, generator=g())
    graph = sdeint(OU(), x, ts, method=method, generator=g(), cuda_graph=True)
    torch.testing.assert_close(graph, eager, rtol=1e-5, atol=1e-6)


@cuda
def test_cuda_graph_non_finite_step_on_the_gpu():
    with pytest.raises(NonFiniteError, match=r"at step \d+"):
        sdeint(Explode(), torch.ones(3, 2, device="cuda"), torch.linspace(0, 1, 100, device="cuda"),
               generator=torch.Generator(device="cuda").manual_seed(0), cuda_graph=True)


def test_lazy_finite_watch_names_the_first_bad_step():
    # The device-side bookkeeping used on GPUs (no host sync per step), exercised on the CPU.
    from solvers._checks import FiniteWatch

    t_at = list(torch.linspace(0, 1, 6).unbind())
    x = torch.ones(4, 2)
    watch = FiniteWatch(x, t_at, enabled=True, lazy=True)
    for step in range(1, 6):
        state = x.clone()
        if step >= 3:
            state[step - 3, 0] = float("nan") if step % 2 else float("inf")
        watch.after(state, step)
    with pytest.raises(NonFiniteError, match=r"at step 3 \(t = 0\.6\)"):
        watch.finish()
    quiet = FiniteWatch(x, t_at, enabled=True, lazy=True)
    for step in range(1, 6):
        quiet.after(x, step)
    quiet.finish()
    assert not FiniteWatch(x, t_at, enabled=True).lazy  # immediate checks on the CPU

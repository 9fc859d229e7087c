"""Adaptive odeint (dopri5, bosh3): agreement and NFE against torchdiffeq, dense output, errors."""

import functools
from fractions import Fraction as Fr

import pytest
import torch

import solvers
from solvers import NonFiniteError, PIController, SolverStats, odeint
from solvers.adaptive import BOSH3, DOPRI5

torchdiffeq = pytest.importorskip("torchdiffeq")

_A = torch.tensor([[0.3, -0.8, 0.1], [0.5, 0.2, -0.4], [-0.2, 0.6, 0.1]], dtype=torch.float64)
PROBLEMS = {
    # name: (field, x0, t0, t1)
    "nonlinear": (lambda t, x: torch.tanh(x @ _A) + 0.3 * torch.sin(t) * x,
                  torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(4, 3), 0.0, 3.0),
    "oscillator": (lambda t, x: torch.stack([x[..., 1], -x[..., 0]], -1),
                   torch.tensor([[1.0, 0.0], [0.3, -0.5]], dtype=torch.float64), 0.0, 10.0),
    "van_der_pol": (lambda t, x: torch.stack([x[..., 1], 2 * (1 - x[..., 0] ** 2) * x[..., 1] - x[..., 0]], -1),
                    torch.tensor([[2.0, 0.0]], dtype=torch.float64), 0.0, 6.0),
    "backward": (lambda t, x: torch.cos(t) * x - 0.1 * x, torch.ones(3, 2, dtype=torch.float64), 4.0, 0.0),
}


@functools.lru_cache(maxsize=None)
def reference(name, n_times):
    """torchdiffeq's dopri5 at rtol = atol = 1e-12 (once per problem)."""
    f, x0, a, b = PROBLEMS[name]
    return torchdiffeq.odeint(f, x0, torch.linspace(a, b, n_times, dtype=torch.float64), method="dopri5",
                              rtol=1e-12, atol=1e-12)


def counted(f):
    calls = [0]

    def g(t, x):
        calls[0] += 1
        return f(t, x)

    return g, calls


@pytest.mark.parametrize("name", sorted(PROBLEMS))
@pytest.mark.parametrize("tol", [1e-5, 1e-8])
def test_dopri5_matches_torchdiffeq(name, tol):
    f, x0, a, b = PROBLEMS[name]
    ts = torch.linspace(a, b, 6, dtype=torch.float64)
    stats = SolverStats()
    ours = odeint(f, x0, ts, method="dopri5", rtol=tol, atol=tol, stats=stats)
    g, calls = counted(f)
    theirs = torchdiffeq.odeint(g, x0, ts, method="dopri5", rtol=tol, atol=tol)
    ref = reference(name, 6)
    scale = float((theirs - ref).abs().max()) + tol
    assert float((ours - ref).abs().max()) <= 3 * scale  # as accurate as torchdiffeq at this tolerance
    assert abs(stats.nfe - calls[0]) <= 0.1 * calls[0], (stats.nfe, calls[0])
    assert stats.nfe == 2 + 6 * stats.steps  # f(t0), the first-step probe, 6 per step (FSAL)


@pytest.mark.parametrize("name", ["nonlinear", "backward"])
def test_bosh3_matches_torchdiffeq_at_tight_tolerance(name):
    f, x0, a, b = PROBLEMS[name]
    ts = torch.linspace(a, b, 4, dtype=torch.float64)
    ours = odeint(f, x0, ts, method="bosh3", rtol=1e-9, atol=1e-9)
    ref = reference(name, 4)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-7)


def test_dense_output_is_fourth_order_not_clipped_steps():
    # Many output times inside few steps: the step count must not grow with the number of outputs,
    # and the interpolated values keep the solver's accuracy.
    f = lambda t, x: -2 * x + torch.cos(t)
    exact = lambda t: (1.5 - 0.4) * torch.exp(-2 * t) + 0.4 * torch.cos(t) + 0.2 * torch.sin(t)
    x0 = torch.full((2, 1), 1.5, dtype=torch.float64)
    few, many = SolverStats(), SolverStats()
    odeint(f, x0, torch.tensor([0.0, 2.0], dtype=torch.float64), method="dopri5", rtol=1e-6, atol=1e-6, stats=few)
    ts = torch.linspace(0, 2, 201, dtype=torch.float64)
    out = odeint(f, x0, ts, method="dopri5", rtol=1e-6, atol=1e-6, stats=many)
    assert many.nfe == few.nfe
    assert float((out[:, 0, 0] - exact(ts)).abs().max()) < 2e-5


@pytest.mark.parametrize("tab,bhat", [
    (DOPRI5, (Fr(1951, 21600), 0, Fr(22642, 50085), Fr(451, 720), Fr(-12231, 42400), Fr(649, 6300), Fr(1, 60))),
    (BOSH3, (Fr(7, 24), Fr(1, 4), Fr(1, 3), Fr(1, 8))),
])
def test_embedded_weights_satisfy_order_conditions(tab, bhat):
    # The float weights are the stated fractions, and b̂ (the error estimator) has order order − 1.
    b = [Fr(x).limit_denominator(10**7) for x in tab.b]
    assert all(abs(float(bi - Fr(x).limit_denominator(10**7))) < 1e-15 for bi, x in zip(b, tab.b))
    e = [bi - bh for bi, bh in zip(b, bhat)]
    assert max(abs(float(ei) - x) for ei, x in zip(e, tab.e)) < 1e-15
    c = [Fr(x).limit_denominator(10**4) for x in tab.c]
    a = [[]] + [[Fr(x).limit_denominator(10**7) for x in row] for row in tab.a]
    ac = [sum(aij * cj for aij, cj in zip(a[i], c)) for i in range(len(c))]
    conds = [(sum(bhat), 1), (sum(w * ci for w, ci in zip(bhat, c)), Fr(1, 2)),
             (sum(w * ci**2 for w, ci in zip(bhat, c)), Fr(1, 3)), (sum(w * x for w, x in zip(bhat, ac)), Fr(1, 6))]
    if tab is DOPRI5:
        ac2 = [sum(aij * cj**2 for aij, cj in zip(a[i], c)) for i in range(len(c))]
        aac = [sum(aij * x for aij, x in zip(a[i], ac)) for i in range(len(c))]
        conds += [(sum(w * ci**3 for w, ci in zip(bhat, c)), Fr(1, 4)),
                  (sum(w * ci * x for w, ci, x in zip(bhat, c, ac)), Fr(1, 8)),
                  (sum(w * x for w, x in zip(bhat, ac2)), Fr(1, 12)), (sum(w * x for w, x in zip(bhat, aac)), Fr(1, 24))]
    else:  # the 2nd-order estimator of a 3rd-order pair must not also be 3rd order
        conds = conds[:2]
    for got, want in conds:
        assert abs(float(got - want)) < 1e-12


def test_pi_controller_still_meets_tolerance():
    f, x0, a, b = PROBLEMS["van_der_pol"]
    ts = torch.tensor([a, b], dtype=torch.float64)
    ref = torchdiffeq.odeint(f, x0, ts, method="dopri5", rtol=1e-12, atol=1e-12)[-1]
    pi = SolverStats()
    out = odeint(f, x0, ts, method="dopri5", rtol=1e-7, atol=1e-7, save="last", controller=PIController(beta=0.04), stats=pi)
    assert float((out - ref).abs().max()) < 1e-4
    assert pi.accepted > 0


def test_callback_sees_every_output_time_and_float32_works():
    seen = []
    x0 = torch.ones(3, 2)
    ts = torch.linspace(0, 1, 5)
    out = odeint(lambda t, x: -x, x0, ts, method="dopri5", callback=lambda i, t, x: seen.append((i, float(t))))
    assert [i for i, _ in seen] == [1, 2, 3, 4] and out.dtype == torch.float32
    torch.testing.assert_close(out[-1], torch.full((3, 2), float(torch.exp(torch.tensor(-1.0)))), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw,match", [
    (dict(rtol=-1e-3), "rtol must be a finite number >= 0"),
    (dict(atol=float("nan")), "atol must be a finite number >= 0"),
    (dict(rtol=0.0, atol=0.0), "cannot both be 0"),
    (dict(max_steps=0), "max_steps must be a positive int"),
    (dict(first_step=-0.1), "first_step must be a number > 0"),
    (dict(adjoint=True, adjoint_rtol=-1.0), "adjoint_rtol must be"),
])
def test_bad_tolerances(kw, match):
    with pytest.raises(ValueError, match=match):
        odeint(lambda t, x: -x, torch.ones(2, 2), torch.linspace(0, 1, 3), method="dopri5", **kw)


def test_bad_grid_and_options():
    f = lambda t, x: -x
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        odeint(f, torch.ones(2, 2), torch.tensor([0.0, 0.5, 0.4]), method="dopri5")
    with pytest.raises(ValueError, match="cuda_graph=True needs a fixed-step method"):
        odeint(f, torch.ones(2, 2), torch.linspace(0, 1, 3), method="dopri5", cuda_graph=True)
    with pytest.raises(ValueError, match="adjoint=True needs an adaptive method"):
        odeint(f, torch.ones(2, 2), torch.linspace(0, 1, 3), method="rk4", adjoint=True)
    with pytest.raises(ValueError, match=r"shaped like the state \(2, 2\), got \(2,\)"):
        odeint(lambda t, x: x.sum(1), torch.ones(2, 2), torch.linspace(0, 1, 3), method="dopri5")


def test_max_steps_names_t():
    with pytest.raises(RuntimeError, match=r"max_steps=5 reached at t = [0-9.]+ before t = 10"):
        odeint(lambda t, x: torch.cos(10 * t) * x, torch.ones(2, 2), torch.tensor([0.0, 10.0]), method="dopri5", max_steps=5)


def test_blow_up_is_a_step_size_underflow_naming_t():
    # x' = x² from x = 1 reaches infinity at t = 1.
    with pytest.raises(RuntimeError, match=r"step size underflow at t = (0\.99|1 )"):
        odeint(lambda t, x: x * x, torch.ones(1, 1, dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64),
               method="dopri5")


def test_non_finite_field_names_the_step():
    def f(t, x):
        return torch.where(t > 0.5, torch.full_like(x, float("nan")), -x)

    with pytest.raises(NonFiniteError, match=r"non-finite at step \d+ \(t = 0\.5"):
        odeint(f, torch.ones(2, 2), torch.tensor([0.0, 1.0]), method="dopri5")


def test_gradients_flow_through_the_steps():
    # Backprop through an adaptive solve (no adjoint): d x(1)/d x0 = e^{-1} for x' = -x.
    x0 = torch.ones(2, 2, dtype=torch.float64, requires_grad=True)
    out = odeint(lambda t, x: -x, x0, torch.tensor([0.0, 1.0], dtype=torch.float64), method="dopri5",
                 rtol=1e-10, atol=1e-10, save="last")
    (g,) = torch.autograd.grad(out.sum(), x0)
    torch.testing.assert_close(g, torch.full_like(g, 0.36787944117144233), rtol=1e-8, atol=0)


@pytest.mark.slow
def test_compile_compiles_the_field_and_gives_the_eager_numbers():
    f = lambda t, x: -x * torch.cos(t)
    ts = torch.linspace(0, 1, 3)
    compiled, eager = SolverStats(), SolverStats()
    a = odeint(f, torch.ones(4, 2), ts, method="dopri5", compile=True, stats=compiled)
    b = odeint(f, torch.ones(4, 2), ts, method="dopri5", stats=eager)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert compiled.nfe == eager.nfe

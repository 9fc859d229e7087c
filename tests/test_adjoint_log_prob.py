"""Adjoint gradients (vs backprop and finite differences, float64) and exact likelihoods."""

import math

import pytest
import torch

import solvers
from solvers import SolverStats, odeint


class TimeField(torch.nn.Module):
    """A small non-autonomous network field (N, D) -> (N, D)."""

    def __init__(self, d=2, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(d + 1, 8), torch.nn.Tanh(), torch.nn.Linear(8, d)).double()

    def forward(self, t, x):
        return self.net(torch.cat([x, t.expand(x.shape[0], 1)], 1))


def _grads(f, x0, ts, w, adjoint, **kw):
    out = odeint(f, x0, ts, method="dopri5", rtol=1e-10, atol=1e-10, adjoint=adjoint, **kw)
    wrt = [x0, *f.parameters()] + ([ts] if adjoint else [])
    return torch.autograd.grad((out * w).sum(), wrt)


def test_adjoint_matches_backprop_and_finite_differences_in_x0_params_and_times():
    f = TimeField()
    x0 = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    ts = torch.tensor([0.0, 0.4, 1.1], dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    stats = SolverStats()
    adj = _grads(f, x0, ts, w, True, stats=stats)
    direct = _grads(f, x0, ts, w, False)
    for a, b in zip(adj, direct):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)
    assert stats.adjoint_nfe > 0 and stats.nfe > 0
    # Times by central differences of the loss.
    eps = 1e-6
    for i in range(3):
        loss = []
        for s in (eps, -eps):
            tp = ts.detach().clone()
            tp[i] += s
            with torch.no_grad():
                loss.append(float((odeint(f, x0.detach(), tp, method="dopri5", rtol=1e-12, atol=1e-12) * w).sum()))
        assert float(adj[-1][i]) == pytest.approx((loss[0] - loss[1]) / (2 * eps), rel=1e-5, abs=1e-7)


def test_adjoint_tolerances_are_separate_and_memory_does_not_hold_the_steps():
    f = TimeField(seed=3)
    x0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4)).requires_grad_()
    ts = torch.tensor([0.0, 2.0], dtype=torch.float64)
    loose, tight = SolverStats(), SolverStats()
    out = odeint(f, x0, ts, method="dopri5", adjoint=True, adjoint_rtol=1e-4, adjoint_atol=1e-4, stats=loose, save="last")
    # The forward graph is one node over the inputs: no per-step tensors are kept for backward.
    node = out.grad_fn
    while node is not None and "Adjoint" not in type(node).__name__:
        node = node.next_functions[0][0]
    assert node is not None and len(node.saved_tensors) == 1 + len(list(f.parameters()))  # outputs at ts + params
    out.sum().backward()
    odeint(f, x0, ts, method="dopri5", adjoint=True, adjoint_rtol=1e-10, adjoint_atol=1e-10, stats=tight,
           save="last").sum().backward()
    assert loose.nfe == tight.nfe and loose.adjoint_nfe < tight.adjoint_nfe


# ----- likelihood -----------------------------------------------------------------------------

def gaussian_case(d=3, seed=0):
    """N(m, S) data with a full covariance; the EDM flow's exact denoiser and marginal log-densities."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, dtype=torch.float64, generator=g)
    S = a @ a.T / d + 0.2 * torch.eye(d, dtype=torch.float64)
    m = torch.randn(d, dtype=torch.float64, generator=g)
    eye = torch.eye(d, dtype=torch.float64)

    def denoiser(x, sigma):  # E[y | y + σε = x] = x − σ² (S + σ² I)^{-1} (x − m)
        return x - sigma**2 * torch.linalg.solve(S + sigma**2 * eye, (x - m).T).T

    def log_density(sigma):
        return torch.distributions.MultivariateNormal(m, S + sigma**2 * eye).log_prob

    x = m + torch.randn(6, d, dtype=torch.float64, generator=g) @ torch.linalg.cholesky(S).T
    return denoiser, log_density, x


def test_log_prob_exact_divergence_recovers_the_gaussian_log_density():
    denoiser, log_density, x = gaussian_case()
    smin, smax = 0.01, 40.0
    lp = solvers.log_prob(solvers.EDMFlow(denoiser), x, torch.tensor([smin, smax]), log_density(smax),
                          rtol=1e-7, atol=1e-7)
    assert lp.shape == (6,)
    assert float((lp - log_density(smin)(x)).abs().max()) < 1e-4


def test_log_prob_hutchinson_is_unbiased_within_its_monte_carlo_error():
    denoiser, log_density, x = gaussian_case()
    smin, smax = 0.05, 20.0
    xr = x[:1].expand(400, -1).contiguous()  # each copy gets its own probe: 400 independent estimates
    est = solvers.log_prob(solvers.EDMFlow(denoiser), xr, torch.tensor([smin, smax]), log_density(smax),
                           divergence="hutchinson", seed=7, rtol=1e-6, atol=1e-6)
    exact = float(log_density(smin)(x[:1]))
    se = float(est.std()) / math.sqrt(len(est))
    assert float(est.std()) > 1e-3  # the Jacobian is not diagonal: the estimator really varies
    assert abs(float(est.mean()) - exact) < 4 * se
    more = solvers.log_prob(solvers.EDMFlow(denoiser), xr, torch.tensor([smin, smax]), log_density(smax),
                            divergence="hutchinson", n_probes=4, seed=7, rtol=1e-6, atol=1e-6)
    assert float(more.std()) < 0.7 * float(est.std())  # four probes: half the spread


def test_vp_flow_log_prob_on_gaussian_data():
    s2 = torch.tensor([0.25, 2.0], dtype=torch.float64)
    flow = solvers.VPFlow(lambda t, x: None)
    var = lambda t: flow.alpha(t) ** 2 * s2 + 1 - flow.alpha(t) ** 2  # x_t = α x_0 + √(1 − α²) ε
    flow.score = lambda t, x: -x / var(t)
    x = torch.tensor([[0.3, -1.0], [1.0, 2.0]], dtype=torch.float64)
    t0, t1 = 1e-3, 1.0

    def gauss(t):
        v = var(torch.tensor(t, dtype=torch.float64))
        return lambda z: (-0.5 * z**2 / v - 0.5 * torch.log(2 * math.pi * v)).sum(1)

    lp = solvers.log_prob(flow, x, torch.tensor([t0, t1]), gauss(t1), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(lp, gauss(t0)(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_log_prob_gradients_adjoint_backprop_and_finite_differences(divergence):
    f = TimeField(seed=5)
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6)).requires_grad_()
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    prior = solvers.gaussian_log_prob(1.0)
    kw = dict(divergence=divergence, rtol=1e-10, atol=1e-10)
    l_adj = solvers.log_prob(f, x, ts, prior, adjoint=True, **kw)
    l_dir = solvers.log_prob(f, x, ts, prior, **kw)
    g_adj = torch.autograd.grad(l_adj.sum(), [x, *f.parameters()])
    g_dir = torch.autograd.grad(l_dir.sum(), [x, *f.parameters()])
    for a, b in zip(g_adj, g_dir):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    p, eps = next(f.parameters()), 1e-6
    vals = []
    with torch.no_grad():
        for s in (eps, -eps):
            p[0, 0] += s
            vals.append(float(solvers.log_prob(f, x.detach(), ts, prior, **kw).sum()))
            p[0, 0] -= s
    assert float(g_adj[1][0, 0]) == pytest.approx((vals[0] - vals[1]) / (2 * eps), rel=1e-5)


def test_diffflow_probability_flow_is_the_noiseless_drift():
    torch.manual_seed(0)
    data = torch.randn(50, 2)
    sde = solvers.DiffFlowSDE.from_samples(data, sigma=0.5, beta=0.7, mix=0.6)
    x, t = torch.randn(20, 2), torch.tensor(0.3)
    noiseless = solvers.DiffFlowSDE.from_samples(data, sigma=0.5, beta=0.7, mix=0.0)
    torch.testing.assert_close(sde.probability_flow()(t, x), noiseless.drift(t, x))


def test_log_prob_bad_input():
    f = lambda t, x: -x
    x = torch.ones(3, 2)
    prior = solvers.gaussian_log_prob()
    ts = torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match="divergence must be one of"):
        solvers.log_prob(f, x, ts, prior, divergence="trace")
    with pytest.raises(ValueError, match="n_probes must be a positive int"):
        solvers.log_prob(f, x, ts, prior, divergence="hutchinson", n_probes=0)
    with pytest.raises(ValueError, match="unknown log_prob \\(adaptive\\) method 'rk4'"):
        solvers.log_prob(f, x, ts, prior, method="rk4")
    with pytest.raises(ValueError, match=r"one value per sample, shape \(3,\), got \(3, 2\)"):
        solvers.log_prob(f, x, ts, lambda z: z)
    with pytest.raises(ValueError, match="batch dimension"):
        solvers.log_prob(f, torch.ones(3), ts, prior)
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        solvers.log_prob(f, x, torch.tensor([0.0, 0.0]), prior)
    with pytest.raises(ValueError, match="sigma > 0"):
        solvers.log_prob(solvers.EDMFlow(lambda x, s: x), x, torch.tensor([0.0, 1.0]), prior)
    with pytest.raises(ValueError, match="std must be a finite number > 0"):
        solvers.gaussian_log_prob(0.0)


# ----- fields that are not modules (issue "runs that survive", item 5) ------------------------

def test_adjoint_refuses_a_closure_without_adjoint_params_and_is_right_with_them():
    """``lambda t, x: net(x)`` under adjoint=True used to give x0 its gradient and the network none,
    silently. It is refused; with adjoint_params it matches back-propagation through the steps."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    field = lambda t, x: net(x)
    x0 = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"not an nn.Module \(function\) needs adjoint_params="):
        odeint(field, x0, ts, method="dopri5", adjoint=True)
    with pytest.raises(ValueError, match="needs adjoint_params="):
        solvers.log_prob(field, x0, ts, solvers.gaussian_log_prob(1.0), adjoint=True)
    with pytest.raises(TypeError, match="adjoint_params must hold tensors only, got Linear"):
        odeint(field, x0, ts, method="dopri5", adjoint=True, adjoint_params=[net[0]])
    params = tuple(net.parameters())
    w = torch.randn(3, 2, dtype=torch.float64)
    kw = dict(method="dopri5", rtol=1e-10, atol=1e-10, save="last")
    adj = torch.autograd.grad((odeint(field, x0, ts, adjoint=True, adjoint_params=params, **kw) * w).sum(), (x0, *params))
    ref = torch.autograd.grad((odeint(field, x0, ts, **kw) * w).sum(), (x0, *params))
    for a, b in zip(adj, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    assert all(float(g.abs().max()) > 0 for g in adj[1:])
    # a parameter-free closure says so with ()
    (g,) = torch.autograd.grad(odeint(lambda t, x: -x, x0, ts, adjoint=True, adjoint_params=(), **kw).sum(), x0)
    torch.testing.assert_close(g, torch.full_like(x0, math.exp(-1.0)), rtol=1e-7, atol=0)

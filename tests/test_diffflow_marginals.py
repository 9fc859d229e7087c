"""DiffFlow's marginals against Fokker–Planck on Gaussians, where everything is in closed form.

Data p = N(0, 1) smoothed at σ: p_σ = N(0, a), a = 1 + σ². Particles start Gaussian and the drift
is linear, so the particle law stays Gaussian, q_t = N(m_t, v_t). With β constant, g² = 2 β mix
and the generated score taken as the score of q_t ⋆ N(0, s²), i.e. −(x − m)/(v + s²), the moments
obey

    dm/dt = −β m / a,
    dv/dt = −2 β v / a + 2 (β − g²/2) v / (v + s²) + g².

For s = 0 (the particles' own score) the g terms cancel, dv/dt = 2β (1 − v/a), and the marginals
are the same for every mix. For s > 0 they are not, by the amount above. The test runs the SDE
(Euler–Maruyama, 40 000 particles) with the score estimated from the particles themselves (their
mean and variance: exact for a Gaussian law) and checks both statements at several times.
"""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import solvers

BETA, SIGMA, M0, V0 = 1.0, 0.5, 2.0, 0.25
A = 1.0 + SIGMA**2
TIMES = [0.0, 0.25, 0.5, 1.0]
N = 40_000


def predicted(mix, s):
    g2 = 2 * BETA * mix

    def rhs(t, y):
        m, v = y
        return [-BETA * m / A, -2 * BETA * v / A + 2 * (BETA - g2 / 2) * v / (v + s * s) + g2]

    sol = solve_ivp(rhs, (0, TIMES[-1]), [M0, V0], t_eval=TIMES, rtol=1e-10, atol=1e-12)
    return sol.y[0], sol.y[1]


def simulate(mix, s, seed=0):
    data_score = lambda t, x: -x / A
    gen_score = lambda t, x: -(x - x.mean(-2, keepdim=True)) / (x.var(-2, keepdim=True) + s * s)
    sde = solvers.DiffFlowSDE.mixed(data_score, gen_score, beta=BETA, mix=mix)
    g = torch.Generator().manual_seed(seed)
    x0 = M0 + math.sqrt(V0) * torch.randn(N, 1, generator=g, dtype=torch.float64)
    out = solvers.sdeint(sde, x0, torch.tensor(TIMES, dtype=torch.float64), dt=0.0025, generator=g)
    return out.mean((1, 2)).numpy(), out.var((1, 2)).numpy()


# Monte-Carlo error of the variance: v sqrt(2/N) <= 1.25 * 0.007 = 0.009; of the mean sqrt(v/N) <= 0.006;
# Euler–Maruyama's O(dt) bias at dt = 0.0025 is below 0.01 here. 0.04 is over 4 standard errors.
TOL_VAR, TOL_MEAN = 0.04, 0.03


def test_exact_particle_score_keeps_the_marginals_across_mix():
    m_pred, v_pred = predicted(0.0, 0.0)
    # the moment equations do not depend on mix when s = 0 (the claim), checked on the ODE itself
    for mix in (0.5, 1.0):
        np.testing.assert_allclose(predicted(mix, 0.0)[1], v_pred, rtol=1e-8)
    runs = {mix: simulate(mix, 0.0, seed=1) for mix in (0.0, 0.5, 1.0)}
    for mix, (m, v) in runs.items():
        assert np.abs(m - m_pred).max() < TOL_MEAN, (mix, m, m_pred)
        assert np.abs(v - v_pred).max() < TOL_VAR, (mix, v, v_pred)
    # and the runs agree with each other within Monte-Carlo error
    for mix in (0.5, 1.0):
        assert np.abs(runs[mix][1] - runs[0.0][1]).max() < 2 * TOL_VAR


@pytest.mark.parametrize("s", [0.5, 1.0])
def test_smoothed_particle_score_changes_the_marginals_as_fokker_planck_predicts(s):
    preds = {mix: predicted(mix, s) for mix in (0.0, 0.5, 1.0)}
    # Fokker–Planck: the variances differ across mix, by far more than the Monte-Carlo error
    gap = np.abs(preds[1.0][1] - preds[0.0][1])[1:]
    assert gap.min() > 4 * TOL_VAR, gap
    for mix, (m_pred, v_pred) in preds.items():
        m, v = simulate(mix, s, seed=2)
        assert np.abs(m - m_pred).max() < TOL_MEAN, (mix, m, m_pred)
        assert np.abs(v - v_pred).max() < TOL_VAR, (mix, s, v, v_pred)


def test_from_samples_smooths_the_generated_score_at_q_bandwidth():
    g = torch.Generator().manual_seed(0)
    data, x = torch.randn(300, 2, generator=g), torch.randn(200, 2, generator=g) + 1.0
    import gpflow_kernels as gk

    sde = solvers.DiffFlowSDE.from_samples(data, sigma=0.5, q_bandwidth=0.2, beta=1.0, mix=0.0)
    t = torch.tensor(0.3)
    want = gk.kde_score(x, data, bandwidth=0.5) - gk.kde_score(x, x, bandwidth=0.2)
    torch.testing.assert_close(sde.drift(t, x), want)
    same = solvers.DiffFlowSDE.from_samples(data, sigma=0.5, beta=1.0, mix=0.0)  # default: σ for both
    torch.testing.assert_close(same.drift(t, x), gk.kde_score(x, data, bandwidth=0.5) - gk.kde_score(x, x, bandwidth=0.5))

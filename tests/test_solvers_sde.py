import math

import pytest
import torch

import gpflow_kernels as gk
import solvers
from solvers import SDE, NonFiniteError, sdeint


class OU(SDE):
    """dx = −θ x dt + s dW."""

    noise_type = "additive"

    def __init__(self, theta=1.5, s=0.8):
        super().__init__()
        self.theta, self.s = theta, s

    def drift(self, t, x):
        return -self.theta * x

    def diffusion(self, t, x):
        return torch.full_like(x, self.s)


class GBM(SDE):
    """Geometric Brownian motion dx = μ x dt + s x dW (multiplicative, diagonal noise)."""

    noise_type = "diagonal"

    def drift(self, t, x):
        return 0.3 * x

    def diffusion(self, t, x):
        return 0.5 * x


class PureNoise(SDE):
    """dx = dW with the given noise type: the state is the Brownian path itself."""

    def __init__(self, noise_type):
        super().__init__()
        self.noise_type = noise_type

    def drift(self, t, x):
        return torch.zeros_like(x)

    def diffusion(self, t, x):
        return torch.ones_like(x)


@pytest.mark.parametrize("sde_cls", [OU, GBM])
def test_euler_maruyama_equals_torchsde_euler_for_the_same_increments(sde_cls):
    torchsde = pytest.importorskip("torchsde")
    sde = sde_cls()
    x0 = torch.rand(64, 3, dtype=torch.float64) + 0.5
    ts = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    dt = 2.0**-6  # exact in binary, so both libraries query the Brownian motion at the same times
    bm = solvers.brownian_interval(x0, 0.0, 1.0, dt, seed=7)
    ours = sdeint(sde, x0, ts, dt=dt, bm=bm)
    theirs = torchsde.sdeint(sde, x0, ts, method="euler", dt=dt, bm=bm)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["euler_maruyama", "heun"])
def test_ornstein_uhlenbeck_mean_and_variance(method):
    theta, s, T = 1.5, 0.8, 1.0
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((40_000, 1), 2.0, dtype=torch.float64)
    x = sdeint(OU(theta, s), x0, torch.tensor([0.0, T]), dt=0.01, method=method, generator=g, save="last")
    mean = 2.0 * math.exp(-theta * T)
    var = s**2 / (2 * theta) * (1 - math.exp(-2 * theta * T))
    assert float(x.mean()) == pytest.approx(mean, abs=0.01)
    assert float(x.var()) == pytest.approx(var, rel=0.04)


def test_seeded_runs_are_reproducible_and_increments_can_be_given():
    sde, x0, ts = OU(), torch.zeros(10, 2), torch.linspace(0, 1, 5)
    a = sdeint(sde, x0, ts, generator=torch.Generator().manual_seed(3))
    b = sdeint(sde, x0, ts, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    dw = torch.randn(4, 10, 2) * 0.5
    x = sdeint(sde, x0, ts, bm=dw, save="last")
    want = x0
    for k in range(4):
        want = want + 0.25 * (-1.5 * want) + 0.8 * dw[k]
    torch.testing.assert_close(x, want)


def test_scalar_noise_shares_one_brownian_motion_per_particle():
    x = sdeint(PureNoise("scalar"), torch.zeros(50, 3), torch.linspace(0, 1, 11), generator=torch.Generator().manual_seed(0), save="last")
    assert torch.allclose(x[:, 0], x[:, 1]) and torch.allclose(x[:, 1], x[:, 2])
    assert float(x[:, 0].std()) > 0.5


def gaussian_diffflow(mix, mu=1.5, s2=0.5):
    """DiffFlow toward N(μ, s²) with the generated score read off the particles' own moments."""
    data_score = lambda t, x: -(x - mu) / s2
    gen_score = lambda t, x: -(x - x.mean(0)) / x.var(0)
    return solvers.DiffFlowSDE.mixed(data_score, gen_score, beta=0.5, mix=mix)


@pytest.mark.parametrize("mix", [0.0, 0.25, 1.0])
def test_diffflow_marginals_do_not_depend_on_the_noise(mix):
    # With f = 0, constant β and Gaussian p = N(μ, s²), q_t stays Gaussian with
    # m' = −β (m − μ)/s² and v' = 2β (1 − v/s²), whatever g is (Fokker–Planck).
    mu, s2, beta, T = 1.5, 0.5, 0.5, 1.0
    g = torch.Generator().manual_seed(int(mix * 100))
    x0 = torch.randn(40_000, 1, generator=g, dtype=torch.float64) * 0.3 - 1.0
    m0, v0 = float(x0.mean()), float(x0.var())
    x = sdeint(gaussian_diffflow(mix, mu, s2), x0, torch.tensor([0.0, T]), dt=0.005, generator=g, save="last")
    m_T = mu + (m0 - mu) * math.exp(-beta * T / s2)
    v_T = s2 + (v0 - s2) * math.exp(-2 * beta * T / s2)
    assert float(x.mean()) == pytest.approx(m_T, abs=0.015)
    assert float(x.var()) == pytest.approx(v_T, rel=0.03)


def test_diffflow_ends_diffusion_is_langevin_and_gan_end_is_deterministic():
    sde1 = gaussian_diffflow(1.0)
    x = torch.randn(10, 1, dtype=torch.float64)
    # mix = 1: drift β ∇log p only (the generated-score weight β − g²/2 vanishes), noise sqrt(2β).
    torch.testing.assert_close(sde1.drift(0.0, x), 0.5 * -(x - 1.5) / 0.5)
    torch.testing.assert_close(sde1.diffusion(0.0, x), torch.ones_like(x))
    sde0 = gaussian_diffflow(0.0)
    assert float(sde0.diffusion(0.0, x).abs().max()) == 0.0


def test_diffflow_from_samples_moves_particles_to_data():
    g = torch.Generator().manual_seed(5)
    data = torch.randn(300, 2, generator=g) * 0.4 + torch.tensor([2.0, 2.0])
    x0 = torch.randn(200, 2, generator=g)
    sde = solvers.DiffFlowSDE.from_samples(data, sigma=0.5, beta=1.0, mix=0.1)
    x = sdeint(sde, x0, torch.linspace(0, 3, 61), generator=g, save="last")
    assert float(gk.mmd2(x, data)) < 0.1 * float(gk.mmd2(x0, data))


@pytest.mark.parametrize("churn", [0.0, 10.0])
def test_edm_sampler_with_ideal_denoiser_lands_on_the_data(churn):
    g = torch.Generator().manual_seed(0)
    data = torch.randn(8, 2, generator=g, dtype=torch.float64) * 2
    sigmas = solvers.karras_sigmas(30, 0.002, 20.0)
    x0 = torch.randn(100, 2, generator=g, dtype=torch.float64) * 20.0
    x = sdeint(solvers.KDEDenoiser(data), x0, sigmas, method="edm", churn=churn, generator=g, save="last")
    nearest = torch.cdist(x, data).min(1).values
    assert float(nearest.max()) < 0.01


def test_langevin_samples_a_gaussian():
    g = torch.Generator().manual_seed(1)
    lang = solvers.LangevinFlow(lambda x: -(x - 1.0) / 0.25)
    x = sdeint(lang, torch.zeros(20_000, 1, dtype=torch.float64), torch.tensor([0.0, 3.0]), dt=0.005, generator=g, save="last")
    assert float(x.mean()) == pytest.approx(1.0, abs=0.01)
    assert float(x.var()) == pytest.approx(0.25, rel=0.05)


def test_bad_input():
    with pytest.raises(ValueError, match="stochastic Heun scheme for additive noise"):
        sdeint(GBM(), torch.ones(3, 2), torch.linspace(0, 1, 3), method="heun")
    with pytest.raises(ValueError, match="unknown SDE method 'milstein'"):
        sdeint(OU(), torch.ones(3, 2), torch.linspace(0, 1, 3), method="milstein")
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        sdeint(OU(), torch.ones(3, 2), torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"bm as a tensor of increments must have shape \(2, 3, 2\)"):
        sdeint(OU(), torch.ones(3, 2), torch.linspace(0, 1, 3), bm=torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="dt must be"):
        sdeint(OU(), torch.ones(3, 2), torch.linspace(0, 1, 3), dt=-0.1)
    with pytest.raises(TypeError, match="denoiser"):
        sdeint(OU(), torch.ones(3, 2), solvers.karras_sigmas(3), method="edm")
    with pytest.raises(ValueError, match="mix"):
        solvers.DiffFlowSDE.mixed(lambda t, x: x, lambda t, x: x, mix=2.0)


def test_non_finite_particles_stop_with_the_step_named():
    class Explode(OU):
        def drift(self, t, x):
            return x**3 * 1e4

    with pytest.raises(NonFiniteError, match=r"non-finite at step \d+"):
        sdeint(Explode(), torch.ones(3, 2), torch.linspace(0, 1, 100), generator=torch.Generator().manual_seed(0))


def test_our_sde_objects_work_with_torchsde_adjoint():
    torchsde = pytest.importorskip("torchsde")

    class ParamOU(SDE):
        noise_type = "diagonal"

        def __init__(self):
            super().__init__()
            self.theta = torch.nn.Parameter(torch.tensor(1.5, dtype=torch.float64))

        def drift(self, t, x):
            return -self.theta * x

        def diffusion(self, t, x):
            return torch.full_like(x, 0.8)

    sde = ParamOU()
    x0 = torch.rand(32, 2, dtype=torch.float64)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    gaps = []
    for dt in (2.0**-6, 2.0**-8):
        bm = solvers.brownian_interval(x0, 0.0, 1.0, dt, seed=3)
        adj = torchsde.sdeint_adjoint(sde, x0, ts, method="euler", adjoint_method="euler", dt=dt, bm=bm)[-1]
        ours = sdeint(sde, x0, ts, dt=dt, bm=bm, save="last")
        torch.testing.assert_close(adj, ours, rtol=1e-12, atol=1e-12)
        (g_adj,) = torch.autograd.grad(adj.square().sum(), sde.theta)
        (g_dir,) = torch.autograd.grad(ours.square().sum(), sde.theta)
        gaps.append(abs(float(g_adj - g_dir)))
    # The adjoint's gradient is itself an Euler solve: its gap to backprop shrinks with dt.
    assert gaps[1] < 0.5 * gaps[0]


def test_backwards_integration_uses_the_negated_forward_increments():
    # dx = dW run from t = 1 down to 0 over a given Brownian path ends at x(1) + W(0) − W(1).
    pytest.importorskip("torchsde")

    x1 = torch.rand(8, 2, dtype=torch.float64)
    bm = solvers.brownian_interval(x1, 0.0, 1.0, 2.0**-4, seed=4)
    x0 = sdeint(PureNoise("additive"), x1, torch.tensor([1.0, 0.0], dtype=torch.float64), dt=2.0**-4, bm=bm, save="last")
    torch.testing.assert_close(x0, x1 - bm(0.0, 1.0), rtol=1e-12, atol=1e-12)


def test_diffflow_weight_form_is_the_same_family():
    # drift f + w_p ∇log p − w_q ∇log q, noise √(2 (w_p − w_q)) == mixed(beta=w_p, mix=1 − w_q/w_p).
    p_score = lambda t, x: -(x - 1.0) / 0.5
    q_score = lambda t, x: -x / (1.0 + t)
    f = lambda t, x: 0.1 * torch.sin(x)
    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(0.3, dtype=torch.float64)
    for w_p, w_q in [(0.8, 0.0), (0.8, 0.2), (0.8, 0.8)]:
        sde = solvers.DiffFlowSDE.weighted(p_score, q_score, w_p=w_p, w_q=w_q, extra_drift=f)
        torch.testing.assert_close(sde.drift(t, x), f(t, x) + w_p * p_score(t, x) - w_q * q_score(t, x))
        torch.testing.assert_close(sde.diffusion(t, x), torch.full_like(x, math.sqrt(2 * (w_p - w_q))))
        mixed = solvers.DiffFlowSDE.mixed(p_score, q_score, beta=w_p, mix=1 - w_q / w_p, extra_drift=f)
        torch.testing.assert_close(sde.drift(t, x), mixed.drift(t, x))
        torch.testing.assert_close(sde.diffusion(t, x), mixed.diffusion(t, x))
    bad = solvers.DiffFlowSDE.weighted(p_score, q_score, w_p=0.5, w_q=lambda t: 1.0)
    with pytest.raises(ValueError, match=r"w_q <= w_p .* w_p=0.5, w_q=1"):
        bad.diffusion(t, x)
    with pytest.raises(ValueError, match="w_p must be a number >= 0"):
        solvers.DiffFlowSDE.weighted(p_score, q_score, w_p=-1.0)


def test_backprop_through_euler_maruyama_is_the_derivative_of_the_discrete_map():
    # dx = a x dt + s dW with given increments: x_{k+1} = x_k (1 + a h) + s ΔW_k, so
    # ∂x_{k+1}/∂a = ∂x_k/∂a (1 + a h) + x_k h and ∂x_{k+1}/∂s = ∂x_k/∂s (1 + a h) + ΔW_k.
    class Linear(SDE):
        noise_type = "additive"

        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(-0.6, dtype=torch.float64))
            self.s = torch.nn.Parameter(torch.tensor(0.4, dtype=torch.float64))

        def drift(self, t, x):
            return self.a * x

        def diffusion(self, t, x):
            return self.s.expand_as(x)

    sde, n, h = Linear(), 10, 0.1
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(6, 2, generator=g, dtype=torch.float64)
    dw = torch.randn(n, 6, 2, generator=g, dtype=torch.float64) * h**0.5
    out = sdeint(sde, x0, torch.tensor([0.0, n * h], dtype=torch.float64), dt=h, bm=dw, save="last")
    ga, gs = torch.autograd.grad(out.sum(), (sde.a, sde.s))
    a, s = float(sde.a.detach()), float(sde.s.detach())
    x, da, ds = x0.clone(), torch.zeros_like(x0), torch.zeros_like(x0)
    for k in range(n):
        da, ds = da * (1 + a * h) + x * h, ds * (1 + a * h) + dw[k]
        x = x * (1 + a * h) + s * dw[k]
    torch.testing.assert_close(out.detach(), x, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(ga, da.sum(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gs, ds.sum(), rtol=1e-12, atol=1e-12)


def test_scalar_noise_matches_torchsde():
    torchsde = pytest.importorskip("torchsde")

    class Scalar(SDE):
        noise_type = "scalar"

        def drift(self, t, x):
            return -0.5 * x

        def diffusion(self, t, x):
            return 0.3 + 0.2 * torch.cos(x)  # state-dependent: one dW per particle, scaled per coordinate

    x0 = torch.randn(40, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    dt = 2.0**-6
    bm = solvers.brownian_interval(x0, 0.0, 1.0, dt, seed=11, noise_type="scalar")
    ours = sdeint(Scalar(), x0, ts, dt=dt, bm=bm)
    theirs = torchsde.sdeint(Scalar(), x0, ts, method="euler", dt=dt, bm=bm)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_diffflow_from_samples_in_each_parameterisation():
    g = torch.Generator().manual_seed(4)
    data = torch.randn(30, 2, generator=g, dtype=torch.float64) + 1.0
    x = torch.randn(9, 2, generator=g, dtype=torch.float64)
    t = torch.tensor(0.2, dtype=torch.float64)
    p, q = gk.kde_score(x, data, bandwidth=0.5), gk.kde_score(x, x, bandwidth=0.5)
    cases = [
        (dict(beta=0.7, g=0.3), 0.7 * p - (0.7 - 0.045) * q, 0.3),
        (dict(beta=0.7, mix=0.25), 0.7 * p - 0.7 * 0.75 * q, math.sqrt(2 * 0.7 * 0.25)),
        (dict(w_p=1.0, w_q=0.4), p - 0.4 * q, math.sqrt(1.2)),
    ]
    for kw, drift, noise in cases:
        sde = solvers.DiffFlowSDE.from_samples(data, sigma=lambda s: 0.5, **kw)
        torch.testing.assert_close(sde.drift(t, x), drift, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(sde.diffusion(t, x), torch.full_like(x, noise), rtol=1e-12, atol=1e-12)


def test_remaining_solver_errors_name_the_argument():
    ts = torch.linspace(0, 1, 3)
    with pytest.raises(TypeError, match="x0 must be a torch.Tensor, got list"):
        sdeint(OU(), [[0.0, 1.0]], ts)
    with pytest.raises(ValueError, match=r"x0 is empty: shape \(0, 2\)"):
        sdeint(OU(), torch.ones(0, 2), ts)
    with pytest.raises(ValueError, match="x0 contains NaN or infinite values"):
        sdeint(OU(), torch.tensor([[0.0, float("inf")]]), ts)
    with pytest.raises(ValueError, match="ts contains NaN or infinite times"):
        sdeint(OU(), torch.ones(3, 2), torch.tensor([0.0, float("nan")]))
    with pytest.raises(TypeError, match="bm must be None, a tensor of increments, or a callable"):
        sdeint(OU(), torch.ones(3, 2), ts, bm=0.5)
    with pytest.raises(ValueError, match="for method='edm', ts must be decreasing noise levels >= 0"):
        sdeint(solvers.KDEDenoiser(torch.randn(5, 2)), torch.ones(3, 2), torch.linspace(0, 1, 3), method="edm")

    class NoDiffusion:
        noise_type = "diagonal"

        def drift(self, t, x):
            return -x

    with pytest.raises(TypeError, match="sde must have a callable diffusion"):
        sdeint(NoDiffusion(), torch.ones(3, 2), ts)

    class General(OU):
        noise_type = "general"

    with pytest.raises(ValueError, match="sde.noise_type must be \"diagonal\", \"additive\" or \"scalar\", got 'general'"):
        sdeint(General(), torch.ones(3, 2), ts)
    with pytest.raises(TypeError, match="field must be callable as field\\(t, x\\), got int"):
        solvers.odeint(3, torch.ones(3, 2), ts)


def test_grid_arguments():
    torch.testing.assert_close(solvers.karras_sigmas(1, sigma_min=0.1, sigma_max=5.0), torch.tensor([5.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(solvers.ve_sigmas(4, 0.1, 10.0),
                               torch.tensor([10.0, 10 ** (1 / 3), 10 ** (-1 / 3), 0.1, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="sigma_min must be a finite number > 0, got -1.0"):
        solvers.karras_sigmas(4, sigma_min=-1.0, sigma_max=5.0)
    with pytest.raises(ValueError, match="rho must be > 0, got 0"):
        solvers.karras_sigmas(4, sigma_min=0.1, sigma_max=5.0, rho=0)
    with pytest.raises(ValueError, match="need 0 < beta_min < beta_max"):
        solvers.vp_sigmas(4, beta_min=20.0, beta_max=0.1)
    with pytest.raises(ValueError, match="t1 must be a finite number, got inf"):
        solvers.linear_grid(0.0, float("inf"), 4)
    with pytest.raises(ValueError, match="t0 and t1 must differ"):
        solvers.linear_grid(1.0, 1.0, 4)

"""The methods follow the GPM authors' public code (White-Link/gpm) where our earlier code differed.

- Score GAN: the generator's field is (D_data − D_gen)/σ, σ is drawn uniformly on EDM's ρ-warped grid
  for the generator and for the generated-score training, and the generated-score network starts
  from a fresh initialisation (copying the data score is an explicit option).
- Discriminator Flow: the discriminator is trained at the sampler's times k/N, k < N, only.
"""

import numpy as np
import pytest
import torch
from scipy import stats

from gpflow_kernels.methods import get_method
from gpflow_kernels.methods.data import load
from gpflow_kernels.methods.score_gan import warped_sigmas

DATA = load("8gaussians", n_train=256, n_test=64)


def make(method, **options):
    cls = get_method(method)
    torch.manual_seed(0)
    return cls(DATA, cls.make_options(DATA, options), torch.device("cpu"))


def test_score_gan_field_is_the_denoiser_difference_over_sigma():
    m = make("score-gan", hidden=8, depth=1)
    x = torch.tensor([[1.0, 2.0], [-3.0, 0.5]])
    sigma = torch.tensor([0.5, 4.0])
    d_data = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    d_gen = torch.tensor([[1.0, 1.0], [-1.0, 3.0]])
    m.data_denoise = lambda xx, s: d_data
    m.gen_net = lambda xx, s: d_gen
    # by hand: ((0 − 1)/0.5, (1 − 1)/0.5) = (−2, 0); ((1 + 1)/4, (1 − 3)/4) = (0.5, −0.5)
    torch.testing.assert_close(m.field(x, sigma), torch.tensor([[-2.0, 0.0], [0.5, -0.5]]))


def test_score_gan_generator_step_moves_particles_along_that_field():
    """The generator's loss −mean_i field_i · g(z_i) has gradient −Jᵀ field / N w.r.t. its outputs."""
    m = make("score-gan", hidden=8, depth=1, batch=16, data_steps=0, score_steps=1)
    field = torch.randn(16, 2)
    m.field = lambda noisy, sigma: field
    x = m.g(m.z(16))
    (grad,) = torch.autograd.grad(-(field * x).sum(1).mean(), x)
    torch.testing.assert_close(grad, -field / 16)


def test_warped_sigma_law_is_uniform_on_the_rho_grid():
    """σ = (σmax^(1/ρ) + u (σmin^(1/ρ) − σmax^(1/ρ)))^ρ, u ~ U[0, 1]: a Kolmogorov–Smirnov test of its CDF."""
    torch.manual_seed(0)
    lo, hi, rho = 0.1, 10.0, 3.0
    s = warped_sigmas(20000, lo, hi, rho, "cpu").double().numpy()
    assert s.min() >= lo and s.max() <= hi
    cdf = lambda v: 1.0 - (np.asarray(v) ** (1 / rho) - hi ** (1 / rho)) / (lo ** (1 / rho) - hi ** (1 / rho))
    assert stats.kstest(s, cdf).pvalue > 1e-3
    # the median of the law: u = 1/2
    assert abs(np.median(s) - (0.5 * (hi ** (1 / rho) + lo ** (1 / rho))) ** rho) < 0.05


def test_score_gan_uses_the_warped_law_for_both_updates(monkeypatch):
    m = make("score-gan", hidden=8, depth=1, batch=32, data_steps=0, score_steps=2, sigma_min=0.3, sigma_max=3.0, rho=2.0)
    seen = []
    real_gen_net = m.gen_net

    def spy(x, sigma):
        seen.append(sigma.detach().clone())
        return real_gen_net(x, sigma)

    m.gen_net = spy
    m.train_step(0)
    assert len(seen) == 3  # two generated-score updates, one generator step
    allsig = torch.cat(seen)
    assert float(allsig.min()) >= 0.3 - 1e-6 and float(allsig.max()) <= 3.0 + 1e-6
    assert len(torch.unique(allsig)) > 60  # per-sample σ, not one per batch


def test_score_gan_generated_score_starts_fresh_unless_copy_is_asked():
    fresh = make("score-gan", hidden=8, depth=1, batch=16, data_steps=2, score_steps=1)
    for step in range(3):
        fresh.train_step(step)
    copied = make("score-gan", hidden=8, depth=1, batch=16, data_steps=2, score_steps=1, gen_score_init="copy")
    for step in range(2):
        copied.train_step(step)
    data_state = {k: v.clone() for k, v in copied.data_net.state_dict().items()}
    copied.train_step(2)  # the copy happens here, then one update of the generated score
    # fresh: the generated-score network never equals the data network
    assert any(not torch.equal(a, b) for a, b in zip(fresh.gen_net.state_dict().values(), fresh.data_net.state_dict().values()))
    # copy: after one small Adam step it is still within lr of the data network it started from
    for k, v in copied.gen_net.state_dict().items():
        assert float((v - data_state[k]).abs().max()) <= 1.01 * copied.opts.lr, k


def test_disc_flow_trains_the_discriminator_at_the_sampler_times_only(monkeypatch):
    m = make("disc-flow", hidden=8, depth=1, batch=64, flow_steps=4)
    train_times = []
    import gpflow_kernels.methods.disc_flow as mod

    real_loss = mod.disc_loss

    def spy(loss, penalty, critic, fake, real):
        train_times.append(critic.__defaults__[0].detach().clone())
        return real_loss(loss, penalty, critic, fake, real)

    monkeypatch.setattr(mod, "disc_loss", spy)
    for step in range(5):
        m.train_step(step)
    t = torch.cat(train_times)
    allowed = torch.arange(4, dtype=t.dtype) / 4  # k/N, k < N
    assert bool(torch.isin(t, allowed).all())
    assert set(torch.unique(t).tolist()) == set(allowed.tolist())  # every k < N is used
    assert not bool((t == 1.0).any())

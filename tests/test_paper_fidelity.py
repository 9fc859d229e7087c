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
from gpflow_kernels.data import load
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


def _guidance_effect(mode, lam, n):
    """Mean shift (first coordinate) that guidance adds to EDM's Heun sampler with n noise levels.

    Closed-form case: the denoiser is the exact KDE denoiser of a data set centred at 0, the witness
    compares the particles with the true data, centred at (1, 0); guidance pulls toward the latter.
    """
    import math

    import gpflow_kernels as gk
    import solvers
    from gpflow_kernels.methods.guidance import guided_sampler

    g = torch.Generator().manual_seed(0)
    true = torch.randn(600, 2, generator=g, dtype=torch.float64) * 0.5 + torch.tensor([1.0, 0.0], dtype=torch.float64)
    model = torch.randn(600, 2, generator=g, dtype=torch.float64) * 0.5
    x0 = 5.0 * torch.randn(300, 2, generator=g, dtype=torch.float64)
    den = lambda x, s: gk.kde_denoiser(x, model, bandwidth=float(s))
    wit = lambda x, s: gk.mmd_field(x, true, bandwidth=math.sqrt(0.25 + s * s))
    sig = solvers.karras_sigmas(n, 0.01, 5.0, 7.0).double()
    guided, _, nfe = guided_sampler(den, x0, sig, wit, lam, mode=mode)
    plain, _, _ = guided_sampler(den, x0, sig, wit, 0.0, mode=mode)
    assert nfe == 2 * n - 1
    return float((guided - plain)[:, 0].mean())


def test_guidance_as_a_score_term_does_not_grow_with_the_step_count():
    coarse, fine = _guidance_effect("score", 1.0, 20), _guidance_effect("score", 1.0, 80)
    assert coarse > 0.1  # it does pull toward the data
    assert abs(fine / coarse - 1) < 0.05, (coarse, fine)
    # the old post-step kick: its effect grows about linearly with the number of steps
    k20, k80 = _guidance_effect("kick", 0.05, 20), _guidance_effect("kick", 0.05, 80)
    assert k80 / k20 > 2.5, (k20, k80)


@pytest.mark.parametrize("method, expect", [
    ("edm", dict(steps=10000, batch=128, lr=2e-4, hidden=512, depth=4, sigma_max=40.0, rho=7.0, sample_steps=28)),
    ("score-gan", dict(data_steps=10000, steps=3150, score_steps=10, batch=128, latent=128, sigma_min=0.1, sigma_max=10.0,
                       rho=3.0, gen_lr=2e-4)),
    ("disc-flow", dict(steps=4000, batch=128, eta=20.0, flow_steps=56, penalty=0.0, hidden=512, depth=4)),
    ("gan", dict(steps=1900, batch=128, latent=128, loss="ns", penalty=0.0, lr=2e-4)),
])
def test_paper_presets_hold_the_reference_configuration(method, expect):
    """The GPM code's configs for its 2-D Gaussian mixture (config/<model>/gaussians/config.yaml)."""
    o = get_method(method).Options.build(method, {"preset": "paper"})
    for k, v in expect.items():
        assert getattr(o, k) == v, k
    # the user's own options win over the preset
    assert get_method(method).Options.build(method, {"preset": "paper", "steps": 7}).steps == 7


def test_presets_are_named_errors_where_there_is_none():
    from gpflow_kernels.methods.options import OptionError

    with pytest.raises(OptionError, match="option preset of 'mmd-guidance' must be one of: none"):
        get_method("mmd-guidance").Options.build("mmd-guidance", {"preset": "paper"})
    with pytest.raises(OptionError, match="option preset of 'gan' must be one of: 'paper'; got 'nips'"):
        get_method("gan").Options.build("gan", {"preset": "nips"})


def test_guidance_study_script_runs(tmp_path, capsys):
    """benchmarks/guidance_study.py (the RESULTS.md guidance table) on a smoke-sized grid."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "guidance_study.py"
    spec = importlib.util.spec_from_file_location("guidance_study", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.main(["--quick", "--out", str(tmp_path / "g.json")])
    assert [r["mode"] for r in rows] == ["none", "score", "kick"]
    assert all(r["denoiser_calls"] == rows[0]["denoiser_calls"] for r in rows)  # equal denoiser evaluations
    assert [r["witness_calls"] for r in rows] == [0, rows[0]["denoiser_calls"], 18]
    assert json.loads((tmp_path / "g.json").read_text()) == rows
    assert "| 8gaussians | score | 1 | 0.5 | 35 |" in capsys.readouterr().out

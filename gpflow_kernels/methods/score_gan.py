"""Score GAN: an interacting particle model driven by the diffusion field (Franceschi et al. 2023, §5).

Phase 1 (``data_steps``): the data denoiser D_ψ(x; σ) (score s_ψ = (D_ψ − x)/σ²) is learned as an
EDM denoiser (log-normal σ, EDM weighting), standing for the reference code's pretrained EDM model.
With ``data_score="kde"`` the field uses the closed-form denoiser of the training set instead (phase 1
then only matters for ``gen_score_init="copy"``; set ``data_steps=0`` otherwise).
Phase 2 (``steps`` generator steps): each generator step follows ``score_steps`` updates of the
generated-data denoiser D_φ on fresh particles, by the plain loss |D_φ(g(z) + σ ε; σ) − g(z)|²,
then moves the generator along the field (D_ψ − D_φ)/σ = σ (s_ψ − s_φ) at noised particles:

    θ ← θ + η E_{σ,ε,z}[ ∇_θ g(z)ᵀ (D_ψ − D_φ)(g(z) + σ ε; σ) / σ ].

Both use σ drawn uniformly on EDM's ρ-warped grid, σ = (σ_max^(1/ρ) + u (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ,
u ~ U[0, 1] (options ``sigma_min``, ``sigma_max``, ``rho``; defaults 0.1, 10, 3 as in the reference
code's Gaussian-mixture config). These are the authors' public code's choices (GitHub
White-Link/gpm, ``models/score_gan``), which we checked: field scale 1/σ, warped σ law for both
updates, plain denoising loss, and D_φ freshly initialised. ``gen_score_init="copy"`` starts D_φ
from the phase-1 network instead (our option, not the reference's). Sampling is one generator call.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

from ..ops import kde_score
from .base import Method, Sample, adam, step_on
from .edm import data_sigma, train_denoiser_step
from ..nets import denoiser, generator
from .options import ScoreGANOptions


def warped_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float, device) -> Tensor:
    """n noise levels uniform on EDM's ρ-warped grid: (σ_max^(1/ρ) + u (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ."""
    u = torch.rand(n, device=device)
    hi, lo = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (hi + u * (lo - hi)) ** rho


class ScoreGAN(Method):
    name = "score-gan"
    kind = "Int-PM"
    paper = "Franceschi et al. 2023"
    summary = "generator trained by data score minus an online generated-data score, at random noise levels"
    Options = ScoreGANOptions

    def __init__(self, data, options, device):
        super().__init__(data, options, device)
        o = self.opts
        sd = data_sigma(data.train, o.sigma_data)
        self.data_net = denoiser(o, self.dim, data.image_shape, sd).to(self.device)
        self.data_opt = adam(self.data_net.parameters(), o.lr)
        self.gen_net = denoiser(o, self.dim, data.image_shape, sd).to(self.device)
        self.gen_opt = adam(self.gen_net.parameters(), o.lr)
        self.g = generator(o, o.latent, self.dim, data.image_shape).to(self.device)
        self.g_opt = adam(self.g.parameters(), o.gen_lr, betas=(0.5, 0.9))

    @property
    def total_steps(self):
        return self.opts.data_steps + self.opts.steps

    def modules(self):
        return {"data_score": self.data_net, "gen_score": self.gen_net, "generator": self.g}

    def optimizers(self):
        return {"data_score": self.data_opt, "gen_score": self.gen_opt, "generator": self.g_opt}

    def data_denoise(self, x, sigma):
        """D_ψ(x; σ): the learned data denoiser, or the training set's closed-form one (``data_score="kde"``)."""
        if self.opts.data_score == "kde":
            s = sigma.reshape(-1, 1)
            # One σ per batch keeps the KDE exact and cheap (grouping per-sample σ is costly).
            return x + s * s * kde_score(x, self.x_train, bandwidth=float(s[0]))
        return self.data_net(x, sigma)

    def field(self, noisy: Tensor, sigma: Tensor) -> Tensor:
        """(D_ψ − D_φ)(x̃; σ)/σ: the generator's field at noised particles x̃: (n, D), σ: (n,)."""
        return (self.data_denoise(noisy, sigma) - self.gen_net(noisy, sigma)) / sigma.reshape(-1, 1)

    def sigmas(self, n: int) -> Tensor:
        o = self.opts
        if o.data_score == "kde":
            return warped_sigmas(1, o.sigma_min, o.sigma_max, o.rho, self.device).expand(n)
        return warped_sigmas(n, o.sigma_min, o.sigma_max, o.rho, self.device)

    def z(self, n, generator=None):
        return torch.randn(n, self.opts.latent, generator=generator, device=self.device)

    def train_step(self, step):
        o = self.opts
        if step < o.data_steps:
            return {"data_loss": train_denoiser_step(self.data_net, self.data_opt, self.batch(), o.p_mean, o.p_std)}
        if step == o.data_steps and o.gen_score_init == "copy":
            self.gen_net.load_state_dict(self.data_net.state_dict())
        for _ in range(o.score_steps):
            with torch.no_grad():
                fake = self.g(self.z(o.batch))
            sigma = self.sigmas(o.batch)
            noisy = fake + sigma.reshape(-1, 1) * torch.randn_like(fake)
            gen_loss = step_on(self.gen_opt, (self.gen_net(noisy, sigma) - fake).pow(2).sum(1).mean())
        x = self.g(self.z(o.batch))
        sigma = self.sigmas(o.batch)
        with torch.no_grad():
            noisy = x + sigma.reshape(-1, 1) * torch.randn_like(x)
            field = self.field(noisy, sigma)
        # Move each particle along the field: the generator loss whose gradient is −Jᵀ field.
        g_loss = -(field * x).sum(1).mean()
        step_on(self.g_opt, g_loss)
        return {"gen_score_loss": gen_loss, "field_norm": float(field.norm(dim=1).mean())}

    @torch.no_grad()
    def sample(self, n, generator, trajectory=False):
        return Sample(self.g(self.z(n, generator)), 1)

"""Score GAN: an interacting particle model driven by the diffusion field (Franceschi et al. 2023, §5).

Phase 1 (``data_steps``): the data score s_ψ(x, σ) = (D_ψ(x; σ) − x)/σ² is learned as an EDM
denoiser. With ``data_score="kde"`` the field uses the closed-form score instead (the exact score
of the training set convolved with N(0, σ²I)) and the learned one only initialises s_φ. Phase 2
(``steps``): a generator g(z) is trained by the field (s_ψ − s_φ) evaluated at noised particles,
while the generated-data score s_φ (initialised from the phase-1 network, as the paper does from
the pretrained data score) is kept up to date with ``score_steps`` denoising-score-matching steps
on fresh particles per generator step:

    θ ← θ + η E_{σ,ε,z}[ ∇_θ g(z)ᵀ σ² (s_ψ − s_φ)(g(z) + σ ε, σ) ]

(σ² (s_ψ − s_φ) = D_ψ − D_φ; the factor σ² is the EDM-style weighting of the noise levels).
Sampling is one generator call.
"""

from __future__ import annotations

import torch

from ..ops import kde_score
from .base import Method, Sample, adam, step_on
from .edm import data_sigma, sample_sigmas, train_denoiser_step
from .nets import EDMPrecond, mlp
from .options import ScoreGANOptions


class ScoreGAN(Method):
    name = "score-gan"
    kind = "Int-PM"
    paper = "Franceschi et al. 2023"
    summary = "generator trained by data score minus an online generated-data score, at random noise levels"
    Options = ScoreGANOptions

    def __init__(self, data, options, device):
        super().__init__(data, options, device)
        o = self.opts
        sd = data_sigma(data.train)
        self.data_net = EDMPrecond(self.dim, o.hidden, o.depth, sd).to(self.device)
        self.data_opt = adam(self.data_net.parameters(), o.lr)
        self.gen_net = EDMPrecond(self.dim, o.hidden, o.depth, sd).to(self.device)
        self.gen_opt = adam(self.gen_net.parameters(), o.lr)
        self.g = mlp(o.latent, self.dim, o.hidden, o.depth).to(self.device)
        self.g_opt = adam(self.g.parameters(), o.gen_lr, betas=(0.5, 0.9))

    @property
    def total_steps(self):
        return self.opts.data_steps + self.opts.steps

    def modules(self):
        return {"data_score": self.data_net, "gen_score": self.gen_net, "generator": self.g}

    def optimizers(self):
        return {"data_score": self.data_opt, "gen_score": self.gen_opt, "generator": self.g_opt}

    def data_denoise(self, x, sigma):
        if self.opts.data_score == "kde":
            s = sigma.reshape(-1, 1)
            # Per-sample σ: group by value is costly; one σ per batch keeps the KDE exact and cheap.
            return x + s * s * kde_score(x, self.x_train, bandwidth=float(s[0]))
        return self.data_net(x, sigma)

    def z(self, n, generator=None):
        return torch.randn(n, self.opts.latent, generator=generator, device=self.device)

    def train_step(self, step):
        o = self.opts
        if step < o.data_steps:
            return {"data_loss": train_denoiser_step(self.data_net, self.data_opt, self.batch(), o.p_mean, o.p_std)}
        if step == o.data_steps:
            self.gen_net.load_state_dict(self.data_net.state_dict())  # s_φ starts as the data score
        for _ in range(o.score_steps):
            with torch.no_grad():
                fake = self.g(self.z(o.batch))
            gen_loss = train_denoiser_step(self.gen_net, self.gen_opt, fake, o.p_mean, o.p_std)
        x = self.g(self.z(o.batch))
        if o.data_score == "kde":
            sigma = sample_sigmas(1, o.p_mean, o.p_std, self.device).expand(o.batch)
        else:
            sigma = sample_sigmas(o.batch, o.p_mean, o.p_std, self.device)
        with torch.no_grad():
            noisy = x + sigma.reshape(-1, 1) * torch.randn_like(x)
            field = self.data_denoise(noisy, sigma) - self.gen_net(noisy, sigma)
        # Move each particle along the field: the generator loss whose gradient is −Jᵀ field.
        g_loss = -(field * x).sum(1).mean()
        step_on(self.g_opt, g_loss)
        return {"gen_score_loss": gen_loss, "field_norm": float(field.norm(dim=1).mean())}

    @torch.no_grad()
    def sample(self, n, generator, trajectory=False):
        return Sample(self.g(self.z(n, generator)), 1)

"""GANs as interacting particle models, and their discriminator losses (Franceschi et al. 2023, §3–4).

A discriminator f is trained by L_d = E_ρ[a∘f] − E_p[b∘f] + R(f); the generator (or, in a
discriminator flow, each particle) descends c∘f, i.e. follows the field ∇h = −∇(c∘f).
- ``loss="ns"`` (non-saturating): a(f) = softplus(f), b(f) = −softplus(−f), c(f) = softplus(−f);
  R = R1 penalty γ/2 E_p|∇f|² (``penalty`` = γ).
- ``loss="ipm"`` (Wasserstein/IPM): a(f) = f, b(f) = f, c(f) = −f; R = gradient penalty
  λ E[(|∇f(x̂)| − 1)²] on random interpolates x̂ (``penalty`` = λ, Gulrajani et al. 2017).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.nn import functional as F

from .base import Method, Sample, adam, step_on
from ..nets import discriminator, generator
from .options import GANOptions

Tensor = torch.Tensor


def gen_cost(loss: str, f: Tensor) -> Tensor:
    """c∘f: what the particles (or the generator's outputs) descend."""
    return F.softplus(-f) if loss == "ns" else -f


def disc_loss(loss: str, penalty: float, f: Callable[[Tensor], Tensor], fake: Tensor, real: Tensor) -> Tensor:
    """L_d for the discriminator f (a callable on points) on fake (n, D) and real (m, D) batches."""
    if loss == "ns":
        real = real.detach().requires_grad_(penalty > 0)
        f_real = f(real)
        out = F.softplus(f(fake)).mean() + F.softplus(-f_real).mean()
        if penalty > 0:
            (gr,) = torch.autograd.grad(f_real.sum(), real, create_graph=True)
            out = out + 0.5 * penalty * gr.pow(2).sum(1).mean()
        return out
    out = f(fake).mean() - f(real).mean()
    if penalty > 0:
        n = min(len(fake), len(real))
        u = torch.rand(n, 1, device=fake.device, dtype=fake.dtype)
        mid = (u * real[:n] + (1 - u) * fake[:n]).detach().requires_grad_(True)
        (gm,) = torch.autograd.grad(f(mid).sum(), mid, create_graph=True)
        out = out + penalty * (gm.norm(dim=1) - 1).pow(2).mean()
    return out


class GAN(Method):
    name = "gan"
    kind = "Int-PM"
    paper = "Goodfellow et al. 2014; Franceschi et al. 2023"
    summary = "generator and discriminator; non-saturating (R1) or IPM (gradient penalty) losses"
    Options = GANOptions

    def __init__(self, data, options, device):
        super().__init__(data, options, device)
        o = self.opts
        self.g = generator(o, o.latent, self.dim, data.image_shape).to(self.device)
        self.f = discriminator(o, self.dim, data.image_shape).to(self.device)
        self.g_opt = adam(self.g.parameters(), o.lr, betas=(0.5, 0.9))
        self.f_opt = adam(self.f.parameters(), o.lr, betas=(0.5, 0.9))

    def modules(self):
        return {"generator": self.g, "discriminator": self.f}

    def optimizers(self):
        return {"generator": self.g_opt, "discriminator": self.f_opt}

    def z(self, n, generator: Optional[torch.Generator] = None):
        return torch.randn(n, self.opts.latent, generator=generator, device=self.device)

    def critic(self, x):
        return self.f(x).squeeze(1)

    def train_step(self, step):
        o = self.opts
        for _ in range(o.d_steps):
            with torch.no_grad():
                fake = self.g(self.z(o.batch))
            d = step_on(self.f_opt, disc_loss(o.loss, o.penalty, self.critic, fake, self.batch()))
        gl = step_on(self.g_opt, gen_cost(o.loss, self.critic(self.g(self.z(o.batch)))).mean())
        return {"d_loss": d, "g_loss": gl}

    @torch.no_grad()
    def sample(self, n, generator, trajectory=False):
        return Sample(self.g(self.z(n, generator)), 1)

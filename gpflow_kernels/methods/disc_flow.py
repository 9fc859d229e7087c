"""Discriminator Flow: the GAN field as a particle model (Franceschi et al. 2023, §5).

One time-conditioned discriminator f_φ(x, t) stands for the discriminators of every time of the
flow. Particles start at x_0 ~ N(0, I) and follow

    dx_t/dt = −η ∇_x (c∘f_φ)(x_t, t),  t ∈ [0, 1],

integrated with ``flow_steps`` Euler steps (``solvers.odeint``, no gradient through the path).
Each training step integrates a batch of particles with the current f_φ, takes every particle at
one random grid time t_k = k/N, k < N (the times where the Euler steps evaluate f; never t = 1, as
in the authors' code), and trains f_φ(·, t_k) to tell those particles from data (the GAN losses
of :mod:`.gan`). Generation integrates the same ODE: ``flow_steps`` discriminator gradients.
"""

from __future__ import annotations

import torch

import solvers

from .base import Method, Sample, adam, step_on
from .gan import disc_loss, gen_cost
from ..nets import discriminator, generator
from .options import DiscFlowOptions, DistilledOptions

Tensor = torch.Tensor


class DiscFlow(Method):
    name = "disc-flow"
    kind = "PM"
    paper = "Franceschi et al. 2023"
    summary = "particles follow −η∇(c∘f)(x, t) of one time-conditioned discriminator trained on its own flow"
    Options = DiscFlowOptions

    def __init__(self, data, options, device):
        super().__init__(data, options, device)
        o = self.opts
        self.f = discriminator(o, self.dim, data.image_shape, conditioned=True).to(self.device)
        self.opt = adam(self.f.parameters(), o.lr, betas=(0.5, 0.9))
        self.ts = torch.linspace(0.0, 1.0, o.flow_steps + 1, device=self.device)

    def modules(self):
        return {"discriminator": self.f}

    def optimizers(self):
        return {"discriminator": self.opt}

    def field(self, t: Tensor, x: Tensor) -> Tensor:
        """−η ∇_x (c∘f)(x, t), without a graph to f's parameters."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            cost = gen_cost(self.opts.loss, self.f(xg, t).squeeze(1)).sum()
            (grad,) = torch.autograd.grad(cost, xg)
        return -self.opts.eta * grad

    def flow(self, x0: Tensor) -> Tensor:
        """(flow_steps + 1, n, D) particle states on the time grid."""
        return solvers.odeint(self.field, x0, self.ts, method="euler")

    def train_step(self, step):
        o = self.opts
        path = self.flow(torch.randn(o.batch, self.dim, device=self.device))
        # The times t_k = k/N, k < N, at which the flow evaluates the discriminator (never t = 1),
        # as in the reference code: each discriminator is trained where it is used.
        k = torch.randint(0, o.flow_steps, (o.batch,), device=self.device)
        fake = path[k, torch.arange(o.batch, device=self.device)]
        t = self.ts[k]
        real = self.batch()
        critic = lambda pts, _t=t: self.f(pts, _t).squeeze(1)
        return {"d_loss": step_on(self.opt, disc_loss(o.loss, o.penalty, critic, fake, real))}

    def sample(self, n, generator, trajectory=False):
        path = self.flow(self.prior(n, generator))
        return Sample(path[-1], self.opts.flow_steps, path if trajectory else None)


class DistilledDiscFlow(DiscFlow):
    """A Discriminator Flow distilled into a generator: the GPM paper's PM → Int-PM pairing.

    Phase 1 trains the discriminator flow as :class:`DiscFlow`. Phase 2 fits a generator g to the
    flow's map: g(z) ≈ Φ(z), the end point of the flow started at x_0 = z, by least squares on
    fresh z. Sampling is then one generator call instead of ``flow_steps`` gradient evaluations.
    """

    name = "disc-flow-gen"
    kind = "Int-PM"
    summary = "a discriminator flow distilled into a generator g(z) ≈ flow end point from x_0 = z"
    Options = DistilledOptions

    def __init__(self, data, options, device):
        super().__init__(data, options, device)
        self.g = generator(self.opts, self.dim, self.dim, data.image_shape).to(self.device)
        self.g_opt = adam(self.g.parameters(), self.opts.gen_lr)

    @property
    def total_steps(self):
        return self.opts.steps + self.opts.distill_steps

    def modules(self):
        return {**super().modules(), "generator": self.g}

    def optimizers(self):
        return {**super().optimizers(), "generator": self.g_opt}

    def train_step(self, step):
        if step < self.opts.steps:
            return super().train_step(step)
        z = torch.randn(self.opts.batch, self.dim, device=self.device)
        target = self.flow(z)[-1]
        return {"distill_loss": step_on(self.g_opt, (self.g(z) - target).pow(2).sum(1).mean())}

    @torch.no_grad()
    def sample(self, n, generator, trajectory=False):
        return Sample(self.g(self.prior(n, generator)), 1)

"""DiffFlow sampling (Zhang et al. 2023) with a chosen diffusion ↔ GAN weight.

Particles start from N(0, (σ_d² + σ_max²) I) and follow ``solvers.DiffFlowSDE``

    dx = [β(t) ∇log p_σ(t)(x) − (β(t) − g(t)²/2) ∇log q_σ(t)(x)] dt + g(t) dW,  g² = 2 β · mix,

for t ∈ [0, 1], with σ(t) decaying geometrically from σ_max to σ_min and β(t) = ``beta`` · σ(t)²
(the annealed-Langevin step scale). ``mix = 1`` is annealed Langevin on the data (the
score-based-diffusion end), ``mix = 0`` the noiseless score-difference flow (the GAN end).

Scores: ``scores="kde"`` takes both in closed form (exact scores of the training set and of the
particles convolved with N(0, σ²I): training-free); ``scores="net"`` learns the data score as an
EDM denoiser first (``steps``) and keeps the generated-data score in closed form on the particles.
``q_bandwidth`` (> 0) smooths the particles' KDE at that fixed bandwidth instead of σ(t).

Changing ``mix`` leaves the marginals unchanged only when the generated score is the score of the
particles' own law; a smoothed one (any σ > 0 or q_bandwidth > 0) makes them depend on ``mix``,
less so for smaller smoothing (see ``solvers.diffflow`` and its Gaussian test).
"""

from __future__ import annotations

import math

import torch

import solvers

from ..ops import kde_score
from .base import particle_normals, solver_sample
from .edm import DenoiserMethod
from .options import DiffFlowOptions


class DiffFlow(DenoiserMethod):
    name = "diffflow"
    kind = "PM"
    paper = "Zhang et al. 2023"
    summary = "one SDE between diffusion (mix=1) and GAN-like flow (mix=0); scores in closed form or a net"
    Options = DiffFlowOptions
    sharded_sampling = True

    @property
    def total_steps(self):
        return self.opts.steps if self.opts.scores == "net" else 0

    def sigma(self, t) -> float:
        o = self.opts
        return o.sigma_max * (o.sigma_min / o.sigma_max) ** float(t)

    def data_score(self, t, x):
        s = self.sigma(t)
        if self.opts.scores == "kde":
            return kde_score(x, self.x_train, bandwidth=s)
        return self.net.score(x, s)

    def sde(self) -> solvers.DiffFlowSDE:
        o = self.opts
        q_bw = (lambda t: o.q_bandwidth) if o.q_bandwidth > 0 else self.sigma
        if self.par.world > 1:  # the generated score is over all ranks' particles
            from .. import distributed

            gen_score = lambda t, x: distributed.kde_score(x, x, bandwidth=q_bw(t), group=self.par.group)
        else:
            gen_score = lambda t, x: kde_score(x, x, bandwidth=q_bw(t))
        return solvers.DiffFlowSDE.mixed(self.data_score, gen_score, beta=lambda t: o.beta * self.sigma(t) ** 2, mix=o.mix)

    def prior(self, n, generator, scale=1.0):
        return scale * particle_normals(self, n, generator).draw((0,), n, self.dim)

    @torch.no_grad()
    def sample(self, n, generator, trajectory=False):
        o = self.opts
        # Starting particles and noise drawn per global particle: the same on any number of ranks.
        normals = particle_normals(self, n, generator)
        x0 = math.sqrt(self.net.sigma_data**2 + o.sigma_max**2) * normals.draw((0,), n, self.dim)
        ts = torch.linspace(0.0, 1.0, o.sample_steps + 1, device=self.device)
        bm = solvers.ShardedBrownian(normals.seed, n, self.dim, start=normals.start, device=self.device)
        out = solvers.sdeint(self.sde(), x0, ts, bm=bm, save="all" if trajectory else "last")
        return solver_sample(out, o.sample_steps, trajectory)

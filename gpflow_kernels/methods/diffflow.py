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

Likelihood (``final.nll``): DiffFlow's deterministic counterpart is the g = 0 flow
β(∇log p_σ − ∇log q̃). Its q̃ comes from particles, so the density of a held-out point is that of
the flow map of v(t, x) = β(t)(∇log p_σ(t)(x) − ∇log q̃_t(x)) with q̃_t the KDE of ``NLL_PARTICLES``
particles that follow the same flow from the prior (their path solved once, at ``NLL_PATH_POINTS``
times, linearly interpolated). That map pushes the prior to a proper density, which is what we
report; it is the mix = 0 model's density only as far as that KDE is q_t. The paper's own
likelihood construction was not available to us (only its abstract): this construction is ours.
"""

from __future__ import annotations

import math

import torch

import solvers

from ..ops import kde_score
from .base import LikelihoodFlow, particle_normals, solver_sample
from .edm import DenoiserMethod
from .options import DiffFlowOptions


NLL_PARTICLES = 512
NLL_PATH_POINTS = 64


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

    def likelihood_flow(self, generator):
        o = self.opts
        q_bw = (lambda t: o.q_bandwidth) if o.q_bandwidth > 0 else self.sigma
        beta = lambda t: o.beta * self.sigma(t) ** 2
        std0 = math.sqrt(self.net.sigma_data**2 + o.sigma_max**2)

        def velocity(t, x, particles):
            return beta(t) * (self.data_score(t, x) - kde_score(x, particles, bandwidth=q_bw(t)))

        p0 = std0 * torch.randn(NLL_PARTICLES, self.dim, generator=generator, device=self.device)
        grid = torch.linspace(0.0, 1.0, NLL_PATH_POINTS + 1, device=self.device)
        path = solvers.odeint(lambda t, p: velocity(t, p, p), p0, grid, method="dopri5", rtol=1e-4, atol=1e-4)

        def field(t, x):
            u = float(t) * NLL_PATH_POINTS
            i = min(int(u), NLL_PATH_POINTS - 1)
            return velocity(t, x, torch.lerp(path[i], path[i + 1], u - i))

        return LikelihoodFlow(field, torch.tensor([1.0, 0.0], device=self.device), solvers.gaussian_log_prob(std0),
                              f"DiffFlow deterministic counterpart (g = 0), generated score from {NLL_PARTICLES} particles")

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

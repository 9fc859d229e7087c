"""Classical training-free particle flows toward a data set, for comparison.

- ``mmd-flow``: dx/dt = ∇h(x), h the MMD witness (Arbel et al. 2019), with noise injection β(t)
  decaying linearly to 0; Euler steps of size ``step_size`` (``solvers.MMDFlow``).
- ``svgd``: Stein variational gradient descent (Liu & Wang 2016) toward the data smoothed at
  ``sigma`` (its score in closed form, ``kde_score``), median-heuristic kernel (``solvers.SteinFlow``).
- ``langevin``: annealed Langevin dynamics (Song & Ermon 2019): ``levels`` noise levels σ_i from
  ``sigma_max`` down to ``sigma_min``, ``sample_steps`` steps each, step α_i = ε σ_i²/σ_min², with
  the exact score of the data smoothed at σ_i (``solvers.LangevinFlow``).
Each draws ``n_data`` data points per run as the target sample.
"""

from __future__ import annotations

import torch

import solvers

from ..ops import kde_score
from .base import Method, Sample, particle_normals, solver_sample
from .options import LangevinOptions, MMDFlowOptions, SVGDOptions


class _Flow(Method):
    kind = "flow"
    sharded_sampling = True

    def target(self, generator):
        o = self.opts
        idx = torch.randperm(len(self.x_train), generator=generator, device=self.device)[: o.n_data]
        return self.x_train[idx]

    def prior(self, n, generator, scale=1.0):
        """N(0, scale² I) particles drawn per global particle (the same on any number of ranks)."""
        return scale * self.normals(n, generator).draw((0,), n, self.dim)

    def normals(self, n, generator) -> solvers.ParticleNormals:
        return particle_normals(self, n, generator)

    def euler(self, field, x0, generator, T: float, trajectory: bool) -> Sample:
        """``sample_steps`` Euler steps of the ODE field over [0, T] from the particles x0."""
        ts = torch.linspace(0, T, self.opts.sample_steps + 1, device=self.device)
        out = solvers.odeint(field, x0, ts, method="euler", save="all" if trajectory else "last")
        return solver_sample(out, self.opts.sample_steps, trajectory)


class MMDFlowMethod(_Flow):
    name = "mmd-flow"
    paper = "Arbel et al. 2019"
    summary = "particles ascend the MMD witness (closed-form IPM critic), with noise injection"
    Options = MMDFlowOptions

    @torch.no_grad()
    def sample(self, n, generator, trajectory=False):
        o = self.opts
        T = o.step_size * o.sample_steps
        bw = torch.tensor([o.bandwidth, 4 * o.bandwidth], device=self.device)
        y = self.target(generator)
        normals = self.normals(n, generator)
        # Under torchrun each rank holds a shard of the target points and of the particles.
        field = solvers.MMDFlow(y[slice(*self.par.shard(len(y)))], bandwidth=bw,
                                noise_level=lambda t: o.noise * max(0.0, 1 - float(t) / T), normals=normals,
                                group=self.par.group)
        return self.euler(field, normals.draw((0,), n, self.dim), generator, T, trajectory)


class SVGDMethod(_Flow):
    name = "svgd"
    paper = "Liu & Wang 2016"
    summary = "Stein variational gradient descent toward the smoothed data (closed-form score)"
    Options = SVGDOptions

    @torch.no_grad()
    def sample(self, n, generator, trajectory=False):
        o = self.opts
        y = self.target(generator)
        field = solvers.SteinFlow(lambda x: kde_score(x, y, bandwidth=o.sigma), group=self.par.group)
        return self.euler(field, self.prior(n, generator), generator, o.step_size * o.sample_steps, trajectory)


class LangevinMethod(_Flow):
    name = "langevin"
    paper = "Song & Ermon 2019"
    summary = "annealed Langevin dynamics on the data smoothed at decreasing noise levels (closed-form scores)"
    Options = LangevinOptions

    @torch.no_grad()
    def sample(self, n, generator, trajectory=False):
        o = self.opts
        y = self.target(generator)
        normals = self.normals(n, generator)
        x = o.sigma_max * normals.draw((0,), n, self.dim)
        states = [x]
        for level, sigma in enumerate(solvers.loglinear_sigmas(o.levels, o.sigma_min, o.sigma_max, append_zero=False).tolist()):
            alpha = o.eps * sigma**2 / o.sigma_min**2
            flow = solvers.LangevinFlow(lambda z, s=sigma: kde_score(z, y, bandwidth=s))
            ts = torch.linspace(0, 0.5 * alpha * o.sample_steps, o.sample_steps + 1, device=self.device)
            # Noise per global particle, one stream per level (the levels share their time grid's start).
            bm = solvers.ShardedBrownian(normals.seed, n, self.dim, start=normals.start, device=self.device,
                                         stream=10 + level)
            x = solvers.sdeint(flow, x, ts, bm=bm, save="last")
            states.append(x)
        return Sample(x, o.levels * o.sample_steps, torch.stack(states) if trajectory else None)

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
from .base import Method, Sample, solver_sample
from .options import LangevinOptions, MMDFlowOptions, SVGDOptions


class _Flow(Method):
    kind = "flow"

    def target(self, generator):
        o = self.opts
        idx = torch.randperm(len(self.x_train), generator=generator, device=self.device)[: o.n_data]
        return self.x_train[idx]

    def euler(self, field, n, generator, T: float, trajectory: bool) -> Sample:
        """``sample_steps`` Euler steps of the ODE field over [0, T] from N(0, I) particles."""
        ts = torch.linspace(0, T, self.opts.sample_steps + 1, device=self.device)
        out = solvers.odeint(field, self.prior(n, generator), ts, method="euler", save="all" if trajectory else "last")
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
        field = solvers.MMDFlow(self.target(generator), bandwidth=bw,
                                noise_level=lambda t: o.noise * max(0.0, 1 - float(t) / T), generator=generator)
        return self.euler(field, n, generator, T, trajectory)


class SVGDMethod(_Flow):
    name = "svgd"
    paper = "Liu & Wang 2016"
    summary = "Stein variational gradient descent toward the smoothed data (closed-form score)"
    Options = SVGDOptions

    @torch.no_grad()
    def sample(self, n, generator, trajectory=False):
        o = self.opts
        y = self.target(generator)
        field = solvers.SteinFlow(lambda x: kde_score(x, y, bandwidth=o.sigma))
        return self.euler(field, n, generator, o.step_size * o.sample_steps, trajectory)


class LangevinMethod(_Flow):
    name = "langevin"
    paper = "Song & Ermon 2019"
    summary = "annealed Langevin dynamics on the data smoothed at decreasing noise levels (closed-form scores)"
    Options = LangevinOptions

    @torch.no_grad()
    def sample(self, n, generator, trajectory=False):
        o = self.opts
        y = self.target(generator)
        x = self.prior(n, generator, o.sigma_max)
        states = [x]
        for sigma in solvers.loglinear_sigmas(o.levels, o.sigma_min, o.sigma_max, append_zero=False).tolist():
            alpha = o.eps * sigma**2 / o.sigma_min**2
            flow = solvers.LangevinFlow(lambda z, s=sigma: kde_score(z, y, bandwidth=s))
            ts = torch.linspace(0, 0.5 * alpha * o.sample_steps, o.sample_steps + 1, device=self.device)
            x = solvers.sdeint(flow, x, ts, generator=generator, save="last")
            states.append(x)
        return Sample(x, o.levels * o.sample_steps, torch.stack(states) if trajectory else None)

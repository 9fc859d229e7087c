"""EDM diffusion as a particle model (Karras et al. 2022; GPM paper, Table 1 "EDM").

Training: a preconditioned denoiser D(x; σ), σ ~ logNormal(P_mean, P_std), loss
λ(σ) |D(y + σ ε; σ) − y|² with λ = (σ² + σ_d²)/(σ σ_d)², written as denoising score matching with
the Tweedie score (D − x)/σ² and EDM weighting. Generation: particles start at σ_max ε and follow
the probability-flow ODE dx/dσ = (x − D(x; σ))/σ with Heun steps over the Karras grid (optionally
with churn), i.e. ``solvers.sdeint(..., method="edm")``: 2 n − 1 denoiser calls for n levels.
"""

from __future__ import annotations

import torch

import solvers

from ..losses import denoising_score_matching_loss
from .base import LikelihoodFlow, Method, adam, solver_sample, step_on
from ..nets import EDMPrecond, denoiser
from .options import EDMOptions

Tensor = torch.Tensor


def data_sigma(x: Tensor, given: float = 0.0) -> float:
    """σ_data of EDM's preconditioning: ``given`` when > 0 (option ``sigma_data``), else the data's
    per-coordinate standard deviation (EDM uses 0.5 for images in [−1, 1])."""
    return float(given) if given > 0 else float(x.std())


def sample_sigmas(n: int, p_mean: float, p_std: float, device) -> Tensor:
    return (p_mean + p_std * torch.randn(n, device=device)).exp()


def train_denoiser_step(net: EDMPrecond, opt, x: Tensor, p_mean: float, p_std: float) -> float:
    """One EDM training step of ``net`` on the clean batch x (N, D)."""
    sigma = sample_sigmas(x.shape[0], p_mean, p_std, x.device)
    loss = denoising_score_matching_loss(net.score, x, sigma, weighting="edm", sigma_data=net.sigma_data)
    return step_on(opt, loss)


def karras_grid(o: EDMOptions, device) -> Tensor:
    return solvers.karras_sigmas(o.sample_steps, o.sigma_min, o.sigma_max, o.rho).to(device=device, dtype=torch.float32)


def edm_likelihood_flow(net: EDMPrecond, o: EDMOptions, device) -> LikelihoodFlow:
    """The probability-flow ODE dx/dσ = (x − D(x; σ))/σ of the trained denoiser from σ_min (the
    data end of the sampler) to σ_max, with the prior N(0, (σ_max² + σ_data²) I) (our choice: the
    Gaussian with p_σmax's second moment, see ``solvers.edm_prior``)."""
    ts = torch.tensor([o.sigma_min, o.sigma_max], device=device)
    return LikelihoodFlow(solvers.EDMFlow(net), ts, solvers.edm_prior(o.sigma_max, net.sigma_data),
                          "EDM probability-flow ODE, sigma_min to sigma_max")


class DenoiserMethod(Method):
    """A method whose training is EDM training of one denoiser ``self.net`` on the data."""

    def __init__(self, data, options, device):
        super().__init__(data, options, device)
        o = self.opts
        self.net = denoiser(o, self.dim, data.image_shape, data_sigma(data.train, getattr(o, "sigma_data", 0.0))).to(self.device)
        self.opt = adam(self.net.parameters(), o.lr)

    def modules(self):
        return {"denoiser": self.net}

    def optimizers(self):
        return {"denoiser": self.opt}

    def train_step(self, step):
        return {"loss": train_denoiser_step(self.net, self.opt, self.batch(), self.opts.p_mean, self.opts.p_std)}

    def likelihood_flow(self, generator):
        return edm_likelihood_flow(self.net, self.opts, self.device)


class EDM(DenoiserMethod):
    name = "edm"
    kind = "PM"
    paper = "Karras et al. 2022; Franceschi et al. 2023"
    summary = "diffusion: preconditioned denoiser, log-normal σ training, Heun sampler over the Karras grid"
    Options = EDMOptions

    @torch.no_grad()
    def sample(self, n, generator, trajectory=False):
        o = self.opts
        sigmas = karras_grid(o, self.device)
        x0 = self.prior(n, generator, o.sigma_max)
        out = solvers.sdeint(solvers.EDMDenoiser(self.net), x0, sigmas, method="edm", churn=o.churn,
                             generator=generator, save="all" if trajectory else "last")
        return solver_sample(out, 2 * o.sample_steps - 1, trajectory)

"""Closed-form IPM-GAN (MMD witness) discriminator guidance for a diffusion sampler.

Asokan, Shetty, Srikanth & Seelamantula, "GANs Settle Scores!" (arXiv 2306.01654; v2 "Insights into
Closed-form IPM-GAN Discriminator Guidance for Diffusion Modeling"): an IPM-GAN critic in a kernel's
RKHS is optimal in closed form, the MMD witness D*(x) = E_y k(x, y) − E_x' k(x, x'), and its gradient
guides a diffusion sampler. (The polyharmonic kernels come from the same group's "Data Interpolants –
That's What Discriminators in Higher-order Gradient-regularized GANs Are", arXiv 2306.00785.)

How the guidance enters the sampler is our choice, as the guidance paper's exact update was not
available to us: following discriminator guidance (Kim et al. 2023), it is added to the score inside
every derivative of the deterministic EDM sampler over the Karras grid,

    d(x, σ) = (x − D(x; σ))/σ − λ σ ∇D*_σ(x),      x_{i+1} = x_i + (σ_{i+1} − σ_i) d   (Euler; Heun
    averages d at both ends),

i.e. the score (D − x)/σ² becomes (D − x)/σ² + λ ∇D*_σ, so its effect converges as the grid is
refined instead of growing with the number of steps. ``guidance_mode="kick"`` keeps the earlier
post-step form x_{i+1} ← x_{i+1} + λ ∇D*_{σ_{i+1}}(x_{i+1}) for comparison (benchmarks/RESULTS.md).
D*_σ compares the particles with ``n_data`` data samples noised to the same level σ (both sets then
live at noise level σ) and, with ``scale_bandwidth``, the kernel's bandwidth b grows as sqrt(b² + σ²)
so the witness is informative at every level. ``sampler``: "heun" (EDM) or "euler" (which is DDIM
for this ODE, Karras et al. 2022 §3). ``guidance=0`` is the plain sampler: the run also reports it as
the baseline.

``latent > 0`` runs the same in the latent space of a small autoencoder (trained first, for
``ae_steps``): the denoiser, the data samples and the guidance all live in latent space, and the
samples are decoded (latent diffusion, as in the paper's LDM experiments).
"""

from __future__ import annotations

import math
from typing import Callable, Tuple

import torch
from torch.nn import functional as F

import solvers

from ..ops import mmd_field
from .base import Method, Sample, adam, step_on
from .edm import data_sigma, edm_likelihood_flow, karras_grid, train_denoiser_step
from ..nets import DCGANDiscriminator, DCGANGenerator, denoiser, mlp, use_conv
from .options import GuidanceOptions

Tensor = torch.Tensor


class MMDGuidance(Method):
    name = "mmd-guidance"
    kind = "PM"
    paper = "Asokan et al. 2023"
    summary = "EDM/DDIM sampler plus λ ∇ of the closed-form MMD witness (IPM-GAN critic), optionally in latent space"
    Options = GuidanceOptions

    def __init__(self, data, options, device):
        super().__init__(data, options, device)
        o = self.opts
        self.space_dim = o.latent or self.dim
        if o.latent:
            if use_conv(o, data.image_shape):  # a convolutional autoencoder on images (latent diffusion)
                self.enc = DCGANDiscriminator(data.image_shape, o.channels, d_out=o.latent).to(self.device)
                self.dec = DCGANGenerator(o.latent, data.image_shape, o.channels).to(self.device)
            else:
                self.enc = mlp(self.dim, o.latent, o.hidden, 2).to(self.device)
                self.dec = mlp(o.latent, self.dim, o.hidden, 2).to(self.device)
            self.ae_opt = adam(list(self.enc.parameters()) + list(self.dec.parameters()), o.lr)
        self.net = denoiser(o, self.space_dim, None if o.latent else data.image_shape,
                            data_sigma(data.train, o.sigma_data)).to(self.device)
        self.opt = adam(self.net.parameters(), o.lr)
        self._codes = None

    @property
    def ae_phase(self):
        return self.opts.ae_steps if self.opts.latent else 0

    @property
    def total_steps(self):
        return self.ae_phase + self.opts.steps

    def modules(self):
        m = {"denoiser": self.net}
        if self.opts.latent:
            m.update(encoder=self.enc, decoder=self.dec)
        return m

    def optimizers(self):
        m = {"denoiser": self.opt}
        if self.opts.latent:
            m["autoencoder"] = self.ae_opt
        return m

    def codes(self) -> torch.Tensor:
        """The training set in the space the sampler works in (latent codes, or the points): the
        witness's data and σ_data (the in-memory subset when the data are streamed)."""
        if not self.opts.latent:
            return self.x_train
        if self._codes is None:
            with torch.no_grad():
                self._codes = self.enc(self.x_train)
        return self._codes

    def train_step(self, step):
        o = self.opts
        if step < self.ae_phase:
            x = self.batch()
            return {"ae_loss": step_on(self.ae_opt, F.mse_loss(self.dec(self.enc(x)), x))}
        if step == self.ae_phase and o.latent:
            self._codes = None
            self.net.sigma_data = data_sigma(self.codes(), self.opts.sigma_data)
        x = self.batch()  # from this rank's shard, or the file when the data are streamed
        if o.latent:
            with torch.no_grad():
                x = self.enc(x)
        return {"loss": train_denoiser_step(self.net, self.opt, x, o.p_mean, o.p_std)}

    def likelihood_flow(self, generator):
        """The unguided model's (the EDM denoiser's) flow: the guided sampler's drift depends on the
        whole particle set, so it has no per-sample density; none in latent mode either."""
        return None if self.opts.latent else edm_likelihood_flow(self.net, self.opts, self.device)

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._codes = None
        if self.opts.latent:
            self.net.sigma_data = data_sigma(self.codes(), self.opts.sigma_data)

    def witness_field(self, x, sigma: float, ref, generator):
        """∇D*_σ(x): MMD witness gradient between the particles and the reference data noised to σ."""
        o = self.opts
        y = ref + sigma * torch.randn(ref.shape, generator=generator, device=ref.device)
        bw = math.sqrt(o.bandwidth**2 + sigma**2) if o.scale_bandwidth else o.bandwidth
        if self.par.world > 1:
            # Under torchrun the particles are split over the ranks: the witness is between all of
            # them and the union of the ranks' reference draws (the sharded op).
            from .. import distributed

            return distributed.mmd_field(x, y, kernel=o.kernel, bandwidth=bw, group=self.par.group)
        return mmd_field(x, y, kernel=o.kernel, bandwidth=bw)

    @torch.no_grad()
    def sample(self, n, generator, trajectory=False, guidance=None):
        o = self.opts
        lam = o.guidance if guidance is None else guidance
        codes = self.codes()
        ref = codes[torch.randperm(len(codes), generator=generator, device=self.device)[: o.n_data]]
        sigmas = karras_grid(o, self.device)
        x = o.sigma_max * torch.randn(n, self.space_dim, generator=generator, device=self.device)
        witness = lambda z, sigma: self.witness_field(z, sigma, ref, generator)
        x, states, nfe = guided_sampler(self.net, x, sigmas, witness, lam, heun=o.sampler == "heun",
                                        mode=o.guidance_mode, keep_path=trajectory)
        path = torch.stack(states) if trajectory else None
        if o.latent:
            x = self.dec(x)
            path = torch.stack([self.dec(p) for p in path]) if trajectory else None
        return Sample(x, nfe, path)


def guided_sampler(denoiser: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigmas: Tensor,
                   witness: Callable[[Tensor, float], Tensor], lam: float, *, heun: bool = True,
                   mode: str = "score", keep_path: bool = False) -> Tuple[Tensor, list, int]:
    """EDM's deterministic sampler over ``sigmas`` (decreasing, last 0) with MMD-witness guidance.

    denoiser(x, σ) -> D(x; σ); witness(x, σ) -> ∇D*_σ(x), both shaped like x: (n, D).
    mode "score": d = (x − D)/σ − λ σ ∇D*_σ inside every derivative; "kick": the plain step, then
    x += λ ∇D*_{σ_next}(x). Returns (x, states (if keep_path, else [x0]), denoiser calls).
    """
    def deriv(z, sigma):
        d = (z - denoiser(z, sigma)) / sigma
        if lam and mode == "score":
            d = d - lam * float(sigma) * witness(z, float(sigma))
        return d

    states, nfe = [x], 0
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = deriv(x, s)
        x_next = x + (s_next - s) * d
        nfe += 1
        if heun and float(s_next) > 0:
            x_next = x + (s_next - s) * 0.5 * (d + deriv(x_next, s_next))
            nfe += 1
        if lam and mode == "kick":
            x_next = x_next + lam * witness(x_next, float(s_next))
        x = x_next
        if not bool(torch.isfinite(x).all()):
            raise solvers.NonFiniteError(f"particles became non-finite at step {i + 1} (sigma={float(s_next):.4g}); "
                                         "lower the guidance weight")
        if keep_path:
            states.append(x)
    return x, states, nfe

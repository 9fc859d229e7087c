"""EDM's stochastic sampler step (Karras et al. 2022, Algorithm 2) and denoiser wrappers."""

from __future__ import annotations

from typing import Callable, Optional

import torch

Tensor = torch.Tensor


def edm_step(denoiser: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigma: Tensor, sigma_next: Tensor,
             gamma: float, s_noise: float, generator: Optional[torch.Generator]) -> Tensor:
    """One step from σ to σ_next of the probability-flow ODE dx/dσ = (x − D(x; σ))/σ.

    Churn first raises the noise to σ̂ = σ (1 + γ) by adding fresh noise, then takes a Heun step
    (an Euler step when σ_next = 0).
    """
    sigma_hat = sigma * (1.0 + gamma)
    if gamma > 0:
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = x + torch.sqrt(sigma_hat**2 - sigma**2) * s_noise * eps
    d = (x - denoiser(x, sigma_hat)) / sigma_hat
    x_next = x + (sigma_next - sigma_hat) * d
    if float(sigma_next) > 0:
        d2 = (x_next - denoiser(x_next, sigma_next)) / sigma_next
        x_next = x + (sigma_next - sigma_hat) * (0.5 * (d + d2))
    return x_next


class EDMDenoiser:
    """Wraps a denoiser D(x, σ) for ``sdeint(..., method="edm")`` over a σ grid."""

    def __init__(self, denoiser: Callable[[Tensor, Tensor], Tensor]):
        if not callable(denoiser):
            raise TypeError("denoiser must be callable as denoiser(x, sigma)")
        self.denoiser = denoiser


class KDEDenoiser(EDMDenoiser):
    """The ideal denoiser of a finite data set, E[y | y + σ ε = x] (``gpflow_kernels.kde_denoiser``).

    With it, EDM sampling reproduces the data set's points: the closed-form PM of the GPM paper.
    """

    def __init__(self, data: Tensor):
        from gpflow_kernels import kde_denoiser

        self.data = data
        super().__init__(lambda x, sigma: kde_denoiser(x, data, bandwidth=float(sigma)))

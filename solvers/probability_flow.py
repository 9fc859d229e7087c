"""Probability-flow ODEs of our diffusion SDEs: deterministic fields with the SDEs' marginals.

Each is an ``nn.Module`` called as field(t, x) (for ``odeint``, ``log_prob`` and torchdiffeq), and
carries the parameters of the network it wraps, so ``adjoint=True`` finds them.

- :class:`EDMFlow` (VE / EDM; Karras et al. 2022, eq. 1 with σ(t) = t): the time is σ and
  dx/dσ = (x − D(x; σ))/σ = −σ ∇log p_σ(x) with the denoiser D. Integrated from σ_min (data) to
  σ_max it maps p_σmin to p_σmax = p_data ⋆ N(0, σ_max² I), which :func:`edm_prior` approximates.
- :class:`VPFlow` (Song et al. 2021, eq. 13 with f = −½βx, g² = β): dx/dt = −½ β(t) (x + ∇log p_t(x)),
  β(t) = β_min + t (β_max − β_min) on t ∈ [0, 1]; p_1 ≈ N(0, I).
- DiffFlow's deterministic counterpart is :meth:`solvers.DiffFlowSDE.probability_flow`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .likelihood import gaussian_log_prob

Tensor = torch.Tensor


class EDMFlow(nn.Module):
    """field(σ, x) = (x − denoiser(x, σ)) / σ; ``denoiser``: (x (N, *S), σ 0-d) -> (N, *S)."""

    def __init__(self, denoiser: Callable[[Tensor, Tensor], Tensor]):
        super().__init__()
        if not callable(denoiser):
            raise TypeError("denoiser must be callable as denoiser(x, sigma)")
        self.denoiser = denoiser  # an nn.Module is registered as a child, so its parameters show

    def forward(self, sigma: Tensor, x: Tensor) -> Tensor:
        if float(sigma) <= 0:
            raise ValueError(f"EDMFlow is defined for sigma > 0 only, got sigma = {float(sigma):.6g}")
        return (x - self.denoiser(x, sigma)) / sigma


def edm_prior(sigma_max: float, sigma_data: float = 0.0) -> Callable[[Tensor], Tensor]:
    """log N(0, (σ_max² + σ_data²) I): the Gaussian with p_σmax's second moment when the data have
    per-coordinate variance σ_data² and mean 0 (exact for Gaussian data; our choice otherwise)."""
    return gaussian_log_prob(math.sqrt(sigma_max**2 + sigma_data**2))


class VPFlow(nn.Module):
    """field(t, x) = −½ β(t) (x + score(t, x)), β linear from ``beta_min`` (t = 0) to ``beta_max`` (t = 1)."""

    def __init__(self, score: Callable[[Tensor, Tensor], Tensor], beta_min: float = 0.1, beta_max: float = 20.0):
        super().__init__()
        if not callable(score):
            raise TypeError("score must be callable as score(t, x)")
        if not (0 <= beta_min <= beta_max):
            raise ValueError(f"need 0 <= beta_min <= beta_max, got {beta_min!r}, {beta_max!r}")
        self.score, self.beta_min, self.beta_max = score, float(beta_min), float(beta_max)

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def alpha(self, t) -> Tensor:
        """Signal scale α(t) = exp(−½ ∫_0^t β): x_t = α x_0 + √(1 − α²) ε."""
        t = torch.as_tensor(t)
        return torch.exp(-0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t))

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return -0.5 * self.beta(t) * (x + self.score(t, x))

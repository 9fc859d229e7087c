"""Closed-form particle fields from gpflow_kernels, as ODE fields and SDEs.

Each ODE field is an ``nn.Module`` called as field(t, x), so it works with ``solvers.odeint``,
``torchdiffeq.odeint`` and ``torchdiffeq.odeint_adjoint`` alike.
"""

from __future__ import annotations

import numbers
from typing import Callable, Optional, Union

import torch
from torch import nn

import gpflow_kernels as gk

from .sde import SDE

Tensor = torch.Tensor


def _schedule(v: Union[float, Callable[[Tensor], float]]):
    return v if callable(v) else (lambda t, _v=float(v): _v)


class MMDFlow(nn.Module):
    """MMD gradient flow dx/dt = ∇h(x) toward ``data`` (Arbel et al. 2019), h the MMD witness.

    ``noise_level`` β(t) (a number or a function of t) evaluates the field at x + β ε, Arbel et
    al.'s noise injection, which helps particles escape local optima; ``generator`` seeds ε.
    """

    def __init__(self, data: Tensor, *, kernel="gaussian", bandwidth=1.0, noise_level=0.0,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self.data, self.kernel, self.bandwidth = data, kernel, bandwidth
        self.noise_level, self.generator = _schedule(noise_level), generator

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        beta = self.noise_level(t)
        probe = x
        if beta:
            probe = x + beta * torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)
        return gk.mmd_field(probe, self.data, kernel=self.kernel, bandwidth=self.bandwidth, x_ref=x)


class SteinFlow(nn.Module):
    """SVGD as an ODE: dx/dt = φ(x), the Stein variational gradient for the target score."""

    def __init__(self, score: Callable[[Tensor], Tensor], *, kernel="gaussian", bandwidth="median"):
        super().__init__()
        self.score, self.kernel, self.bandwidth = score, kernel, bandwidth

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return gk.svgd_field(x, self.score(x), kernel=self.kernel, bandwidth=self.bandwidth)


class LogRatioField(nn.Module):
    """dx/dt = ∇log p_σ(x) − ∇log q_σ(x): the KL flow between smoothed data and particles.

    Both scores are exact scores of the samples convolved with N(0, σ² I) (``kde_score``): the
    data set and, for q, the particles themselves. ``sigma`` may depend on t.
    """

    def __init__(self, data: Tensor, sigma: Union[float, Callable[[Tensor], float]]):
        super().__init__()
        self.data, self.sigma = data, _schedule(sigma)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        s = float(self.sigma(t))
        return gk.kde_score(x, self.data, bandwidth=s) - gk.kde_score(x, x.detach(), bandwidth=s)


class LangevinFlow(SDE):
    """Overdamped Langevin dynamics dx = ∇log p(x) dt + sqrt(2 T) dW: the KL flow with noise."""

    noise_type = "additive"

    def __init__(self, score: Callable[[Tensor], Tensor], temperature: float = 1.0):
        super().__init__()
        if not (isinstance(temperature, numbers.Real) and temperature >= 0):
            raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
        self.score, self.temperature = score, float(temperature)

    def drift(self, t, x):
        return self.score(x)

    def diffusion(self, t, x):
        return torch.full_like(x, (2.0 * self.temperature) ** 0.5)

"""MLPs: plain, noise/time-conditioned, and EDM preconditioning around a backbone."""

from __future__ import annotations

import math

import torch
from torch import nn

Tensor = torch.Tensor


def mlp(d_in: int, d_out: int, hidden: int, depth: int) -> nn.Sequential:
    """``depth`` hidden layers of width ``hidden`` with SiLU, then a linear output."""
    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.SiLU()]
        d = hidden
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


class FourierEmbedding(nn.Module):
    """A scalar c (noise level or time) as [cos(2π c f), sin(2π c f)] with fixed random frequencies."""

    def __init__(self, dim: int = 32, scale: float = 0.25):
        super().__init__()
        g = torch.Generator().manual_seed(1234)  # fixed: part of the architecture, not of training
        self.register_buffer("freqs", scale * torch.randn(dim // 2, generator=g))

    def forward(self, c: Tensor) -> Tensor:
        arg = 2 * math.pi * c.reshape(-1, 1).to(self.freqs.dtype) * self.freqs
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class ConditionedMLP(nn.Module):
    """F(x, c): x (N, D) and a per-sample scalar c (N,) or () -> (N, D)."""

    def __init__(self, dim: int, hidden: int, depth: int, emb: int = 32, d_out: int = None):
        super().__init__()
        self.embed = FourierEmbedding(emb)
        self.net = mlp(dim + emb, dim if d_out is None else d_out, hidden, depth)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        c = torch.as_tensor(c, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self.net(torch.cat([x, self.embed(c).to(x.dtype)], dim=1))


class EDMPrecond(nn.Module):
    """Karras et al. (2022) preconditioning: D(x; σ) = c_skip x + c_out F(c_in x, c_noise).

    c_skip = σ_d² / (σ² + σ_d²), c_out = σ σ_d / sqrt(σ² + σ_d²), c_in = 1 / sqrt(σ² + σ_d²),
    c_noise = ln(σ) / 4. x: (N, D); σ: a number, () or (N,). F is a noise-conditioned MLP unless a
    ``backbone`` F(x, c_noise) is given (the U-Net on images).
    """

    def __init__(self, dim: int, hidden: int, depth: int, sigma_data: float, backbone: nn.Module = None):
        super().__init__()
        self.F = ConditionedMLP(dim, hidden, depth) if backbone is None else backbone
        self.sigma_data = float(sigma_data)

    def forward(self, x: Tensor, sigma) -> Tensor:
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0]).reshape(-1, 1)
        sd2 = self.sigma_data**2
        norm = (s * s + sd2).sqrt()
        return (sd2 / norm**2) * x + (s * self.sigma_data / norm) * self.F(x / norm, s.log().flatten() / 4)

    def score(self, x: Tensor, sigma) -> Tensor:
        """Tweedie: ∇log p_σ(x) = (D(x; σ) − x) / σ²."""
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0]).reshape(-1, 1)
        return (self(x, sigma) - x) / (s * s)

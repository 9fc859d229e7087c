"""Time and noise-level grids for particle integrators.

Diffusion samplers integrate over noise levels σ going down; all σ grids here are returned in
decreasing order, as 1-d float64 tensors (cast them where you use them).
"""

from __future__ import annotations

import math
import numbers

import torch

Tensor = torch.Tensor


def _count(name: str, n) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
    return int(n)


def _range(sigma_min, sigma_max):
    for name, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    if not sigma_min < sigma_max:
        raise ValueError(f"need sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    return float(sigma_min), float(sigma_max)


def _finish(sig: Tensor, append_zero: bool) -> Tensor:
    return torch.cat([sig, sig.new_zeros(1)]) if append_zero else sig


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  append_zero: bool = True) -> Tensor:
    """EDM's grid σ_i = (σ_max^(1/ρ) + i/(n−1) (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, i = 0..n−1 (Karras et al. 2022).

    Returns n values from σ_max down to σ_min, then a final 0 if ``append_zero`` (n + 1 in all).
    """
    n = _count("n", n)
    sigma_min, sigma_max = _range(sigma_min, sigma_max)
    if not (isinstance(rho, numbers.Real) and rho > 0):
        raise ValueError(f"rho must be > 0, got {rho!r}")
    rho = float(rho)
    if n == 1:
        return _finish(torch.tensor([float(sigma_max)], dtype=torch.float64), append_zero)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _finish((hi + ramp * (lo - hi)) ** rho, append_zero)


def loglinear_sigmas(n: int, sigma_min: float, sigma_max: float, append_zero: bool = True) -> Tensor:
    """Geometric grid from σ_max to σ_min (n values), then 0 if ``append_zero``."""
    n = _count("n", n)
    sigma_min, sigma_max = _range(sigma_min, sigma_max)
    sig = torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n, dtype=torch.float64)
    return _finish(sig, append_zero)


def ve_sigmas(n: int, sigma_min: float = 0.02, sigma_max: float = 100.0, append_zero: bool = True) -> Tensor:
    """Variance-exploding schedule (Song et al. 2021) as EDM discretises it: geometric in σ."""
    return loglinear_sigmas(n, sigma_min, sigma_max, append_zero)


def vp_sigmas(n: int, beta_min: float = 0.1, beta_max: float = 20.0, eps_t: float = 1e-3,
              append_zero: bool = True) -> Tensor:
    """Variance-preserving schedule (Song et al. 2021) as noise levels σ(t) = sqrt(exp(½ β_d t² + β_min t) − 1).

    β_d = β_max − β_min; t runs linearly from 1 down to ``eps_t`` (EDM, Table 1).
    """
    n = _count("n", n)
    if not (0 < beta_min < beta_max) or not (0 < eps_t < 1):
        raise ValueError(f"need 0 < beta_min < beta_max and 0 < eps_t < 1, got {beta_min}, {beta_max}, {eps_t}")
    t = torch.linspace(1.0, eps_t, n, dtype=torch.float64)
    sig = torch.sqrt(torch.expm1(0.5 * (beta_max - beta_min) * t**2 + beta_min * t))
    return _finish(sig, append_zero)


def linear_grid(t0: float, t1: float, n: int) -> Tensor:
    """n steps from t0 to t1 (n + 1 points, either direction)."""
    n = _count("n", n)
    for name, v in (("t0", t0), ("t1", t1)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if t0 == t1:
        raise ValueError("t0 and t1 must differ")
    return torch.linspace(float(t0), float(t1), n + 1, dtype=torch.float64)

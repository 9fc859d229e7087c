"""Score-matching losses: sliced (Song et al. 2019) and denoising (Vincent 2011; EDM weighting).

``score_fn`` is any callable (usually an ``nn.Module``); the losses are differentiable with
respect to its parameters. Samples are the leading dim of x: (N, *shape); everything after it
is one sample (a point, or an image).
"""

from __future__ import annotations

import numbers
from typing import Callable, Optional, Union

import torch

from . import _checks

Tensor = torch.Tensor

PROJECTIONS = ("gaussian", "rademacher", "sphere")
WEIGHTINGS = ("sigma2", "edm", "none")


def _samples(name: str, x) -> Tensor:
    x = _checks.tensor(name, x)
    if x.dim() < 2 or x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"{name} must have shape (N, *sample_shape) with N >= 1 and a non-empty sample, got {_checks.describe(x)}")
    _checks.finite(name, x)
    return x


def _check_output(what: str, out, x: Tensor) -> Tensor:
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = _checks.describe(out) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"score_fn must return a tensor shaped like its input {tuple(x.shape)} ({what}), got {got}")
    return out


def _projections(kind: str, n: int, like: Tensor, generator) -> Tensor:
    """n directions shaped like ``like`` with E[v vᵀ] = I per sample."""
    shape = (n,) + tuple(like.shape)
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
    if kind == "rademacher":
        bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
        return (2 * bits - 1).to(like.dtype)
    v = torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
    flat = v.flatten(2)
    d = flat.shape[-1]
    return (flat * (d**0.5 / flat.norm(dim=-1, keepdim=True))).view(shape)


def sliced_score_matching_loss(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    n_projections: int = 1,
    variance_reduction: bool = False,
    projection: str = "gaussian",
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Sliced score matching, an unbiased estimate of E_x[tr ∇s(x) + ½ |s(x)|²] (+ const).

    L = mean over x and v of  vᵀ ∇s(x) v + ½ (vᵀ s(x))²,  or with ``variance_reduction`` (SSM-VR)
    vᵀ ∇s(x) v + ½ |s(x)|², using the exact E_v[(vᵀ s)²] = |s|². vᵀ∇s v costs one
    vector-Jacobian product per projection; no Jacobian is formed.

    Args:
        score_fn: x: (N, *shape) -> (N, *shape).
        x: (N, *shape) data samples. If x requires grad (e.g. a generator's output), the loss is
            differentiable with respect to it as well; otherwise x is treated as data.
        projection: "gaussian" N(0, I), "rademacher" ±1, or "sphere" (uniform, radius sqrt(dim)).
    Returns a scalar.
    """
    x = _samples("x", x)
    if isinstance(n_projections, bool) or not isinstance(n_projections, numbers.Integral) or n_projections < 1:
        raise ValueError(f"n_projections must be an integer >= 1, got {n_projections!r}")
    n_projections = int(n_projections)
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    # x keeps its graph when it has one (a generator's output feeding the loss gets its gradient);
    # otherwise a leaf is made so that the Jacobian-vector products have something to differentiate.
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
    s = _check_output("sliced_score_matching_loss", score_fn(x), x)
    v = _projections(projection, n_projections, x, generator)
    total = s.new_zeros(())
    for k in range(n_projections):
        sv = (s * v[k]).flatten(1).sum(1)
        (jv,) = torch.autograd.grad(sv.sum(), x, create_graph=True)
        vjv = (jv * v[k]).flatten(1).sum(1)
        second = 0.5 * s.flatten(1).pow(2).sum(1) if variance_reduction else 0.5 * sv * sv
        total = total + (vjv + second).mean()
    return total / n_projections


def _sigmas(sigma, x: Tensor) -> Tensor:
    """σ as a (N,) tensor."""
    N = x.shape[0]
    if isinstance(sigma, torch.Tensor):
        if sigma.dim() == 0:
            sigma = sigma.expand(N)
        if sigma.shape != (N,):
            raise ValueError(f"sigma must be a number, a scalar tensor or shape ({N},), got shape {tuple(sigma.shape)}")
        sigma = sigma.to(device=x.device, dtype=x.dtype)
        if not bool((torch.isfinite(sigma) & (sigma > 0)).all()):
            raise ValueError("sigma must hold finite values > 0")
        return sigma
    return torch.full((N,), _checks.positive_number("sigma", sigma), dtype=x.dtype, device=x.device)


def denoising_score_matching_loss(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    sigma: Union[float, Tensor],
    *,
    weighting: str = "sigma2",
    sigma_data: float = 0.5,
    noise: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Denoising score matching: mean_i λ(σ_i) |s(x_i + σ_i ε_i, σ_i) + ε_i / σ_i|².

    The minimiser is the score of the data convolved with N(0, σ² I). Weightings λ(σ):
    "sigma2" σ² (Song & Ermon 2019); "edm" σ² (σ² + σ_data²) / σ_data², which equals EDM's loss
    (σ² + σ_data²)/(σ σ_data)² |D(x̃) − x|² for the Tweedie denoiser D = x̃ + σ² s
    (Karras et al. 2022); "none" 1. Squared norms are summed over a sample's dims.

    Args:
        score_fn: (x̃: (N, *shape), σ: (N,)) -> (N, *shape).
        x: (N, *shape) clean data. sigma: a number, or (N,) per-sample noise levels.
        noise: optional ε, shaped like x (otherwise drawn with ``generator``).
    Returns a scalar.
    """
    x = _samples("x", x)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    sd = _checks.positive_number("sigma_data", sigma_data)
    sig = _sigmas(sigma, x)
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    else:
        noise = _checks.tensor("noise", noise)
        if noise.shape != x.shape:
            raise ValueError(f"noise must be shaped like x {tuple(x.shape)}, got {_checks.describe(noise)}")
        _checks.same_kind([("x", x), ("noise", noise)])
        _checks.finite("noise", noise)
    sb = sig.view((-1,) + (1,) * (x.dim() - 1))
    s = _check_output("denoising_score_matching_loss", score_fn(x + sb * noise, sig), x)
    err = (s + noise / sb).flatten(1).pow(2).sum(1)
    if weighting == "sigma2":
        lam = sig * sig
    elif weighting == "edm":
        lam = sig * sig * (sig * sig + sd * sd) / (sd * sd)
    else:
        lam = torch.ones_like(sig)
    return (lam * err).mean()

"""Exact likelihoods of continuous flows by the instantaneous change of variables.

For dx/dt = field(t, x) and the density p_t transported by it, d log p_t(x(t))/dt = −div field, so

    log p_{ts[0]}(x) = prior_log_prob(x(ts[-1])) + ∫_{ts[0]}^{ts[-1]} div field(t, x(t)) dt,

the integral taken along the solve from ts[0] to ts[-1] (either direction). The state is
augmented with the running integral ℓ and both are integrated by an adaptive method
(:mod:`solvers.adaptive`), optionally with adjoint gradients (:mod:`solvers.adjoint`).

The samples must be independent under the field (a network applied per sample, a denoiser):
the divergence of sample i is the trace of ∂field_i/∂x_i only. Interacting fields (MMD, Stein,
a KDE over the particles themselves) have no per-sample density in this sense.

Divergence:
- "exact": the Jacobian diagonal from one ``torch.func.vjp`` and a ``torch.func.vmap`` over the D
  unit cotangents (D backward passes batched into one); cost grows with D. Fields that torch.func
  cannot transform (custom autograd Functions, such as this library's fused kernel ops) get one
  ``torch.autograd.grad`` per unit vector instead.
- "hutchinson": Hutchinson's estimator E[εᵀ J ε] with Rademacher ε (Skilling 1989; Hutchinson
  1990), ``n_probes`` probes per sample, drawn once per solve from ``seed`` and kept fixed along the
  path (as FFJORD does), so log_prob is unbiased and its gradient is that of one fixed estimator.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from . import _checks, adaptive
from .adjoint import adjoint_options, adjoint_solve

Tensor = torch.Tensor

DIVERGENCES = ("exact", "hutchinson")


def gaussian_log_prob(std: float = 1.0, mean: float = 0.0) -> Callable[[Tensor], Tensor]:
    """log N(z; mean, std² I) per sample: z (N, *S) -> (N,) (the prior of most flows)."""
    if not (isinstance(std, (int, float)) and std > 0 and math.isfinite(std)):
        raise ValueError(f"std must be a finite number > 0, got {std!r}")

    def log_prob(z: Tensor) -> Tensor:
        d = z[0].numel()
        r2 = (z - mean).flatten(1).square().sum(1)
        return -0.5 * r2 / std**2 - d * (math.log(std) + 0.5 * math.log(2 * math.pi))

    return log_prob


def divergence_fn(field, kind: str, probes: Optional[Tensor]):
    """(t, x (N, *S)) -> (field(t, x), divergence (N,)).

    torch.func first; a field built on an ``autograd.Function`` without functorch support (our
    fused kernel ops, many extensions) falls back to one ``torch.autograd.grad`` per unit vector or
    probe, with a graph kept only when gradients are being recorded.
    """
    use_func = [True]

    def cotangents(x):
        if kind == "hutchinson":
            return probes
        d = x[0].numel()
        eye = torch.eye(d, dtype=x.dtype, device=x.device).reshape((d, 1) + tuple(x.shape[1:]))
        return eye.expand((d,) + tuple(x.shape))

    def reduce(x, rows, cot):
        if kind == "hutchinson":  # mean over probes of εᵀ J ε
            return (rows * cot).flatten(2).sum(-1).mean(0)
        n, d = x.shape[0], x[0].numel()  # rows[j] = e_jᵀ J: the Jacobian diagonal is rows[j][:, j]
        return rows.reshape(d, n, d).diagonal(dim1=0, dim2=2).sum(-1)

    def with_func(t, x):
        f, pullback = torch.func.vjp(lambda y: field(t, y), x)
        cot = cotangents(x)
        (rows,) = torch.func.vmap(pullback)(cot)
        return f, reduce(x, rows, cot)

    def with_autograd(t, x):
        record = torch.is_grad_enabled()
        with torch.enable_grad():
            xv = x if (record and x.requires_grad) else x.detach().requires_grad_(True)
            f = field(t, xv)
            cot = cotangents(x)
            rows = torch.stack([torch.autograd.grad(f, xv, c, create_graph=record, retain_graph=True)[0] for c in cot])
        return (f if record else f.detach()), reduce(x, rows if record else rows.detach(), cot)

    def div(t, x):
        if use_func[0]:
            try:
                return with_func(t, x)
            except RuntimeError as e:
                if not any(k in str(e) for k in ("functorch", "setup_context", "does not support torch.func")):
                    raise
                use_func[0] = False
        return with_autograd(t, x)

    return div


def log_prob(
    field: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    ts,
    prior_log_prob: Callable[[Tensor], Tensor],
    *,
    divergence: str = "exact",
    n_probes: int = 1,
    seed: int = 0,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 10_000,
    adjoint: bool = False,
    adjoint_rtol: Optional[float] = None,
    adjoint_atol: Optional[float] = None,
    adjoint_params=None,
    stats: Optional[adaptive.SolverStats] = None,
) -> Tensor:
    """log p(x) per sample, shape (N,), under the flow of ``field`` from ts[0] (data) to ts[-1] (prior).

    Args:
        field: (t: 0-d tensor, x: (N, *S)) -> (N, *S), acting on each sample independently.
        x: (N, *S) data points. ts: 1-d, strictly monotone; only its ends matter.
        prior_log_prob: z (N, *S) -> (N,), the log-density at ts[-1] (e.g. :func:`gaussian_log_prob`).
        divergence: "exact" or "hutchinson" (``n_probes`` Rademacher probes, seeded by ``seed``).
        method: "dopri5" or "bosh3", with rtol/atol/max_steps as in ``odeint``.
        adjoint: gradients by the adjoint method (memory independent of the number of steps),
            for x and ``adjoint_params`` (default: the field's parameters when it is an nn.Module; any
            other field must be given them, ``()`` for none, or it is refused).
    Differentiable in x and the field's parameters either way.
    """
    x = _checks.state(x)
    if x.dim() < 2:
        raise ValueError(f"x must be (N, *S) samples with a batch dimension, got shape {tuple(x.shape)}")
    ts = _checks.times(ts, x)
    tab = _checks.method(method, adaptive.ADAPTIVE_METHODS, "log_prob (adaptive)")
    adaptive.check_tolerances(rtol, atol, max_steps)
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive int, got {n_probes!r}")
    for name, fn in (("field", field), ("prior_log_prob", prior_log_prob)):
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    probes = None
    if divergence == "hutchinson":
        gen = torch.Generator(device=x.device).manual_seed(int(seed))
        probes = torch.randint(0, 2, (n_probes,) + tuple(x.shape), generator=gen, device=x.device).to(x.dtype) * 2 - 1
    div = divergence_fn(field, divergence, probes)
    func = lambda t, s: div(t, s[0])
    y0 = (x, x.new_zeros(x.shape[0]))
    opts = dict(tableau=tab, rtol=float(rtol), atol=float(atol), max_steps=max_steps)
    if adjoint:
        params, adj_opts = adjoint_options(field, opts, rtol, atol, adjoint_rtol, adjoint_atol, adjoint_params, max_steps)
        z, ell = adjoint_solve(func, y0, torch.stack([ts[0], ts[-1]]), params, opts, adj_opts, stats)
        z, ell = z[-1], ell[-1]
    else:
        z, ell = adaptive.solve(func, y0, [float(ts[0]), float(ts[-1])], stats=stats, **opts)
    prior = prior_log_prob(z)
    if not isinstance(prior, torch.Tensor) or prior.shape != (x.shape[0],):
        got = tuple(prior.shape) if isinstance(prior, torch.Tensor) else type(prior).__name__
        raise ValueError(f"prior_log_prob must return one value per sample, shape ({x.shape[0]},), got {got}")
    return prior + ell

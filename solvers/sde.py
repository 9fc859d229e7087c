"""Fixed-step Itô SDE integration for particles: dx = drift(t, x) dt + diffusion(t, x) dW.

An SDE object has ``drift(t, x)``, ``diffusion(t, x)`` and ``noise_type``:
- "diagonal": diffusion returns a tensor shaped like x, one Brownian motion per coordinate;
- "additive": as diagonal, and the diffusion does not depend on x (allows stochastic Heun);
- "scalar": diffusion shaped like x, one Brownian motion per particle shared by its coordinates.
:class:`SDE` also exposes torchsde's names (``f``, ``g``, ``noise_type``, ``sde_type``), so the
same object can be given to ``torchsde.sdeint`` unchanged.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

from . import _checks
from .edm import edm_step

Tensor = torch.Tensor


class SDE(nn.Module):
    """Base class: subclasses implement ``drift`` and ``diffusion``; state (N, D) for torchsde."""

    noise_type = "diagonal"
    sde_type = "ito"

    def drift(self, t: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError

    def diffusion(self, t: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError

    # torchsde interface --------------------------------------------------------------------
    def f(self, t, y):
        return self.drift(t, y)

    def g(self, t, y):
        g = torch.broadcast_to(self.diffusion(t, y), y.shape)
        if self.noise_type == "scalar":
            return g.unsqueeze(-1)  # (N, D, 1): one Brownian motion per particle
        if self.noise_type == "additive":
            return torch.diag_embed(g)  # torchsde's additive noise takes a (N, D, D) matrix
        return g


def _noise_shape(sde, x: Tensor):
    return tuple(x.shape[:-1]) + (1,) if sde.noise_type == "scalar" else tuple(x.shape)


class _Increments:
    """Brownian increments: drawn with a generator, read from a tensor, or from bm(t0, t1)."""

    def __init__(self, bm, generator, shape, x: Tensor, n_steps: int):
        self.bm, self.generator, self.shape, self.x = bm, generator, shape, x
        if isinstance(bm, torch.Tensor):
            want = (n_steps,) + shape
            if tuple(bm.shape) != want:
                raise ValueError(f"bm as a tensor of increments must have shape {want} (steps, *noise), got {tuple(bm.shape)}")
        elif bm is not None and not callable(bm):
            raise TypeError("bm must be None, a tensor of increments, or a callable bm(t0, t1) such as torchsde.BrownianInterval")

    def __call__(self, k: int, t0: Tensor, t1: Tensor, dt: float):
        """(z, scale) with the increment dW = scale · z; the scale is folded into the update."""
        if self.bm is None:
            z = torch.randn(self.shape, generator=self.generator, dtype=self.x.dtype, device=self.x.device)
            return z, math.sqrt(abs(dt))
        if isinstance(self.bm, torch.Tensor):
            return self.bm[k], 1.0
        # torchsde's Brownian objects take the ordered pair; the increment over a backwards
        # step is the negative of the forward increment.
        if t1 >= t0:
            return self.bm(t0, t1).reshape(self.shape), 1.0
        return self.bm(t1, t0).reshape(self.shape), -1.0


def _em(sde, t0, t1, dt, x, z, scale):
    # x + dt f + g (scale z), as two fused passes.
    return x.add(sde.drift(t0, x), alpha=dt).addcmul_(sde.diffusion(t0, x), z, value=scale)


def _heun(sde, t0, t1, dt, x, z, scale):
    f0, g0 = sde.drift(t0, x), sde.diffusion(t0, x)
    pred = x.add(f0, alpha=dt).addcmul_(g0, z, value=scale)
    f1, g1 = sde.drift(t1, pred), sde.diffusion(t1, pred)
    return x.add(f0 + f1, alpha=0.5 * dt).addcmul_(g0 + g1, z, value=0.5 * scale)


SDE_METHODS = {"euler_maruyama": _em, "heun": _heun, "edm": None}


def _substeps(ts: Tensor, dt) -> Tensor:
    """The grid of steps: ts itself, or each interval split into ceil(|Δt| / dt) equal steps."""
    if dt is None:
        return ts
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a finite number > 0 or None, got {dt!r}")
    pieces = [ts[:1]]
    for a, b in zip(ts[:-1].tolist(), ts[1:].tolist()):
        k = max(1, math.ceil(abs(b - a) / dt - 1e-9))
        pieces.append(torch.linspace(a, b, k + 1, dtype=ts.dtype, device=ts.device)[1:])
    return torch.cat(pieces)


def sdeint(
    sde,
    x0: Tensor,
    ts,
    *,
    method: str = "euler_maruyama",
    dt: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    bm=None,
    save: str = "all",
    callback: Optional[Callable[[int, Tensor, Tensor], None]] = None,
    check_finite: bool = True,
    churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """Integrate an Itô SDE from x0 over ``ts`` (states returned at ``ts``).

    Args:
        sde: object with drift(t, x), diffusion(t, x), noise_type (see module doc). For
            ``method="edm"``: an object with ``denoiser(x, sigma)``, and ``ts`` is the σ grid.
        method: "euler_maruyama"; "heun" (stochastic Heun, additive noise only, strong order 1);
            "edm" (Karras et al. 2022, Algorithm 2: Heun steps with churn).
        dt: optional step; each interval of ``ts`` is split into ceil(|Δt|/dt) equal steps.
        generator: seeds the Brownian increments (reproducible runs).
        bm: given increments instead: a tensor (steps, *noise_shape) or a callable
            bm(t0, t1) -> W(t1) − W(t0), e.g. ``torchsde.BrownianInterval``.
        save: "all" -> (len(ts), *x0.shape); "last" -> final state.
        churn, s_tmin, s_tmax, s_noise: EDM's S_churn, S_tmin, S_tmax, S_noise.
    """
    x = _checks.state(x0)
    ts = _checks.times(ts, x)
    step_fn = _checks.method(method, SDE_METHODS, "SDE")
    _checks.save_mode(save)
    if method == "edm":
        if not callable(getattr(sde, "denoiser", None)):
            raise TypeError('method="edm" needs an object with denoiser(x, sigma) (e.g. solvers.EDMDenoiser)')
        if not bool((ts[1:] < ts[:-1]).all()) or float(ts[-1]) < 0:
            raise ValueError("for method='edm', ts must be decreasing noise levels >= 0")
    else:
        for attr in ("drift", "diffusion"):
            if not callable(getattr(sde, attr, None)):
                raise TypeError(f"sde must have a callable {attr}(t, x), got {type(sde).__name__}")
        nt = getattr(sde, "noise_type", None)
        if nt not in ("diagonal", "additive", "scalar"):
            raise ValueError(f'sde.noise_type must be "diagonal", "additive" or "scalar", got {nt!r}')
        if method == "heun" and nt != "additive":
            raise ValueError(f'method="heun" is the stochastic Heun scheme for additive noise; this SDE has noise_type={nt!r}')
        _checks.field_output(sde.drift(ts[0], x), x, "sde.drift")
    grid = _substeps(ts, dt)
    save_at = torch.searchsorted(grid.flip(0) if grid[0] > grid[-1] else grid, ts.flip(0) if ts[0] > ts[-1] else ts)
    n = grid.numel() - 1
    steps = (grid[1:] - grid[:-1]).tolist()
    t_at = list(grid.unbind())
    noise_shape = tuple(x.shape) if method == "edm" else _noise_shape(sde, x)
    inc = None if method == "edm" else _Increments(bm, generator, noise_shape, x, n)
    # Indices into the step grid at which ts points fall (grids are built from ts, so exact).
    save_idx = set((n - save_at).tolist()) if grid[0] > grid[-1] else set(save_at.tolist())
    out = x.new_empty((ts.numel(),) + tuple(x.shape)) if save == "all" else None
    k_out = 0
    if out is not None:
        out[0] = x
        k_out = 1
    gamma_max = math.sqrt(2.0) - 1.0
    n_sig = max(n, 1)
    for i in range(n):
        t0, t1, h = t_at[i], t_at[i + 1], steps[i]
        if method == "edm":
            gamma = min(churn / n_sig, gamma_max) if s_tmin <= float(t0) <= s_tmax else 0.0
            x = edm_step(sde.denoiser, x, t0, t1, gamma, s_noise, generator)
        else:
            z, scale = inc(i, t0, t1, h)
            x = step_fn(sde, t0, t1, h, x, z, scale)
        if check_finite:
            _checks.finite_after(x, i + 1, t1)
        if out is not None and (i + 1) in save_idx:
            out[k_out] = x
            k_out += 1
        if callback is not None:
            callback(i + 1, t1, x)
    return out if out is not None else x

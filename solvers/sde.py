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
import numbers
from typing import Callable, Optional

import torch
from torch import nn

from . import _checks, _graph
from .edm import edm_step
from .ode import _axpy

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
    """Brownian increments: drawn with a generator, read from a tensor, or from bm(t0, t1).

    The increment of step k is dW_k = scale_k · draw(k, ...): folding the scale (√|Δt| for drawn
    normals, the direction's sign for a given Brownian motion) into the update saves a pass.
    """

    def __init__(self, bm, generator, shape, x: Tensor, n_steps: int, backwards: bool):
        self.bm, self.generator, self.shape, self.x, self.backwards = bm, generator, shape, x, backwards
        if isinstance(bm, torch.Tensor):
            want = (n_steps,) + shape
            if tuple(bm.shape) != want:
                raise ValueError(f"bm as a tensor of increments must have shape {want} (steps, *noise), got {tuple(bm.shape)}")
        elif bm is not None and not callable(bm):
            raise TypeError("bm must be None, a tensor of increments, or a callable bm(t0, t1) such as torchsde.BrownianInterval")

    def scales(self, steps):
        if self.bm is None:
            return [math.sqrt(abs(h)) for h in steps]
        # torchsde's Brownian objects take the ordered pair; the increment over a backwards
        # step is the negative of the forward increment.
        sign = -1.0 if self.backwards and not isinstance(self.bm, torch.Tensor) else 1.0
        return [sign] * len(steps)

    def draw(self, k: int, t0: Tensor, t1: Tensor) -> Tensor:
        if self.bm is None:
            return torch.randn(self.shape, generator=self.generator, dtype=self.x.dtype, device=self.x.device)
        if isinstance(self.bm, torch.Tensor):
            return self.bm[k]
        return (self.bm(t1, t0) if self.backwards else self.bm(t0, t1)).reshape(self.shape)


def _noise(x: Tensor, g: Tensor, z: Tensor, s) -> Tensor:
    """x + s g z in place on the fresh tensor x (s a float: one fused pass; a 0-d tensor in the
    compiled and graph-captured loops, so that one graph serves every step)."""
    return x.addcmul_(g, z, value=s) if isinstance(s, float) else x.add_(g * z * s)


def _em(sde, t0, t1, dt, x, z, scale):
    return _noise(_axpy(x, sde.drift(t0, x), dt), sde.diffusion(t0, x), z, scale)


def _heun(sde, t0, t1, dt, x, z, scale):
    f0, g0 = sde.drift(t0, x), sde.diffusion(t0, x)
    pred = _noise(_axpy(x, f0, dt), g0, z, scale)
    f1, g1 = sde.drift(t1, pred), sde.diffusion(t1, pred)
    return _noise(_axpy(x, f0 + f1, 0.5 * dt), g0 + g1, z, 0.5 * scale)


SDE_METHODS = {"euler_maruyama": _em, "heun": _heun, "edm": None}


def _substeps(ts: Tensor, dt) -> Tensor:
    """The grid of steps: ts itself, or each interval split into ceil(|Δt| / dt) equal steps."""
    if dt is None:
        return ts
    if isinstance(dt, bool) or not isinstance(dt, numbers.Real) or not (math.isfinite(dt) and dt > 0):
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
    compile: bool = False,
    cuda_graph: bool = False,
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
        callback: called as callback(step, t, x) after every step.
        check_finite: raise ``NonFiniteError`` naming the step when particles turn non-finite. On
            the CPU the loop stops at that step; on a GPU the check stays on the device (no host
            sync per step) and the error is raised when the loop ends.
        compile: ``torch.compile`` one step (drift, diffusion and update) once, with the times,
            step and increment as inputs, and reuse it for every step (euler_maruyama, heun).
        cuda_graph: on CUDA, capture one step in a CUDA graph and replay it (euler_maruyama,
            heun). The increments are drawn outside the graph, so they are the same numbers as
            in the eager loop. drift and diffusion must be capturable (no host syncs).
        churn, s_tmin, s_tmax, s_noise: EDM's S_churn, S_tmin, S_tmax, S_noise.
    """
    x = _checks.state(x0)
    ts = _checks.times(ts, x)
    step_fn = _checks.method(method, SDE_METHODS, "SDE")
    _checks.save_mode(save)
    _graph.check_options(x, compile, cuda_graph)
    if method == "edm":
        if compile or cuda_graph:
            raise ValueError('compile and cuda_graph are for method="euler_maruyama" or "heun", not "edm"')
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
    backwards = bool(grid[0] > grid[-1])
    save_at = torch.searchsorted(grid.flip(0) if backwards else grid, ts.flip(0) if backwards else ts)
    n = grid.numel() - 1
    steps = (grid[1:] - grid[:-1]).tolist()
    t_at = list(grid.unbind())
    # Indices into the step grid at which ts points fall (grids are built from ts, so exact),
    # mapped to their row of the output.
    save_row = {int(k): r for r, k in enumerate(((n - save_at).flip(0) if backwards else save_at).tolist())}
    out = x.new_empty((ts.numel(),) + tuple(x.shape)) if save == "all" else None
    if out is not None:
        out[0] = x

    watch = _checks.FiniteWatch(x, t_at, check_finite)

    def after(i, xs):
        if out is not None and i in save_row:
            out[save_row[i]] = xs
        if callback is not None:
            callback(i, t_at[i], xs)

    if method == "edm":
        gamma_max = math.sqrt(2.0) - 1.0
        sigmas = grid.tolist()
        for i in range(n):
            gamma = min(churn / max(n, 1), gamma_max) if s_tmin <= sigmas[i] <= s_tmax else 0.0
            x = edm_step(sde.denoiser, x, t_at[i], t_at[i + 1], gamma, s_noise, generator)
            watch.after(x, i + 1)
            after(i + 1, x)
        watch.finish()
        return out if out is not None else x

    inc = _Increments(bm, generator, _noise_shape(sde, x), x, n, backwards)
    scales = inc.scales(steps)
    dts = steps
    if compile or cuda_graph:
        # Tensors, not Python floats: one compiled graph / captured graph serves every step.
        dts = list((grid[1:] - grid[:-1]).unbind())
        scales = list(torch.tensor(scales, dtype=x.dtype, device=x.device).unbind())

    def one_step(x, t0, t1, dt, z, scale):
        return step_fn(sde, t0, t1, dt, x, z, scale)

    if cuda_graph:
        inputs = lambda i: {"t0": t_at[i], "t1": t_at[i + 1], "dt": dts[i], "z": inc.draw(i, t_at[i], t_at[i + 1]),
                            "scale": scales[i]}
        last = _graph.replay_loop(one_step, x, inputs, n, t_at, after, check_finite)
        return out if out is not None else last
    step = torch.compile(one_step, dynamic=False) if compile else one_step
    for i in range(n):
        x = step(x, t_at[i], t_at[i + 1], dts[i], inc.draw(i, t_at[i], t_at[i + 1]), scales[i])
        watch.after(x, i + 1)
        after(i + 1, x)
    watch.finish()
    return out if out is not None else x

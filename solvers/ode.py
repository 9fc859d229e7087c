"""Fixed-step ODE integration of particle fields dx/dt = field(t, x).

``field`` receives all particles at once (shape (..., N, D)), so interacting fields (MMD, Stein)
are valid. The loop does no Python work per step beyond the field calls: times are precomputed
tensors, the output buffer is preallocated.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from . import _checks

Tensor = torch.Tensor
Field = Callable[[Tensor, Tensor], Tensor]


class Method:
    """One explicit Runge–Kutta step. ``order``: global convergence order.

    ``t0, t_half, t1`` are 0-d tensors (what the field receives); ``dt`` is a Python float so that
    every update is a single fused ``add``/``add_`` pass with ``alpha=``.
    """

    name = "method"
    order = 0

    def step(self, field: Field, t0: Tensor, t_half: Tensor, t1: Tensor, dt: float, x: Tensor) -> Tensor:
        raise NotImplementedError


class Euler(Method):
    name, order = "euler", 1

    def step(self, field, t0, t_half, t1, dt, x):
        return x.add(field(t0, x), alpha=dt)


class Midpoint(Method):
    name, order = "midpoint", 2

    def step(self, field, t0, t_half, t1, dt, x):
        return x.add(field(t_half, x.add(field(t0, x), alpha=0.5 * dt)), alpha=dt)


class Heun(Method):
    """Explicit trapezoid (Heun's second-order method): the EDM sampler's deterministic step."""

    name, order = "heun", 2

    def step(self, field, t0, t_half, t1, dt, x):
        k1 = field(t0, x)
        k2 = field(t1, x.add(k1, alpha=dt))
        return x.add(k1 + k2, alpha=0.5 * dt)


class RK4(Method):
    """The classical fourth-order Runge–Kutta method."""

    name, order = "rk4", 4

    def step(self, field, t0, t_half, t1, dt, x):
        k1 = field(t0, x)
        k2 = field(t_half, x.add(k1, alpha=0.5 * dt))
        k3 = field(t_half, x.add(k2, alpha=0.5 * dt))
        k4 = field(t1, x.add(k3, alpha=dt))
        # One fresh buffer accumulated in place (never the k's: a field may return a tensor it keeps).
        acc = torch.add(k2, k3)
        if torch.is_grad_enabled() and acc.requires_grad:
            return x.add(acc * 2.0 + k1 + k4, alpha=dt / 6.0)
        return x.add(acc.mul_(2.0).add_(k1).add_(k4), alpha=dt / 6.0)


ODE_METHODS = {m.name: m() for m in (Euler, Midpoint, Heun, RK4)}


def odeint(
    field: Field,
    x0: Tensor,
    ts,
    *,
    method: str = "heun",
    save: str = "all",
    callback: Optional[Callable[[int, Tensor, Tensor], None]] = None,
    check_finite: bool = True,
) -> Tensor:
    """Integrate dx/dt = field(t, x) over the grid ``ts`` with one step per interval.

    Args:
        field: (t: 0-d tensor, x: (..., N, D)) -> (..., N, D).
        x0: initial particles. ts: 1-d grid, strictly increasing or decreasing.
        method: "euler", "midpoint", "heun" (2nd order) or "rk4".
        save: "all" returns (len(ts), *x0.shape) with x0 first; "last" returns the final state.
        callback: called as callback(step, t, x) after every step.
        check_finite: stop with ``NonFiniteError`` naming the step when particles turn non-finite.
    """
    x = _checks.state(x0)
    ts = _checks.times(ts, x)
    m = _checks.method(method, ODE_METHODS, "ODE")
    _checks.save_mode(save)
    if not callable(field):
        raise TypeError(f"field must be callable as field(t, x), got {type(field).__name__}")
    _checks.field_output(field(ts[0], x), x, "field")  # one probe call: shape errors name the field
    n = ts.numel() - 1
    # Per-step constants prepared once: no tensor indexing or host syncs inside the loop.
    dts = (ts[1:] - ts[:-1]).tolist()
    t_at = list(ts.unbind())
    halves = list((ts[:-1] + 0.5 * (ts[1:] - ts[:-1])).unbind())
    out = x.new_empty((n + 1,) + tuple(x.shape)) if save == "all" else None
    if out is not None:
        out[0] = x
    for i in range(n):
        x = m.step(field, t_at[i], halves[i], t_at[i + 1], dts[i], x)
        if check_finite:
            _checks.finite_after(x, i + 1, t_at[i + 1])
        if out is not None:
            out[i + 1] = x
        if callback is not None:
            callback(i + 1, t_at[i + 1], x)
    return out if out is not None else x

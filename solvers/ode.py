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
    """One explicit Runge–Kutta step. ``order``: global convergence order."""

    name = "method"
    order = 0

    def step(self, field: Field, t0: Tensor, t_half: Tensor, t1: Tensor, dt: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError


class Euler(Method):
    name, order = "euler", 1

    def step(self, field, t0, t_half, t1, dt, x):
        return x + dt * field(t0, x)


class Midpoint(Method):
    name, order = "midpoint", 2

    def step(self, field, t0, t_half, t1, dt, x):
        return x + dt * field(t_half, x + (0.5 * dt) * field(t0, x))


class Heun(Method):
    """Explicit trapezoid (Heun's second-order method): the EDM sampler's deterministic step."""

    name, order = "heun", 2

    def step(self, field, t0, t_half, t1, dt, x):
        k1 = field(t0, x)
        k2 = field(t1, x + dt * k1)
        return x + (0.5 * dt) * (k1 + k2)


class RK4(Method):
    """The classical fourth-order Runge–Kutta method."""

    name, order = "rk4", 4

    def step(self, field, t0, t_half, t1, dt, x):
        k1 = field(t0, x)
        k2 = field(t_half, x + (0.5 * dt) * k1)
        k3 = field(t_half, x + (0.5 * dt) * k2)
        k4 = field(t1, x + dt * k3)
        return x + (dt / 6.0) * (k1 + 2.0 * (k2 + k3) + k4)


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
    dts = ts[1:] - ts[:-1]
    halves = ts[:-1] + 0.5 * dts
    out = x.new_empty((n + 1,) + tuple(x.shape)) if save == "all" else None
    if out is not None:
        out[0] = x
    for i in range(n):
        x = m.step(field, ts[i], halves[i], ts[i + 1], dts[i], x)
        if check_finite:
            _checks.finite_after(x, i + 1, ts[i + 1])
        if out is not None:
            out[i + 1] = x
        if callback is not None:
            callback(i + 1, ts[i + 1], x)
    return out if out is not None else x

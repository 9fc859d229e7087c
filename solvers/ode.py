"""Fixed-step ODE integration of particle fields dx/dt = field(t, x).

``field`` receives all particles at once (shape (..., N, D)), so interacting fields (MMD, Stein)
are valid. The loop does no Python work per step beyond the field calls: times are precomputed
tensors, the output buffer is preallocated.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from . import _checks, _graph

Tensor = torch.Tensor
Field = Callable[[Tensor, Tensor], Tensor]


def _axpy(x: Tensor, k: Tensor, a) -> Tensor:
    """x + a k: one fused pass for a Python float a, plain tensor arithmetic for a 0-d tensor
    (the compiled and graph-captured loops pass the step as a tensor so one graph serves all steps)."""
    return x.add(k, alpha=a) if isinstance(a, float) else x + a * k


class Method:
    """One explicit Runge–Kutta step. ``order``: global convergence order.

    ``t0, t_half, t1`` are 0-d tensors (what the field receives); ``dt`` is a Python float (every
    update is then a single fused pass) or a 0-d tensor (compiled / CUDA-graph loops).
    """

    name = "method"
    order = 0

    def step(self, field: Field, t0: Tensor, t_half: Tensor, t1: Tensor, dt: float, x: Tensor) -> Tensor:
        raise NotImplementedError


class Euler(Method):
    name, order = "euler", 1

    def step(self, field, t0, t_half, t1, dt, x):
        return _axpy(x, field(t0, x), dt)


class Midpoint(Method):
    name, order = "midpoint", 2

    def step(self, field, t0, t_half, t1, dt, x):
        return _axpy(x, field(t_half, _axpy(x, field(t0, x), 0.5 * dt)), dt)


class Heun(Method):
    """Explicit trapezoid (Heun's second-order method): the EDM sampler's deterministic step."""

    name, order = "heun", 2

    def step(self, field, t0, t_half, t1, dt, x):
        k1 = field(t0, x)
        k2 = field(t1, _axpy(x, k1, dt))
        return _axpy(x, k1 + k2, 0.5 * dt)


class RK4(Method):
    """The classical fourth-order Runge–Kutta method."""

    name, order = "rk4", 4

    def step(self, field, t0, t_half, t1, dt, x):
        k1 = field(t0, x)
        k2 = field(t_half, _axpy(x, k1, 0.5 * dt))
        k3 = field(t_half, _axpy(x, k2, 0.5 * dt))
        k4 = field(t1, _axpy(x, k3, dt))
        # One fresh buffer accumulated in place (never the k's: a field may return a tensor it keeps).
        acc = torch.add(k2, k3)
        if torch.is_grad_enabled() and acc.requires_grad:
            return _axpy(x, acc * 2.0 + k1 + k4, dt / 6.0)
        return _axpy(x, acc.mul_(2.0).add_(k1).add_(k4), dt / 6.0)


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
    compile: bool = False,
    cuda_graph: bool = False,
) -> Tensor:
    """Integrate dx/dt = field(t, x) over the grid ``ts`` with one step per interval.

    Args:
        field: (t: 0-d tensor, x: (..., N, D)) -> (..., N, D).
        x0: initial particles. ts: 1-d grid, strictly increasing or decreasing.
        method: "euler", "midpoint", "heun" (2nd order) or "rk4".
        save: "all" returns (len(ts), *x0.shape) with x0 first; "last" returns the final state.
        callback: called as callback(step, t, x) after every step.
        check_finite: raise ``NonFiniteError`` naming the step when particles turn non-finite. On
            the CPU the loop stops at that step; on a GPU the check stays on the device (no host
            sync per step) and the error is raised when the loop ends.
        compile: ``torch.compile`` one step (field included) once, with the times and step size
            as tensor inputs, and reuse it for every step. The first call pays the compile time.
        cuda_graph: on CUDA, capture one step in a CUDA graph and replay it (no per-step launch
            overhead). The field must be capturable: no host syncs, no data-dependent shapes, no
            CPU tensors.
    """
    x = _checks.state(x0)
    ts = _checks.times(ts, x)
    m = _checks.method(method, ODE_METHODS, "ODE")
    _checks.save_mode(save)
    if not callable(field):
        raise TypeError(f"field must be callable as field(t, x), got {type(field).__name__}")
    _graph.check_options(x, compile, cuda_graph)
    _checks.field_output(field(ts[0], x), x, "field")  # one probe call: shape errors name the field
    n = ts.numel() - 1
    # Per-step constants prepared once: no tensor indexing or host syncs inside the loop.
    t_at = list(ts.unbind())
    halves = list((ts[:-1] + 0.5 * (ts[1:] - ts[:-1])).unbind())
    if compile or cuda_graph:
        dts = list((ts[1:] - ts[:-1]).unbind())
    else:
        dts = (ts[1:] - ts[:-1]).tolist()
    out = x.new_empty((n + 1,) + tuple(x.shape)) if save == "all" else None
    if out is not None:
        out[0] = x

    def one_step(x, t0, th, t1, dt):
        return m.step(field, t0, th, t1, dt, x)

    if cuda_graph:
        def after(i, xs):
            if out is not None:
                out[i].copy_(xs)
            if callback is not None:
                callback(i, t_at[i], xs)

        inputs = lambda i: {"t0": t_at[i], "th": halves[i], "t1": t_at[i + 1], "dt": dts[i]}
        last = _graph.replay_loop(one_step, x, inputs, n, t_at, after, check_finite)
        return out if out is not None else last
    step = torch.compile(one_step, dynamic=False) if compile else one_step
    watch = _checks.FiniteWatch(x, t_at, check_finite)
    for i in range(n):
        x = step(x, t_at[i], halves[i], t_at[i + 1], dts[i])
        watch.after(x, i + 1)
        if out is not None:
            out[i + 1] = x
        if callback is not None:
            callback(i + 1, t_at[i + 1], x)
    watch.finish()
    return out if out is not None else x

"""ODE integration of particle fields dx/dt = field(t, x): fixed-step and error-controlled.

``field`` receives all particles at once (shape (..., N, D)), so interacting fields (MMD, Stein)
are valid. The loop does no Python work per step beyond the field calls: times are precomputed
tensors, the output buffer is preallocated.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from . import _checks, _graph, adaptive

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


FIXED_METHODS = {m.name: m() for m in (Euler, Midpoint, Heun, RK4)}
ODE_METHODS = {**FIXED_METHODS, **adaptive.ADAPTIVE_METHODS}


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
    rtol: float = 1e-7,
    atol: float = 1e-9,
    max_steps: int = 10_000,
    first_step: Optional[float] = None,
    controller: Optional["adaptive.PIController"] = None,
    stats: Optional["adaptive.SolverStats"] = None,
    adjoint: bool = False,
    adjoint_rtol: Optional[float] = None,
    adjoint_atol: Optional[float] = None,
    adjoint_params=None,
) -> Tensor:
    """Integrate dx/dt = field(t, x) through the times ``ts``.

    Fixed-step methods take one step per interval of ``ts``. Adaptive methods ("dopri5", "bosh3";
    :mod:`solvers.adaptive`) choose their own steps to keep the local error within
    atol + rtol |x| and interpolate the outputs at ``ts`` (the defaults rtol=1e-7, atol=1e-9 are
    torchdiffeq's).

    Args:
        field: (t: 0-d tensor, x: (..., N, D)) -> (..., N, D).
        x0: initial particles. ts: 1-d grid, strictly increasing or decreasing.
        method: "euler", "midpoint", "heun" (2nd order), "rk4", or adaptive "dopri5" / "bosh3".
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

    Adaptive methods only (ignored by fixed-step ones, except that ``adjoint=True`` is refused):
        rtol, atol: error tolerances. max_steps: accepted + rejected steps before a RuntimeError
            naming t. first_step: the first step size (default: Hairer's selection).
        controller: a :class:`solvers.PIController` (default ``PIController()``).
        stats: a :class:`solvers.SolverStats` that receives the field evaluations and step counts.
        compile: compiles the field (``torch.compile``); the step itself stays eager because its
            size is chosen on the host from the error estimate. cuda_graph is refused for the same
            reason.
        adjoint: gradients by solving the adjoint ODE backward (:mod:`solvers.adjoint`) with
            ``adjoint_rtol`` / ``adjoint_atol`` (default: the forward ones), for x0, ts and
            ``adjoint_params`` (default: the field's parameters when it is an ``nn.Module``; any other
            field must be given them, ``()`` for none, or it is refused).
            Without it, gradients flow through the steps to x0 and the field's parameters (the
            step sizes are constants of the graph) but not to ts.
    """
    x = _checks.state(x0)
    ts = _checks.times(ts, x)
    m = _checks.method(method, ODE_METHODS, "ODE")
    _checks.save_mode(save)
    if not callable(field):
        raise TypeError(f"field must be callable as field(t, x), got {type(field).__name__}")
    if isinstance(m, adaptive.Tableau):
        if cuda_graph:
            raise ValueError(f"cuda_graph=True needs a fixed-step method: {method} picks each step size on the host "
                             "from the error estimate, which a captured graph cannot do")
        return _odeint_adaptive(torch.compile(field, dynamic=False) if compile else field, x, ts, m, save, callback,
                                check_finite, rtol, atol, max_steps, first_step, controller, stats,
                                adjoint, adjoint_rtol, adjoint_atol, adjoint_params)
    if adjoint:
        raise ValueError(f"adjoint=True needs an adaptive method (dopri5 or bosh3), got method={method!r}; "
                         "fixed-step methods back-propagate through their steps directly")
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


def _odeint_adaptive(field, x, ts, tab, save, callback, check_finite, rtol, atol, max_steps, first_step,
                     controller, stats, adjoint, adjoint_rtol, adjoint_atol, adjoint_params):
    from . import adjoint as _adjoint

    adaptive.check_tolerances(rtol, atol, max_steps)
    if first_step is not None and not (isinstance(first_step, (int, float)) and first_step > 0):
        raise ValueError(f"first_step must be a number > 0 or None, got {first_step!r}")
    controller = adaptive.PIController() if controller is None else controller
    if not isinstance(controller, adaptive.PIController):
        raise TypeError(f"controller must be a solvers.PIController, got {type(controller).__name__}")
    opts = dict(tableau=tab, rtol=float(rtol), atol=float(atol), max_steps=max_steps, first_step=first_step,
                controller=controller, check_finite=check_finite)
    func = lambda t, s: (field(t, s[0]),)
    if adjoint:
        params, adj_opts = _adjoint.adjoint_options(field, opts, rtol, atol, adjoint_rtol, adjoint_atol,
                                                    adjoint_params, max_steps)
        (out,) = _adjoint.adjoint_solve(func, (x,), ts, params, opts, adj_opts, stats)
        if callback is not None:
            for i in range(1, out.shape[0]):
                callback(i, ts[i], out[i])
        return out if save == "all" else out[-1]
    out = x.new_empty((ts.numel(),) + tuple(x.shape)) if save == "all" else None
    if out is not None:
        out[0] = x
    t_list = ts.detach().double().tolist()

    def on_output(i, state):
        if out is not None:
            out[i] = state[0]
        if callback is not None:
            callback(i, ts[i], state[0])

    (last,) = adaptive.solve(func, (x,), t_list, stats=stats, on_output=on_output, **opts)
    return out if out is not None else last

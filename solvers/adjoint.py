"""Adjoint gradients of an adaptive solve (Pontryagin; Chen et al. 2018, "Neural ODEs").

Forward: the ODE is solved without recording a graph; only the states at the requested times are
kept. Backward: for each interval [t_{i−1}, t_i], from the last, the augmented system

    dy/dt = f(t, y),   da/dt = −aᵀ ∂f/∂y,   dg/dt = −aᵀ ∂f/∂θ

is solved from t_i back to t_{i−1}, starting from the stored y(t_i), the adjoint a (the incoming
gradient of every later output, plus this output's) and the running parameter gradient g. The
vector–Jacobian products come from one autograd call per evaluation. Memory is the stored outputs
plus one step's stages, whatever the number of steps.

Times: dL/dt_i = ⟨∂L/∂y(t_i), f(t_i, y(t_i))⟩ for i ≥ 1 (moving t_i moves only y(t_i)), and
dL/dt_0 = −⟨a(t_0), f(t_0, y_0)⟩ with a(t_0) the adjoint carried back from the later outputs,
since ∂Φ(t, t_0, y_0)/∂t_0 = −∂Φ/∂y_0 · f(t_0, y_0) for the flow map Φ.
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import torch

from . import adaptive

Tensor = torch.Tensor
State = Tuple[Tensor, ...]


def _solve_outputs(func, y0: State, ts_list, opts: Dict, stats) -> State:
    """All states at ts (each component (T, *shape)); ts_list are Python floats."""
    outs = tuple(y.new_empty((len(ts_list),) + tuple(y.shape)) for y in y0)
    for o, y in zip(outs, y0):
        o[0] = y

    def store(i, state):
        for o, s in zip(outs, state):
            o[i] = s

    adaptive.solve(func, y0, ts_list, stats=stats, on_output=store, **opts)
    return outs


class _AdjointSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, func, n_state, opts, adj_opts, stats, ts, *tensors):
        y0, params = tensors[:n_state], tensors[n_state:]
        ts_list = ts.detach().double().tolist()
        with torch.no_grad():
            outs = _solve_outputs(func, tuple(y.detach() for y in y0), ts_list, opts, stats)
        ctx.func, ctx.n_state, ctx.adj_opts, ctx.stats, ctx.ts_list = func, n_state, adj_opts, stats, ts_list
        ctx.ts_meta = (ts.dtype, ts.device)
        ctx.save_for_backward(*outs, *params)
        return outs

    @staticmethod
    def backward(ctx, *grad_outs):
        n, func, ts_list = ctx.n_state, ctx.func, ctx.ts_list
        saved = ctx.saved_tensors
        ys, params = saved[:n], saved[n:]
        grads = tuple(torch.zeros_like(y) if g is None else g for g, y in zip(grad_outs, ys))
        T = len(ts_list)
        like = ys[0]
        time = lambda t: torch.tensor(t, dtype=like.dtype, device=like.device)
        bstats = adaptive.SolverStats()

        def aug(t, s: State) -> State:
            y, a = s[:n], s[n:2 * n]
            with torch.enable_grad():
                yv = tuple(v.detach().requires_grad_(True) for v in y)
                f = func(t, yv)
                vj = torch.autograd.grad(f, yv + params, a, allow_unused=True)
            dy = tuple(fi.detach() for fi in f)
            da = tuple(torch.zeros_like(v) if g is None else -g for g, v in zip(vj[:n], y))
            dg = tuple(torch.zeros_like(p) if g is None else -g for g, p in zip(vj[n:], params))
            return dy + da + dg

        adj = tuple(g[-1].clone() for g in grads)
        gp = tuple(torch.zeros_like(p) for p in params)
        gt = torch.zeros(T, dtype=torch.float64)
        for i in range(T - 1, 0, -1):
            yi = tuple(y[i] for y in ys)
            with torch.no_grad():
                fi = func(time(ts_list[i]), yi)
            bstats.nfe += 1
            gt[i] = sum(float((g[i] * f).sum()) for g, f in zip(grads, fi))
            end = adaptive.solve(aug, yi + adj + gp, [ts_list[i], ts_list[i - 1]], stats=bstats, **ctx.adj_opts)
            adj, gp = end[n:2 * n], end[2 * n:]
            if i == 1:
                y0 = tuple(y[0] for y in ys)
                with torch.no_grad():
                    f0 = func(time(ts_list[0]), y0)
                bstats.nfe += 1
                gt[0] = -sum(float((a * f).sum()) for a, f in zip(adj, f0))
            adj = tuple(a + g[i - 1] for a, g in zip(adj, grads))
        if ctx.stats is not None:
            ctx.stats.adjoint_nfe += bstats.nfe
            ctx.stats.adjoint_accepted += bstats.accepted
            ctx.stats.adjoint_rejected += bstats.rejected
        dtype, device = ctx.ts_meta
        return (None, None, None, None, None, gt.to(dtype=dtype, device=device)) + adj + gp


def adjoint_options(field, opts: Dict, rtol, atol, adjoint_rtol, adjoint_atol, adjoint_params, max_steps):
    """(the parameters to differentiate, the backward solve's options): ``adjoint_params`` or the
    field's parameters when it is an ``nn.Module``; adjoint tolerances default to the forward ones.

    A field that is not an ``nn.Module`` needs ``adjoint_params``: the adjoint differentiates only
    the tensors it is given, so a closure over a network (``lambda t, x: net(x)``) would leave the
    network's gradients silently missing (as torchdiffeq, we refuse instead; ``()`` says "none")."""
    a_rtol = rtol if adjoint_rtol is None else adjoint_rtol
    a_atol = atol if adjoint_atol is None else adjoint_atol
    adaptive.check_tolerances(a_rtol, a_atol, max_steps, what="adjoint_")
    if adjoint_params is None:
        if not isinstance(field, torch.nn.Module):
            raise ValueError(
                f"adjoint=True with a field that is not an nn.Module ({type(field).__name__}) needs adjoint_params=: "
                "the tensors the field's output depends on (e.g. tuple(net.parameters())), or adjoint_params=() "
                "if there are none; the adjoint differentiates only those, so others would get no gradient")
        params = tuple(field.parameters())
    else:
        try:
            params = tuple(adjoint_params)
        except TypeError:
            raise TypeError(f"adjoint_params must be an iterable of tensors, got {type(adjoint_params).__name__}") from None
        bad = [type(p).__name__ for p in params if not isinstance(p, torch.Tensor)]
        if bad:
            raise TypeError(f"adjoint_params must hold tensors only, got {', '.join(sorted(set(bad)))}")
    return params, dict(opts, rtol=float(a_rtol), atol=float(a_atol), first_step=None)


def adjoint_solve(func: Callable[[Tensor, State], State], y0: State, ts: Tensor, params: Sequence[Tensor],
                  opts: Dict, adj_opts: Dict, stats) -> State:
    """States at every ts (each (T, *shape)), differentiable in y0, ts and ``params`` by the adjoint."""
    params = tuple(p for p in params if isinstance(p, torch.Tensor) and p.requires_grad)
    return _AdjointSolve.apply(func, len(y0), opts, adj_opts, stats, ts, *y0, *params)

"""The compiled backends (fused CPU, CUDA, Triton) as registered PyTorch custom operators.

The extensions are called through raw ``data_ptr()`` addresses, which ``torch.compile`` cannot see
through: traced, they ran on fake tensors and returned garbage (all NaN for mmd_field in float64).
Here every primitive of the backend contract (``gpflow_kernels.reference``) becomes one opaque
operator ``torch.ops.gpflow.<primitive>`` with a schema, a fake (meta) implementation that gives
the output shapes, and, for the forward primitives, its backward registered with it
(``torch.library.register_autograd``). Dynamo, AOTAutograd, ``torch.export`` and CUDA graphs then
see one node per reduction, and the compiled result is the eager one.

A kernel is passed by its fused code (kind, c, h, eps², from ``kernels.fused_code``) and a backend
by name, so only tensors, numbers and strings cross the operator boundary. ``primitives(name)``
returns an object with the contract's functions (``integral(kernel, x, y, v, s2)``, ...) that
calls these operators, so ``ops`` and ``distributed`` use it exactly as they use a backend module.

In plain eager calls (no compile, export, dispatch or function mode: ``plain_eager``) the ops call
the backend directly through their own autograd nodes, which saves the operator wrapper's ~20 µs
per call; traced calls always go through the operators.

torch.func transforms (grad, jacrev, vmap) are not supported (torch 2.13 runs a custom op's
registered backward through an autograd.Function without ``setup_context``, which functorch
refuses): the public ops stop with one line saying to use torch.autograd.grad and leading batch
dimensions instead (``_checks.no_functorch``).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from . import _checks
from .kernels import fused_code

Tensor = torch.Tensor
Code = Tuple[int, float, float, float]


def _module(backend: str):
    if backend == "cpu":
        from . import _cpu as mod
    elif backend == "cuda":
        from . import _cuda as mod
    elif backend == "triton":
        from . import _triton as mod
    else:  # pragma: no cover - names come from primitives() only
        raise ValueError(f"no compiled backend {backend!r}")
    return mod


def _fresh(t: Optional[Tensor], inputs: Sequence[Optional[Tensor]]) -> Tensor:
    """An operator's output may not alias its inputs; a gradient not asked for is an empty tensor
    (the schema has no optional outputs)."""
    if t is None:
        ref = next(i for i in inputs if i is not None)
        return ref.new_empty(0)
    for i in inputs:
        if i is not None and i.numel() and t.numel() and t.untyped_storage().data_ptr() == i.untyped_storage().data_ptr():
            return t.clone()
    return t


def _asked(t: Tensor, asked: bool) -> Optional[Tensor]:
    """A backward operator's output as autograd wants it: None where that gradient was not asked."""
    return t if asked else None


# --------------------------------------------------------------------------------------------
# Σ_j k(x_i, y_j) v_j  and  Σ_j a_j ∇_x k(x_i, y_j)


@torch.library.custom_op("gpflow::integral", mutates_args=())
def integral(x: Tensor, y: Tensor, v: Optional[Tensor], s2: Tensor, kind: int, c: float, h: float, e: float,
             backend: str) -> Tensor:
    """Σ_j k(x_i, y_j) v_j: x (B, N, D), y (B, M, D), v (B, M, P) or None, s2 (B or 1, K) -> (B, N, P)."""
    return _fresh(_module(backend).integral((kind, c, h, e), x, y, v, s2), (x, y, v, s2))


@integral.register_fake
def _(x, y, v, s2, kind, c, h, e, backend):
    return x.new_empty(x.shape[0], x.shape[1], 1 if v is None else v.shape[-1])


def _pair_grads(primitive, x, y, w, s2, g, code, backend, needs):
    """The real body of both pair backward operators: (grad x, grad y, grad w), empty where not asked."""
    needs = (needs[0], needs[1], needs[2] and w is not None)
    out = getattr(_module(backend), primitive)(code, x, y, w, s2, g, needs)
    return tuple(_fresh(t if need else None, (x, y, w, s2, g)) for t, need in zip(out, needs))


def _pair_grads_fake(x, y, w, needs):
    like = (x, y, w if needs[2] and w is not None else None)
    return tuple(torch.empty_like(t) if (need and t is not None) else x.new_empty(0) for t, need in zip(like, needs))


@torch.library.custom_op("gpflow::integral_backward", mutates_args=())
def integral_backward(x: Tensor, y: Tensor, v: Optional[Tensor], s2: Tensor, g: Tensor, kind: int, c: float,
                      h: float, e: float, backend: str, need_x: bool, need_y: bool,
                      need_v: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(grad x, grad y, grad v) of Σ_i g_i · integral_i; an empty tensor where not asked."""
    return _pair_grads("integral_backward", x, y, v, s2, g, (kind, c, h, e), backend, (need_x, need_y, need_v))


@integral_backward.register_fake
def _(x, y, v, s2, g, kind, c, h, e, backend, need_x, need_y, need_v):
    return _pair_grads_fake(x, y, v, (need_x, need_y, need_v))


@torch.library.custom_op("gpflow::grad_sum", mutates_args=())
def grad_sum(x: Tensor, y: Tensor, a: Optional[Tensor], s2: Tensor, kind: int, c: float, h: float, e: float,
             backend: str) -> Tensor:
    """Σ_j a_j ∇_x k(x_i, y_j): x (B, N, D), y (B, M, D), a (B, M) or None -> (B, N, D)."""
    return _fresh(_module(backend).grad_sum((kind, c, h, e), x, y, a, s2), (x, y, a, s2))


@grad_sum.register_fake
def _(x, y, a, s2, kind, c, h, e, backend):
    return torch.empty_like(x)


@torch.library.custom_op("gpflow::grad_sum_backward", mutates_args=())
def grad_sum_backward(x: Tensor, y: Tensor, a: Optional[Tensor], s2: Tensor, g: Tensor, kind: int, c: float,
                      h: float, e: float, backend: str, need_x: bool, need_y: bool,
                      need_a: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(grad x, grad y, grad a) of Σ_i g_i · grad_sum_i; an empty tensor where not asked."""
    return _pair_grads("grad_sum_backward", x, y, a, s2, g, (kind, c, h, e), backend, (need_x, need_y, need_a))


@grad_sum_backward.register_fake
def _(x, y, a, s2, g, kind, c, h, e, backend, need_x, need_y, need_a):
    return _pair_grads_fake(x, y, a, (need_x, need_y, need_a))


def _pair_autograd(op, backward_op):
    def setup_context(ctx, inputs, output):
        x, y, w, s2, kind, c, h, e, backend = inputs
        ctx.args = (kind, c, h, e, backend)
        ctx.save_for_backward(x, y, w, s2)

    def backward(ctx, g):
        _checks.first_order_only()
        x, y, w, s2 = ctx.saved_tensors
        nx, ny, nw = ctx.needs_input_grad[:3]
        nw = nw and w is not None
        gx, gy, gw = backward_op(x, y, w, s2, g.contiguous(), *ctx.args, nx, ny, nw)
        return (_asked(gx, nx), _asked(gy, ny), _asked(gw, nw)) + (None,) * 6

    op.register_autograd(backward, setup_context=setup_context)


_pair_autograd(integral, integral_backward)
_pair_autograd(grad_sum, grad_sum_backward)


# --------------------------------------------------------------------------------------------
# Gaussian soft assignment


@torch.library.custom_op("gpflow::softmax_mean", mutates_args=())
def softmax_mean(x: Tensor, y: Tensor, s2: Tensor, backend: str) -> Tuple[Tensor, Tensor]:
    """(μ (B, N, D), lse (B, N)) of the Gaussian soft assignment; lse in the backend's convention."""
    mu, lse = _module(backend).softmax_mean(x, y, s2)
    return _fresh(mu, (x, y, s2)), _fresh(lse, (x, y, s2))


@softmax_mean.register_fake
def _(x, y, s2, backend):
    return torch.empty_like(x), x.new_empty(x.shape[0], x.shape[1])


@torch.library.custom_op("gpflow::softmax_mean_backward", mutates_args=())
def softmax_mean_backward(x: Tensor, y: Tensor, s2: Tensor, lse: Tensor, mu: Tensor, g: Tensor, backend: str,
                          need_x: bool, need_y: bool) -> Tuple[Tensor, Tensor]:
    out = _module(backend).softmax_mean_backward(x, y, s2, lse, mu, g, (need_x, need_y))
    ins = (x, y, s2, lse, mu, g)
    return tuple(_fresh(t if need else None, ins) for t, need in zip(out, (need_x, need_y)))


@softmax_mean_backward.register_fake
def _(x, y, s2, lse, mu, g, backend, need_x, need_y):
    return (torch.empty_like(x) if need_x else x.new_empty(0), torch.empty_like(y) if need_y else x.new_empty(0))


def _softmax_setup(ctx, inputs, output):
    x, y, s2, backend = inputs
    mu, lse = output
    ctx.backend = backend
    ctx.save_for_backward(x, y, s2, lse, mu)


def _softmax_backward(ctx, g_mu, g_lse):
    # lse is an auxiliary output (the backward's normaliser): no gradient flows through it.
    _checks.first_order_only()
    x, y, s2, lse, mu = ctx.saved_tensors
    nx, ny = ctx.needs_input_grad[:2]
    if g_mu is None:
        g_mu = torch.zeros_like(mu)
    gx, gy = softmax_mean_backward(x, y, s2, lse, mu, g_mu.contiguous(), ctx.backend, nx, ny)
    return _asked(gx, nx), _asked(gy, ny), None, None


softmax_mean.register_autograd(_softmax_backward, setup_context=_softmax_setup)


# --------------------------------------------------------------------------------------------
# the backend contract over the operators


class _Primitives:
    """A compiled backend's primitive contract, each primitive one custom operator.

    Non-primitive names (``LSE_UNIT``, ``MAX_D``, ...) are the backend module's.
    """

    def __init__(self, backend: str):
        self.backend = backend
        self.module = _module(backend)

    def __getattr__(self, name):
        return getattr(self.module, name)

    def __repr__(self) -> str:
        return f"<gpflow custom operators over {self.module.__name__}>"

    def integral(self, kernel, x, y, v, s2):
        return integral(x, y, v, s2, *_code(kernel), self.backend)

    def integral_backward(self, kernel, x, y, v, s2, g, needs):
        needs = (needs[0], needs[1], needs[2] and v is not None)
        out = integral_backward(x, y, v, s2, g, *_code(kernel), self.backend, *needs)
        return tuple(map(_asked, out, needs))

    def grad_sum(self, kernel, x, y, a, s2):
        return grad_sum(x, y, a, s2, *_code(kernel), self.backend)

    def grad_sum_backward(self, kernel, x, y, a, s2, g, needs):
        needs = (needs[0], needs[1], needs[2] and a is not None)
        out = grad_sum_backward(x, y, a, s2, g, *_code(kernel), self.backend, *needs)
        return tuple(map(_asked, out, needs))

    def softmax_mean(self, x, y, s2):
        return softmax_mean(x, y, s2, self.backend)

    def softmax_mean_backward(self, x, y, s2, lse, mu, g, needs):
        out = softmax_mean_backward(x, y, s2, lse, mu, g, self.backend, *needs)
        return tuple(map(_asked, out, needs))


def _code(kernel) -> Code:
    return kernel if isinstance(kernel, tuple) else fused_code(kernel)


_CACHE = {}


def primitives(backend: str) -> _Primitives:
    """The contract object for a compiled backend ("cpu", "cuda" or "triton"), one per name."""
    if backend not in _CACHE:
        _CACHE[backend] = _Primitives(backend)
    return _CACHE[backend]


def guarded(backend: str) -> _Primitives:
    """As :func:`primitives`, for ``backend="auto"``: its eager calls fall back to the tiled torch
    path on a compile or launch failure (``_fallback``); the operators (traced calls) are the same."""
    from ._fallback import GuardedModule

    key = f"{backend}:auto"
    if key not in _CACHE:
        p = _Primitives(backend)
        p.module = GuardedModule(p.module, backend)
        _CACHE[key] = p
    return _CACHE[key]


def is_compiled(impl) -> bool:
    return isinstance(impl, _Primitives)


def plain_eager(t: Tensor) -> bool:
    """True when nothing traces or transforms this call: a plain tensor, no compile or export
    under way, no dispatch or function mode active. Only then may the ops skip the operator
    boundary and call the backend directly (about 20 µs less per call, which small solver steps
    notice); anything else goes through the registered operator."""
    return (type(t) is torch.Tensor and not torch.compiler.is_compiling()
            and torch._C._len_torch_dispatch_stack() == 0 and not torch._C._is_torch_function_mode_enabled())

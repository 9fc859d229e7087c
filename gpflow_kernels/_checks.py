"""Input checking for the public ops: the one place that validates, before any work.

Each check raises ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong shape,
device or value) with the user's argument name and what was expected, so that bad input
never reaches a kernel as a silent broadcast or a NaN.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple

import torch

Tensor = torch.Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BACKENDS = ("auto", "torch", "cpu", "triton", "cuda")


def describe(t: Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def tensor(name: str, t) -> Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), got {describe(t)}"
        )
    return t


def capturing(t: Tensor) -> bool:
    """True while a CUDA graph is being captured: value checks need a host sync, which capture forbids."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def compiling() -> bool:
    """True while torch.compile / torch.export traces: a value check cannot branch on data there."""
    return torch.compiler.is_compiling()


_ASCII = str.maketrans({'"': "'", "\\": "/", "σ": "sigma", "²": "^2", "⁴": "^4", "…": "..."})


def _c_literal(message: str) -> str:
    """The message as inductor's C++ code can hold it (it pastes it into a string literal
    unescaped): no double quote, no backslash, ASCII only."""
    return message.translate(_ASCII).encode("ascii", "replace").decode("ascii")


def require(ok, message: str, error=ValueError) -> None:
    """Raise ``error(message)`` unless ``ok`` (a bool tensor, all of it true).

    Eager: one host sync, then the named error. Traced by torch.compile: the check stays in the
    graph as ``torch._assert_async``, which raises a RuntimeError with the same message when the
    compiled code runs (a graph cannot raise our own error types, and must not branch on values).
    While a CUDA graph is captured values cannot be read at all, so nothing is checked.
    """
    if compiling():
        torch._assert_async(ok.all(), _c_literal(message))
    elif not capturing(ok) and not bool(ok.all()):
        raise error(message)


def first_order_only() -> None:
    """Called at the start of every analytic backward pass: those are tiled reductions, not
    differentiable graphs, so create_graph=True (double backward) is refused. Under torch.compile
    the backward is traced with grad mode on, which is not a double backward."""
    if torch.is_grad_enabled() and not compiling():
        raise RuntimeError(
            "gpflow_kernels ops have first derivatives only: double backward (create_graph=True through "
            "mmd_field, mmd2, kernel_integral, kde_score/kde_denoiser or svgd_field) is not supported"
        )


def no_functorch(op: str) -> None:
    """torch.func transforms (grad, vjp, jacrev, vmap, ...) cannot see through our analytic
    backward passes and fused kernels: say so in one line instead of torch's generic errors."""
    if not compiling() and torch._C._functorch.peek_interpreter_stack() is not None:
        raise RuntimeError(
            f"gpflow_kernels.{op} does not support torch.func transforms (grad, vjp, jacrev, jvp, vmap): "
            "use torch.autograd.grad / .backward() for gradients, and pass a batch as leading dimensions "
            "(x: (..., N, D)) instead of vmap"
        )


def finite(name: str, t: Tensor) -> None:
    # O(N) next to the O(N·M) reductions; it turns a NaN result into a named error.
    if t.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor ({describe(t)}): it has no values to compute with; "
                         "materialise it on a real device first (e.g. torch.empty_like(t, device='cpu'))")
    if compiling():
        require(torch.isfinite(t), f"{name} contains NaN or infinite values")
        return
    if capturing(t):
        return
    # One summing pass first (a fifth of isfinite's time here): a finite sum means every value is
    # finite; only a non-finite sum (a NaN/inf, or finite values overflowing) needs the exact test.
    if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values ({describe(t)})")


def points(name: str, t, check_finite: bool = True, allow_empty: bool = False) -> Tensor:
    """(..., N, D) floating points; ``allow_empty``: N = 0 is allowed (a rank's empty shard)."""
    t = tensor(name, t)
    if t.dim() < 2:
        raise ValueError(f"{name} must have shape (..., N, D) with at least 2 dims, got {describe(t)}")
    if allow_empty and t.shape[-2] == 0 and t.shape[-1] > 0 and math.prod(t.shape[:-2]) > 0:
        return t
    if t.shape[-2] == 0 or t.shape[-1] == 0:
        raise ValueError(f"{name} is empty: expected at least one point of dimension >= 1, got {describe(t)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (a batch dim is 0), got {describe(t)}")
    if check_finite:
        finite(name, t)
    return t


def same_kind(named: Sequence[Tuple[str, Tensor]]) -> None:
    """All tensors share dtype and device with the first."""
    (n0, t0) = named[0]
    for n, t in named[1:]:
        if t.device != t0.device:
            raise ValueError(f"{n} is on device {t.device} but {n0} is on device {t0.device}; move them to one device")
        if t.dtype != t0.dtype:
            raise TypeError(f"{n} has dtype {t.dtype} but {n0} has dtype {t0.dtype}; cast them to one dtype")


def point_pair(xn: str, x, yn: str, y, allow_empty: bool = False) -> Tuple[Tensor, Tensor]:
    """x: (..., N, D) and y: (..., M, D) with equal batch dims and D."""
    x, y = points(xn, x, False, allow_empty), points(yn, y, False, allow_empty)
    same_kind([(xn, x), (yn, y)])
    if x.dim() != y.dim() or x.shape[:-2] != y.shape[:-2]:
        raise ValueError(
            f"{xn} and {yn} must have equal batch dims: {xn} has shape {tuple(x.shape)}, "
            f"{yn} has shape {tuple(y.shape)} (no broadcasting)"
        )
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"{xn} and {yn} must have the same point dimension D: {xn} has shape {tuple(x.shape)}, "
            f"{yn} has shape {tuple(y.shape)}"
        )
    finite(xn, x)
    finite(yn, y)
    return x, y


def per_point(name: str, t, like_name: str, like: Tensor, trailing: Optional[int]) -> Tensor:
    """A tensor attached to the points of ``like``: shape like.shape[:-1] (+ (trailing,) if given)."""
    t = tensor(name, t)
    same_kind([(like_name, like), (name, t)])
    want = tuple(like.shape[:-1]) + (() if trailing is None else (trailing,))
    if tuple(t.shape) != want:
        raise ValueError(f"{name} must have shape {want} to match {like_name} {tuple(like.shape)}, got {describe(t)}")
    finite(name, t)
    return t


def positive_number(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be finite and > 0, got {v!r}")
    return float(v)


def backend(name: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name

"""The single checking pass of the solvers: state, time grid and method, before any step."""

from __future__ import annotations

import math
from typing import Dict

import torch

Tensor = torch.Tensor


class NonFiniteError(FloatingPointError):
    """Particles became NaN or infinite; the message names the step and the time."""


def state(x0) -> Tensor:
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0 must be a torch.Tensor, got {type(x0).__name__}")
    if not x0.is_floating_point():
        raise TypeError(f"x0 must be a floating tensor, got dtype {x0.dtype}")
    if x0.numel() == 0:
        raise ValueError(f"x0 is empty: shape {tuple(x0.shape)}")
    if x0.device.type == "meta":
        raise ValueError(f"x0 is a meta tensor (shape {tuple(x0.shape)}, dtype {x0.dtype}): it has no values to "
                         "integrate; materialise it on a real device first")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 contains NaN or infinite values")
    return x0


def times(ts, x0: Tensor, name: str = "ts") -> Tensor:
    """1-d, at least two points, strictly monotone (either direction); returned in x0's dtype/device.

    Checked after the conversion to x0's dtype, the one the steps run in: float64 times that are
    distinct can round to one float32 value (1 and 1 + 1e-9; 1e8 and 1e8 + 1), and a step
    between them would be of size 0 (an unintegrated or uninitialised output row otherwise).
    """
    ts = torch.as_tensor(ts)
    if ts.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor: it has no values; pass the times on a real device")
    if ts.dim() != 1 or ts.numel() < 2:
        raise ValueError(f"{name} must be a 1-d grid of at least 2 times, got shape {tuple(ts.shape)}")
    if ts.is_complex() or ts.dtype == torch.bool:
        raise TypeError(f"{name} must hold real times, got dtype {ts.dtype}")
    if not bool(torch.isfinite(ts).all()):
        raise ValueError(f"{name} contains NaN or infinite times")
    given = ts
    ts = ts.to(device=x0.device, dtype=x0.dtype)
    if not bool(torch.isfinite(ts).all()):
        raise ValueError(f"{name} overflows {x0.dtype}, the state's dtype (largest {torch.finfo(x0.dtype).max:.3g}), "
                         f"got {given.tolist()}")
    d = ts[1:] - ts[:-1]
    if bool((d > 0).all()) or bool((d < 0).all()):
        return ts
    same = torch.nonzero(d == 0).flatten()
    if same.numel() and bool(((given[1:] - given[:-1]) != 0).flatten()[same[0]]):
        i = int(same[0])
        raise ValueError(
            f"{name}[{i}] = {float(given[i])!r} and {name}[{i + 1}] = {float(given[i + 1])!r} collapse to the same "
            f"time {float(ts[i])!r} in {x0.dtype}, the state's dtype: a step of size 0; space them further apart, "
            "shift the grid nearer 0, or integrate in float64")
    raise ValueError(f"{name} must be strictly increasing or strictly decreasing, got {given.tolist()}")


def method(name, registry: Dict[str, object], what: str):
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"unknown {what} method {name!r}; expected one of {sorted(registry)}")
    return registry[name]


def save_mode(save: str) -> str:
    if save not in ("all", "last"):
        raise ValueError(f'save must be "all" or "last", got {save!r}')
    return save


def finite_after(x: Tensor, step: int, t) -> None:
    # One reduction pass screens; the exact elementwise test runs only if the sum is not finite
    # (a NaN or inf anywhere makes the sum non-finite; an overflowing sum alone is not an error).
    if math.isfinite(x.sum().item()):
        return
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"particles became non-finite at step {step} (t = {float(t):.6g})")


def field_output(out, x: Tensor, what: str) -> Tensor:
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{what} must return a tensor shaped like the state {tuple(x.shape)}, got {got}")
    return out


class FiniteWatch:
    """Checks the particles after every step of a loop over the grid ``t_at``.

    On the CPU the check is immediate (``finite_after``). Elsewhere (``lazy``) reading a flag
    back every step would stall the device, so the step number of the first non-finite state is
    kept on the device, updated without a host sync (and capturable in a CUDA graph), and read
    once by :meth:`finish`, which raises the same error naming the same step.
    """

    def __init__(self, x: Tensor, t_at, enabled: bool, lazy: bool = None):
        self.enabled, self.t_at = enabled, t_at
        self.lazy = enabled and (x.device.type != "cpu" if lazy is None else lazy)
        if self.lazy:
            self.step_no = torch.zeros((), dtype=torch.int64, device=x.device)
            self.first = torch.full((), -1, dtype=torch.int64, device=x.device)
            self.numbers = list(torch.arange(1, len(t_at), dtype=torch.int64, device=x.device).unbind())

    def set_step(self, step: int) -> None:
        self.step_no.copy_(self.numbers[step - 1])

    def record(self, x: Tensor) -> None:
        """Device side only: remember ``step_no`` if x is the first non-finite state."""
        bad = ~torch.isfinite(x).all()
        self.first.copy_(torch.where(bad & (self.first < 0), self.step_no, self.first))

    def after(self, x: Tensor, step: int) -> None:
        if not self.enabled:
            return
        if not self.lazy:
            finite_after(x, step, self.t_at[step])
            return
        self.set_step(step)
        self.record(x)

    def finish(self) -> None:
        if self.lazy:
            k = int(self.first)
            if k >= 0:
                raise NonFiniteError(f"particles became non-finite at step {k} (t = {float(self.t_at[k]):.6g})")

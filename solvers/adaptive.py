"""Error-controlled Runge–Kutta integration: Dormand–Prince 5(4) and Bogacki–Shampine 3(2).

The state is a tuple of tensors (a single particle tensor, or the augmented states of
:mod:`solvers.adjoint` and :mod:`solvers.likelihood`); ``func(t, state) -> tuple`` of the same
shapes, ``t`` a 0-d tensor in the dtype of the first state tensor.

Per step (both methods are FSAL: the last stage is the next step's first, so an accepted step
costs s − 1 field evaluations):
- the embedded error estimate ``err`` is scaled per element by atol + rtol · max(|y0|, |y1|) and
  reduced to one ratio: the root mean square of each state tensor, the largest over tensors
  (torchdiffeq's mixed norm; for one tensor, its RMS norm);
- the step is accepted when the ratio is ≤ 1; the next step size comes from a PI controller
  (Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.4, and Hairer's DOPRI5 code): factor
  safety · err_n^(−α) · err_{n−1}^β with α = 1/order − 0.75 β, at most ifactor; after a rejection
  at least dfactor and no growth on the next step, after an accepted step at least 1 (as
  torchdiffeq and diffrax). β = 0 is the I controller torchdiffeq uses;
- the first step is chosen by Hairer's algorithm (two field evaluations, one of them reused);
- outputs at the requested times come from the method's dense interpolant inside the step that
  covers them (4th order for dopri5, cubic Hermite for bosh3), so requested times never shorten a
  step. The one exception is the last time: steps never go past it, because fields are often not
  defined beyond the end of the grid (σ < 0 in a probability-flow ODE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field as dc_field
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ._checks import NonFiniteError

Tensor = torch.Tensor
State = Tuple[Tensor, ...]


@dataclass
class SolverStats:
    """Counters of one solve, filled in by ``odeint(..., stats=SolverStats())``.

    nfe: field evaluations; accepted / rejected: steps; the adjoint's backward solve counts into
    ``adjoint_nfe``, ``adjoint_accepted`` and ``adjoint_rejected``.
    """

    nfe: int = 0
    accepted: int = 0
    rejected: int = 0
    adjoint_nfe: int = 0
    adjoint_accepted: int = 0
    adjoint_rejected: int = 0
    step_sizes: List[float] = dc_field(default_factory=list, repr=False)

    @property
    def steps(self) -> int:
        return self.accepted + self.rejected


@dataclass(frozen=True)
class PIController:
    """Step-size control. ``beta``: weight of the previous error ratio (0.04 is Hairer's choice for
    DOPRI5). The default 0 is the pure I controller torchdiffeq uses: on our smooth test problems
    β = 0.04 cost 0–20 % more field evaluations for a few fewer rejections (benchmarks/RESULTS.md),
    so PI control is opt-in. ``safety``, ``ifactor`` (largest growth) and ``dfactor`` (largest
    shrink) as in torchdiffeq and Hairer's code."""

    safety: float = 0.9
    beta: float = 0.0
    ifactor: float = 10.0
    dfactor: float = 0.2

    def __post_init__(self):
        if not (0 < self.safety <= 1):
            raise ValueError(f"PIController.safety must be in (0, 1], got {self.safety!r}")
        if not (0 <= self.beta < 0.2):
            raise ValueError(f"PIController.beta must be in [0, 0.2), got {self.beta!r}")
        if not (self.ifactor > 1 and 0 < self.dfactor < 1):
            raise ValueError(f"PIController needs ifactor > 1 and 0 < dfactor < 1, got {self.ifactor!r}, {self.dfactor!r}")


@dataclass(frozen=True)
class Tableau:
    """An explicit embedded RK pair with the FSAL property (last stage at c = 1 with a = b).

    a: stage rows (row i gives stage i + 1 from stages 0..i); b: solution weights; e: b − b̂ (the
    error weights); order: the solution's order (the controller's exponent is 1/order)."""

    name: str
    c: Tuple[float, ...]
    a: Tuple[Tuple[float, ...], ...]
    b: Tuple[float, ...]
    e: Tuple[float, ...]
    order: int


# Dormand & Prince (1980), coefficients as in Hairer's DOPRI5.
DOPRI5 = Tableau(
    "dopri5",
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=((1 / 5,),
       (3 / 40, 9 / 40),
       (44 / 45, -56 / 15, 32 / 9),
       (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
       (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
       (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    # b − b̂ with the embedded 4th-order weights b̂ = (1951/21600, 0, 22642/50085, 451/720,
    # −12231/42400, 649/6300, 1/60) that torchdiffeq uses, not Hairer's (5179/57600, ...). Both
    # satisfy every order condition up to 4 (tests/test_adaptive.py checks them in exact
    # arithmetic); this one estimates a smaller error, so the same rtol/atol gives torchdiffeq's
    # steps (with Hairer's we measured 0–19 % more field evaluations on five problems; RESULTS.md).
    e=(35 / 384 - 1951 / 21600, 0.0, 500 / 1113 - 22642 / 50085, 125 / 192 - 451 / 720,
       -2187 / 6784 + 12231 / 42400, 11 / 84 - 649 / 6300, -1 / 60),
    order=5,
)
# Hairer's continuous extension of order 4 for DOPRI5 (the d coefficients of his CONTD5).
_DOPRI5_D = (-12715105075 / 11282082432, 0.0, 87487479700 / 32700410799, -10690763975 / 1880347072,
             701980252875 / 199316789632, -1453857185 / 822651844, 69997945 / 29380423)

# Bogacki & Shampine (1989): third-order solution, second-order embedded estimate.
BOSH3 = Tableau(
    "bosh3",
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=((1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    e=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8),
    order=3,
)

ADAPTIVE_METHODS = {t.name: t for t in (DOPRI5, BOSH3)}


def _comb(y: State, ks: Sequence[State], coeffs: Sequence[float], h: float) -> State:
    """y + h Σ_j coeffs[j] ks[j], per state tensor (never in place; zero coefficients skipped)."""
    out = []
    for i, acc in enumerate(y):
        for c, k in zip(coeffs, ks):
            if c != 0.0:
                acc = acc.add(k[i], alpha=h * c)
        out.append(acc)
    return tuple(out)


def _lin(ks: Sequence[State], coeffs: Sequence[float], i: int, scale: float) -> Tensor:
    acc = None
    for c, k in zip(coeffs, ks):
        if c != 0.0:
            acc = k[i] * (scale * c) if acc is None else acc.add(k[i], alpha=scale * c)
    return acc


@torch.no_grad()
def error_ratio(err: State, y0: State, y1: State, rtol: float, atol: float) -> float:
    """max over state tensors of RMS(err / (atol + rtol max(|y0|, |y1|))); inf if y1 is not finite.

    One host read for the whole state: the step's accept/reject decision needs it anyway.
    """
    parts = []
    for e, a, b in zip(err, y0, y1):
        if e.numel() == 0:
            continue
        tol = torch.maximum(a.abs(), b.abs()).mul_(rtol).add_(atol)
        # An infinite y1 makes tol infinite and the ratio 0: test y1 itself.
        finite = torch.isfinite(b).all()
        parts.append(torch.where(finite, e.div(tol).square().mean().sqrt(), tol.new_tensor(math.inf)))
    if not parts:
        return 0.0
    r = float(torch.stack([p.to(torch.float64) for p in parts]).max())
    return r if math.isfinite(r) else math.inf


def rk_step(func, tab: Tableau, t0: float, h: float, y0: State, f0: State, time) -> Tuple[State, List[State], State]:
    """One step: (y1, stages k (k[-1] = f(t0 + h, y1)), error estimate h Σ e_j k_j)."""
    ks = [f0]
    for row, c in zip(tab.a[:-1], tab.c[1:-1]):
        ks.append(func(time(t0 + c * h), _comb(y0, ks, row, h)))
    y1 = _comb(y0, ks, tab.a[-1], h)
    ks.append(func(time(t0 + h), y1))
    err = tuple(_lin(ks, tab.e, i, h) for i in range(len(y0)))
    return y1, ks, err


class Dense:
    """The interpolant of one accepted step [t0, t0 + h]; ``at(t)`` for t in that interval."""

    def __init__(self, tab: Tableau, t0: float, h: float, y0: State, y1: State, ks: List[State]):
        self.t0, self.h = t0, h
        n = len(y0)
        if tab is DOPRI5:
            # y(t0 + θh) = y0 + θ (r2 + (1 − θ)(r3 + θ (r4 + (1 − θ) r5)))
            r2 = [y1[i] - y0[i] for i in range(n)]
            r3 = [ks[0][i] * h - r2[i] for i in range(n)]
            r4 = [r2[i] - ks[-1][i] * h - r3[i] for i in range(n)]
            r5 = [_lin(ks, _DOPRI5_D, i, h) for i in range(n)]
            self.eval = lambda th: tuple(
                y0[i] + th * (r2[i] + (1 - th) * (r3[i] + th * (r4[i] + (1 - th) * r5[i]))) for i in range(n))
        else:
            # Cubic Hermite through (y0, f0) and (y1, f1): third order, the order of BOSH3.
            f0, f1 = ks[0], ks[-1]

            def hermite(th):
                h00, h10 = (1 + 2 * th) * (1 - th) ** 2, th * (1 - th) ** 2
                h01, h11 = th * th * (3 - 2 * th), th * th * (th - 1)
                return tuple(y0[i] * h00 + y1[i] * h01 + f0[i] * (h * h10) + f1[i] * (h * h11) for i in range(n))

            self.eval = hermite

    def at(self, t: float) -> State:
        return self.eval((t - self.t0) / self.h)


def initial_step(func, t0: float, y0: State, f0: State, order: int, rtol: float, atol: float,
                 direction: float, span: float, time) -> float:
    """Hairer's starting step |h| (Solving ODEs I, §II.4); one field evaluation beyond f0."""
    def norm(z):
        z = tuple(zi.detach() for zi in z)
        return max(float(zi.div(yi.detach().abs().mul(rtol).add(atol)).square().mean().sqrt()) for zi, yi in zip(z, y0) if zi.numel())

    d0, d1 = norm(y0), norm(f0)
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    h0 = min(h0, span)
    with torch.no_grad():  # a probe only: no graph through the step-size choice
        y1 = tuple(yi.add(fi, alpha=direction * h0) for yi, fi in zip(y0, f0))
        f1 = func(time(t0 + direction * h0), y1)
    d2 = norm(tuple(a - b for a, b in zip(f1, f0))) / h0
    if not math.isfinite(d2):
        return h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / order)
    return min(100 * h0, h1, span)


def check_tolerances(rtol, atol, max_steps, what: str = "") -> None:
    for name, v in ((what + "rtol", rtol), (what + "atol", atol)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if rtol == 0 and atol == 0:
        raise ValueError(f"{what}rtol and {what}atol cannot both be 0 (no error is then acceptable)")
    if rtol != 0 and rtol < 1e-15:
        raise ValueError(f"{what}rtol={rtol!r} is below what float64 can resolve (1e-15)")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")


def solve(
    func: Callable[[Tensor, State], State],
    y0: State,
    ts: Sequence[float],
    *,
    tableau: Tableau,
    rtol: float,
    atol: float,
    max_steps: int,
    first_step: Optional[float] = None,
    controller: PIController = PIController(),
    stats: Optional[SolverStats] = None,
    check_finite: bool = True,
    on_output: Optional[Callable[[int, State], None]] = None,
) -> State:
    """Integrate from ts[0] through every ts[i] (strictly monotone Python floats); returns the
    final state, and hands the state at each ts[i], i ≥ 1, to ``on_output(i, state)``.

    ``max_steps`` counts accepted and rejected steps.
    """
    like = y0[0]
    time = lambda t: torch.tensor(t, dtype=like.dtype, device=like.device)
    stats = SolverStats() if stats is None else stats

    def f(t, y):
        stats.nfe += 1
        return func(t, y)

    t, t_end = float(ts[0]), float(ts[-1])
    direction = 1.0 if t_end > t else -1.0
    f0 = f(time(t), y0)
    for fi, yi in zip(f0, y0):
        if not isinstance(fi, torch.Tensor) or fi.shape != yi.shape:
            got = tuple(fi.shape) if isinstance(fi, torch.Tensor) else type(fi).__name__
            raise ValueError(f"field must return a tensor shaped like the state {tuple(yi.shape)}, got {got}")
    if first_step is None:
        habs = initial_step(f, t, y0, f0, tableau.order, rtol, atol, direction, abs(t_end - t), time)
    else:
        habs = float(first_step)
    y = y0
    err_prev = 1.0  # no history yet: the first factor is the I controller's
    alpha = 1.0 / tableau.order - 0.75 * controller.beta
    just_rejected, bad_in_row, bad_total, n_steps = False, 0, 0, 0
    nxt = 1  # the next output index
    while nxt < len(ts):
        remaining = abs(t_end - t)
        h_try = min(habs, remaining)
        last = h_try >= remaining * (1 - 1e-12)
        if last:
            h_try = remaining
        if n_steps >= max_steps:
            raise RuntimeError(f"{tableau.name}: max_steps={max_steps} reached at t = {t:.6g} before "
                               f"t = {t_end:.6g} (step size {h_try:.3g}); raise max_steps or loosen rtol/atol")
        if not last and (h_try <= 10 * abs(t) * 2.2e-16 or h_try < 1e-300):
            if bad_total and check_finite:
                raise NonFiniteError(f"{tableau.name}: the state became non-finite at step {n_steps + 1} (t = {t:.6g}): "
                                     f"steps past t gave NaN or inf down to h = {h_try:.3g}")
            raise RuntimeError(f"{tableau.name}: step size underflow at t = {t:.6g} (h = {h_try:.3g}): the "
                               "field is too stiff or singular there for an explicit method at this tolerance")
        n_steps += 1
        h = direction * h_try
        y1, ks, err = rk_step(f, tableau, t, h, y, f0, time)
        ratio = error_ratio(err, y, y1, rtol, atol)
        if not math.isfinite(ratio):
            # Non-finite stage values: shrink hard. Persistent ones (8 in a row, or 32 in all, as
            # when steps creep up to a time past which the field is NaN) mean the field itself
            # fails there, which no step size cures.
            bad_in_row += 1
            bad_total += 1
            stats.rejected += 1
            if bad_in_row >= 8 or bad_total >= 32:
                if check_finite:
                    raise NonFiniteError(f"{tableau.name}: the state became non-finite at step {n_steps} (t = {t:.6g}): "
                                         f"steps from there, down to h = {h_try:.3g}, gave NaN or inf")
                raise RuntimeError(f"{tableau.name}: non-finite values at t = {t:.6g}")
            habs = h_try * controller.dfactor
            just_rejected = True
            continue
        bad_in_row = 0
        if ratio <= 1.0:
            t_new = t_end if last else t + h
            dense = None
            while nxt < len(ts) and (ts[nxt] - t_new) * direction <= 0:
                if ts[nxt] == t_new or (last and nxt == len(ts) - 1):
                    out = y1
                else:
                    dense = dense or Dense(tableau, t, h, y, y1, ks)
                    out = dense.at(ts[nxt])
                if on_output is not None:
                    on_output(nxt, out)
                nxt += 1
            y, f0, t = y1, ks[-1], t_new
            stats.accepted += 1
            stats.step_sizes.append(h_try)
            if ratio == 0.0:
                factor = controller.ifactor
            else:
                factor = controller.safety * ratio ** (-alpha) * err_prev ** controller.beta
                # An accepted step never shrinks the next one (as torchdiffeq and diffrax do): the
                # error was within tolerance, and a rejection costs less than steady shrinking.
                factor = min(controller.ifactor, max(1.0, factor))
            if just_rejected:
                factor = min(factor, 1.0)
            err_prev = max(ratio, 1e-4)
            just_rejected = False
        else:
            stats.rejected += 1
            factor = max(controller.dfactor, controller.safety * ratio ** (-1.0 / tableau.order))
            just_rejected = True
        habs = h_try * factor
    return y

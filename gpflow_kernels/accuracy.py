"""The accuracy contract (README, "Accuracy contract"): dense float64 oracles, the per-row budget,
and the hard cases that ``gpflow check`` runs on a device and tests/test_accuracy_contract.py on
every CPU backend.

Every result row i must satisfy |got_i − exact_i|_∞ <= C · eps(dtype) · S_i + floor_i, where
exact is the float64 answer on the same (already rounded) inputs and S_i is the row's own scale.
For the fields, S_i = Σ_j |c_ij| |k'_ij| (1 + κ_ij): the sum of the magnitudes of its terms (c_ij the
term's weight, k' the kernel's radial derivative), each times one plus its condition number
κ = |d log|k'| / d log r| (how much any formula's rounding of r is amplified). For the Gaussian soft
assignment (kde_denoiser, kde_score) see :func:`kde_terms`: a logit −r²/(2σ²) rounds at eps r²/σ²
in any formula, so each term counts with 1 + r²/σ². A naive dense formula in the same dtype meets
these with C ≈ 1–3 (measured). floor_i covers the kernels' exp floor (kernels.EXP_FLOOR: e^−80
instead of smaller values in float32), far below any scale a sum can notice.

The oracles are written from the kernels' textbook formulas on r = |x − y| in numpy,
independently of the package's profiles and backends. Second derivatives (the gradients of the
fields) are not under this budget.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, Tuple

import numpy as np
import torch

from . import ops
from .kernels import EXP_FLOOR

C = 64.0
KERNELS = ("gaussian", "imq", "laplace", "energy")


def pair_terms(name, a, b, s):
    """For a: (N, D), b: (M, D) in float64: (G, mag, K, magK) with G_ij = ∇_a k(a_i, b_j): (N, M, D),
    mag_ij = |k'| (1 + κ), K_ij = k(a_i, b_j) and magK_ij = |k| (1 + κ of k itself)."""
    d = a[:, None, :] - b[None, :, :]
    r = np.sqrt((d * d).sum(-1))
    t = r / s
    if name == "gaussian":
        K = np.exp(-0.5 * t * t)
        f, kap, kapK = -t * K / s, np.abs(1 - t * t), t * t
    elif name == "imq":
        K = 1 / np.sqrt(1 + t * t)
        f, kap, kapK = -t * K**3 / s, np.abs(1 - 3 * t * t / (1 + t * t)), t * t / (1 + t * t)
    elif name == "laplace":
        K = np.exp(-t)
        f, kap, kapK = -K / s, t, t
    elif name == "energy":
        K = -t
        f, kap, kapK = -np.ones_like(t) / s, np.zeros_like(t), np.ones_like(t)
    unit = np.where(r[..., None] > 0, d / np.where(r > 0, r, 1)[..., None], 0.0)
    f = np.where(r > 0, f, 0.0)  # every kernel's force vanishes at r = 0 (energy: by symmetry)
    return f[..., None] * unit, np.abs(f) * (1 + kap), K, np.abs(K) * (1 + kapK)


def floor(name, dtype, s, a, b, weight):
    """Per-row allowance for the exp floor: each term may carry e^floor instead of a smaller value."""
    if name not in ("gaussian", "laplace"):
        return 0.0
    e = math.exp(EXP_FLOOR[dtype])
    dmax = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).max(1) if len(b) else 0.0
    return 4 * e * (dmax / s**2 + 1 / s) * weight


class ContractError(AssertionError):
    """A result outside the contract's budget (an AssertionError, so pytest reports it as one)."""


def check(got, want, scale, fl, dtype, what) -> float:
    """Raise ContractError unless every row meets the budget C·eps(dtype)·scale + fl; return the
    worst row's error as a fraction of its budget (at most 1 when it passes)."""
    got = got.detach().double().cpu().numpy().reshape(want.shape)
    eps = torch.finfo(dtype).eps
    err = np.abs(got - want).max(-1)
    budget = C * eps * scale + fl
    frac = err / np.maximum(budget, 1e-300)
    worst = int(np.argmax(frac))
    if not np.all(np.isfinite(got)):
        raise ContractError(f"{what}: non-finite output")
    if not np.all(err <= budget):
        raise ContractError(f"{what}: row {worst} error {err[worst]:.3g} > budget {budget[worst]:.3g} "
                            f"({err[worst] / (eps * max(scale[worst], 1e-300)):.3g} eps x scale)")
    return float(frac.max()) if frac.size else 0.0


def rounded(a, dtype, device="cpu"):
    """(a as a tensor of ``dtype`` on ``device``, the same rounded values in float64 numpy)."""
    t = torch.tensor(a, dtype=dtype)
    return t.to(device), t.double().numpy()


# ----- the ops, each with its float64 oracle --------------------------------------------------

def run_mmd_field(name, x, y, xr, s, dtype, backend, device="cpu"):
    (X, x64), (Y, y64) = rounded(x, dtype, device), rounded(y, dtype, device)
    XR, xr64 = (X, x64) if xr is None else rounded(xr, dtype, device)
    got = ops.mmd_field(X, Y, kernel=name, bandwidth=s, x_ref=None if xr is None else XR, backend=backend)
    Gy, my, _, _ = pair_terms(name, x64, y64, s)
    Gr, mr, _, _ = pair_terms(name, x64, xr64, s)
    want = Gy.mean(1) - Gr.mean(1)
    scale = my.mean(1) + mr.mean(1)
    fl = floor(name, dtype, s, x64, np.concatenate([y64, xr64]), 2.0)
    return check(got, want, scale, fl, dtype, f"mmd_field {backend} {name} σ={s:.3g} {dtype}")


def run_integral_grads(name, x, y, s, dtype, backend, rng, device="cpu"):
    (X, x64), (Y, y64) = rounded(x, dtype, device), rounded(y, dtype, device)
    v = rng.normal(size=(len(y), 2))
    g = rng.normal(size=(len(x), 2))
    (V, v64), (Gt, g64) = rounded(v, dtype, device), rounded(g, dtype, device)
    X.requires_grad_(True)
    Y.requires_grad_(True)
    out = ops.kernel_integral(X, Y, V, kernel=name, bandwidth=s, backend=backend)
    gx, gy = torch.autograd.grad(out, (X, Y), Gt)
    G, mag, _, _ = pair_terms(name, x64, y64, s)
    c = g64 @ v64.T  # (N, M): g_i · v_j
    ca = np.abs(g64) @ np.abs(v64).T  # its own scale: any formula rounds g_i · v_j at Σ_p |g_ip v_jp|
    want_x = (c[..., None] * G).sum(1)
    want_y = -(c[..., None] * G).sum(0)
    return max(check(gx, want_x, (ca * mag).sum(1), floor(name, dtype, s, x64, y64, ca.sum(1)), dtype,
                     f"kernel_integral grad x {backend} {name} σ={s:.3g} {dtype}"),
               check(gy, want_y, (ca * mag).sum(0), floor(name, dtype, s, y64, x64, ca.sum(0)), dtype,
                     f"kernel_integral grad y {backend} {name} σ={s:.3g} {dtype}"))


def run_mmd2_grad(name, x, y, s, dtype, backend, device="cpu"):
    (X, x64), (Y, y64) = rounded(x, dtype, device), rounded(y, dtype, device)
    X.requires_grad_(True)
    (gx,) = torch.autograd.grad(ops.mmd2(X, Y, kernel=name, bandwidth=s, backend=backend), X)
    N, M = len(x), len(y)
    Gx, mx, _, _ = pair_terms(name, x64, x64, s)
    Gy, my, _, _ = pair_terms(name, x64, y64, s)
    want = 2 / N**2 * Gx.sum(1) - 2 / (N * M) * Gy.sum(1)
    scale = 2 / N**2 * mx.sum(1) + 2 / (N * M) * my.sum(1)
    fl = floor(name, dtype, s, x64, np.concatenate([x64, y64]), 4.0 / N)
    return check(gx, want, scale, fl, dtype, f"mmd2 grad x {backend} {name} σ={s:.3g} {dtype}")


def run_svgd(name, x, s, dtype, backend, rng, device="cpu"):
    (X, x64) = rounded(x, dtype, device)
    (S, s64) = rounded(rng.normal(size=x.shape), dtype, device)
    got = ops.svgd_field(X, S, kernel=name, bandwidth=s, backend=backend)
    G, mag, K, magK = pair_terms(name, x64, x64, s)  # G_ij = ∇_{x_i} k(x_i, x_j) = −∇_{x_j} k(x_j, x_i)
    N = len(x)
    want = (K @ s64 - G.sum(1)) / N
    scale = (magK @ np.abs(s64).max(1) + mag.sum(1)) / N
    fl = floor(name, dtype, s, x64, x64, 1.0)
    return check(got, want, scale, fl, dtype, f"svgd_field {backend} {name} σ={s:.3g} {dtype}")


def kde_terms(a, b, s, g):
    """Float64 (μ, grad x, grad y) of Σ_i g_i·μ_i with μ_i = Σ_j softmax_j(−r²_ij/(2σ²)) b_j, and their
    per-row scales: |μ_i| + Σ_j p_ij |b_j − μ_i| (1 + r²_ij/σ²) for μ; for the gradients the terms
    |c_ij| |a_i − b_j| / σ² (c_ij = p_ij (g_i·b_j − g_i·μ_i), counted with 1 + r²/σ² and with the
    rounding p_ij |g_i| (|b_j| + |μ_i|) of its difference), plus p_ij |g_i| for grad y."""
    d = a[:, None, :] - b[None, :, :]
    r2 = (d * d).sum(-1)
    ell = -r2 / (2 * s * s)
    p = np.exp(ell - ell.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    mu = p @ b
    c = p * (g @ b.T - (g * mu).sum(1)[:, None])
    gx = -(c[..., None] * d).sum(1) / s**2
    gy = p.T @ g + (c[..., None] * d).sum(0) / s**2
    amp = 1 + r2 / s**2
    ym = np.sqrt(((b[None] - mu[:, None]) ** 2).sum(-1))
    cmag = np.abs(c) * amp + p * np.abs(g).sum(1)[:, None] * (np.abs(b).max(1)[None] + np.abs(mu).max(1)[:, None])
    term = cmag * np.sqrt(r2) / s**2
    scales = (np.abs(mu).max(1) + (p * ym * amp).sum(1),
              term.sum(1) + np.abs(gx).max(1),
              (p * np.abs(g).max(1)[:, None]).sum(0) + term.sum(0) + np.abs(gy).max(1))
    return (mu, gx, gy), scales


def run_kde(x, y, s, dtype, backend, rng, device="cpu"):
    (X, x64), (Y, y64) = rounded(x, dtype, device), rounded(y, dtype, device)
    (G, g64) = rounded(rng.normal(size=x.shape), dtype, device)
    X.requires_grad_(True)
    Y.requires_grad_(True)
    mu = ops.kde_denoiser(X, Y, bandwidth=s, backend=backend)
    gx, gy = torch.autograd.grad(mu, (X, Y), G)
    wants, scales = kde_terms(x64, y64, s, g64)
    # the exp floor: any weight may be e^floor instead of smaller, in a term up to |g| (|y| + |μ|) |x − y| / σ²
    A = 1 + max(np.abs(y64).max(), np.abs(x64).max())
    fl = 4 * math.exp(EXP_FLOOR[dtype]) * (len(x) + len(y)) * (1 + np.abs(g64).max()) * A * A * (1 + 1 / s**2)
    return max(check(got, want, scale, fl, dtype, f"{what} {backend} σ={s:.3g} {dtype}")
               for got, want, scale, what in zip((mu, gx, gy), wants, scales, ("kde_denoiser", "kde grad x", "kde grad y")))


# ----- the cases: each failed before the fields were formed from differences ---------

def unit_data(rng, n, D, offset=0.0):
    return rng.normal(size=(n, D)) + offset


# ----- the hard cases: each failed before the fields were formed from differences ------------

def self_pairs(backend: str, dtype, s: float, device="cpu") -> float:
    """x_ref = x with IMQ, D = 2: each particle's own term has the weight φ'(0)/σ² next to tiny
    ones. Before: worst row 0.67 (torch) and 0.81 (cpu) relative in float32 at σ = 0.01; 0.45 at 1e-6."""
    rng = np.random.default_rng(1)
    x, y = unit_data(rng, 24, 2), unit_data(rng, 30, 2)
    return max(run_mmd_field("imq", x, y, None, s, dtype, backend, device),
               run_mmd2_grad("imq", x, y, s, dtype, backend, device),
               run_svgd("imq", x, s, dtype, backend, rng, device))


def close_pairs(backend: str, name: str, D: int, dtype, device="cpu") -> float:
    """Data offset by +3, particles 1e-3 from data points, σ = 0.5: the matrix-product distances
    snapped these r² to 0 (D = 16: laplace row error 0.98, energy 0.02; dense float32 2e-4, 6e-6).
    D = 16 is in Triton's exact-difference range and the reference's matrix-product one; D = 20 in
    both backends' matrix-product range (where 21 of 32 Triton checks failed before its close pairs)."""
    rng = np.random.default_rng(2 + D)
    y = unit_data(rng, 20, D, offset=3.0)
    x = y[:12] + 1e-3 * rng.normal(size=(12, D))
    out = [run_mmd_field(name, x, y, None, 0.5, dtype, backend, device),
           run_integral_grads(name, x, y, 0.5, dtype, backend, rng, device)]
    if D > 16:
        out += [run_mmd_field(name, x, y, y[:7], 0.5, dtype, backend, device),
                run_svgd(name, x, 0.01, dtype, backend, rng, device)]
    return max(out)


def two_clusters(backend: str, D: int, dtype, s: float, device="cpu") -> float:
    """The soft assignment on data in two tight clusters at ±3, queries among them, σ the clusters'
    spread. The flash-form logits (x·y − |y|²/2)/σ² (every backend above its exact-difference range,
    before) rounded at eps |x| |y| / σ²: D = 16, σ = 1e-3, float32 μ off by 3σ (torch and cpu), the
    y gradient by 1e41 (cpu); a dense float32 formula is within 1e-3 σ."""
    rng = np.random.default_rng(4 + D)
    sign = np.where(rng.random((24, 1)) < 0.5, -1.0, 1.0)
    y = 3 * sign + s * rng.normal(size=(24, D))
    x = 3 * sign[:14] + s * rng.normal(size=(14, D))
    return run_kde(x, y, s, dtype, backend, rng, device)


def hard_cases(quick: bool = False) -> Iterable[Tuple[str, str, int, torch.dtype, Callable[[str, str], float]]]:
    """(case, kernel, D, dtype, run(backend, device) -> fraction of budget) for ``gpflow check``."""
    f32, f64 = torch.float32, torch.float64
    for dtype, s in ((f32, 0.01), (f64, 1e-6)) if quick else ((f32, 0.01), (f64, 1e-4), (f64, 1e-6)):
        yield "self_pairs", "imq", 2, dtype, (lambda be, dev, dtype=dtype, s=s: self_pairs(be, dtype, s, dev))
    for name in ("laplace",) if quick else ("laplace", "energy", "imq"):
        for D in (16, 20):
            for dtype in (f32, f64):
                yield "close_pairs", name, D, dtype, (lambda be, dev, name=name, D=D, dtype=dtype:
                                                      close_pairs(be, name, D, dtype, dev))
    for D in (9, 33) if quick else (4, 9, 33):
        for dtype, s in ((f32, 1e-2), (f32, 1e-4), (f64, 1e-4)):
            yield "two_clusters", "gaussian", D, dtype, (lambda be, dev, D=D, dtype=dtype, s=s:
                                                         two_clusters(be, D, dtype, s, dev))

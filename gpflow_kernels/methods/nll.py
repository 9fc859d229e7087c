"""Held-out negative log-likelihood of a method's model, by ``solvers.log_prob`` on its flow.

Units: nats per dimension, −mean log p(y) / D over the first ``nll_points`` held-out points, for
points and for images without pixel levels (float images, resized ones). Quantised images
(``Dataset.levels`` set: uint8, the digits) are dequantised as usual: each pixel gets uniform
noise over its bin of width Δ = 2 / (levels − 1) and the value is in bits per dimension,
(−mean log p(y + u) / D − log Δ) / ln 2, an upper bound on the discrete model's bits/dim.

The divergence is exact for D ≤ 16 and a Hutchinson estimate (one Rademacher probe per point,
seeded; unbiased) above: our choice of cost against variance. dopri5 with rtol = atol = 1e-5.
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, Optional

import torch

import solvers

from ..data.dataset import Dataset
from .outdir import RunFailed
from .parallel import Parallel

EXACT_MAX_DIM = 16
TOL = 1e-5


def held_out_nll(m, ds: Dataset, par: Parallel, seed: int = 0) -> Optional[Dict[str, Any]]:
    """{"value", "units", "points", "divergence", "nfe", "seconds", "flow"}, or None when the method
    has no likelihood or its option ``nll_points`` is 0. Every rank takes part (points are split)."""
    n_points = min(getattr(m.opts, "nll_points", 0), len(ds.test))
    if n_points == 0:
        return None
    gen = torch.Generator(device=m.device).manual_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        flow = m.likelihood_flow(gen)
    if flow is None:
        return None
    y = ds.test[:n_points].double()
    delta = None
    if ds.levels:
        delta = 2.0 / (ds.levels - 1)
        u = torch.rand(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        y = y + (u - 0.5) * delta
    lo, hi = par.shard(n_points)
    y_local = y[lo:hi].to(device=m.device, dtype=ds.train.dtype)
    d = ds.dim
    divergence = "exact" if d <= EXACT_MAX_DIM else "hutchinson"
    stats = solvers.SolverStats()
    total = 0.0
    if len(y_local):
        try:
            with torch.no_grad():
                lp = solvers.log_prob(flow.field, y_local, flow.ts, flow.prior_log_prob, divergence=divergence,
                                      seed=seed + lo, rtol=TOL, atol=TOL, stats=stats)
        except (solvers.NonFiniteError, RuntimeError) as e:
            raise RunFailed(f"final.nll: solving {flow.what} failed ({e}); set nll_points=0 to skip the NLL") from None
        if not bool(torch.isfinite(lp).all()):
            raise RunFailed(f"final.nll: {flow.what} gave non-finite log-densities; set nll_points=0 to skip the NLL")
        total = float(lp.double().sum())
    sums = par.mean_stats({"logp": total, "nfe": float(stats.nfe)})
    nats = -sums["logp"] * par.world / (n_points * d)
    value, units = nats, "nats/dim"
    if delta is not None:
        value, units = (nats - math.log(delta)) / math.log(2.0), "bits/dim"
    return {"value": value, "units": units, "points": n_points, "divergence": divergence,
            "nfe": int(round(sums["nfe"])), "seconds": round(time.perf_counter() - start, 3), "flow": flow.what}

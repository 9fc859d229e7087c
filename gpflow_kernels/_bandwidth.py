"""Bandwidth resolution: a float, several bandwidths (a list or 1-d tensor; kernels summed), or "median"."""

from __future__ import annotations

import math
import numbers
from typing import Sequence, Tuple, Union

import torch

from . import _checks

Tensor = torch.Tensor

#: The median heuristic looks at no more than this many points per batch element, so that
#: it costs O(MEDIAN_POINTS²) memory whatever N and M are.
MEDIAN_POINTS = 1024


def median_distance(z: Tensor) -> Tensor:
    """Median of the pairwise distances |z_i − z_j|, i < j, per batch element.

    z: (B, N, D) -> (B,). Above ``MEDIAN_POINTS`` points a fixed random subset (seed 0) is
    used, so the heuristic is deterministic and bounded in memory.
    """
    B, N, _ = z.shape
    if N < 2:
        raise ValueError(f'bandwidth="median" needs at least 2 points to measure distances, got {N}; pass a bandwidth')
    if N > MEDIAN_POINTS:
        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(N, generator=g)[:MEDIAN_POINTS].to(z.device)
        z = z[:, idx]
        N = MEDIAN_POINTS
    iu = torch.triu_indices(N, N, offset=1, device=z.device)
    return _median(torch.cdist(z, z)[:, iu[0], iu[1]])


def _median(d: Tensor) -> Tensor:
    """numpy's median along the last axis (the mean of the two middle values when the count is
    even; torch.median takes the lower one). One selection (kthvalue) instead of the full sort in
    torch.quantile: 5x faster at the 5·10^5 distances of MEDIAN_POINTS points."""
    n = d.shape[-1]
    lo = torch.kthvalue(d, (n + 1) // 2, dim=-1).values
    if n % 2:
        return lo
    # The upper middle value is lo again when enough values tie with it, else the next one up.
    ties = (d <= lo.unsqueeze(-1)).sum(-1)
    above = torch.where(d > lo.unsqueeze(-1), d, torch.full_like(d, float("inf"))).amin(-1)
    return 0.5 * (lo + torch.where(ties >= n // 2 + 1, lo, above))


def usable_range(dtype: torch.dtype) -> Tuple[float, float]:
    """The bandwidths σ the ops accept when they compute in ``dtype`` (float32 or float64).

    The backward passes scale second derivatives by 1/σ⁴ and large-σ kernels by σ⁴, so both must be
    finite: σ ∈ [max^(−1/4), max^(1/4)] of the dtype, about [2.3e-10, 4.3e9] in float32 and
    [1.5e-77, 6.7e76] in float64. (Beyond it σ² under- or overflows and the results turn NaN.)
    float16/bfloat16 inputs are computed in float32, so they take the float32 range; their results
    are cast back and must also fit the half dtype (see ``ops``).
    """
    big = torch.finfo(dtype).max ** 0.25
    return 1.0 / big, big


def _range_message(name: str, value: str, dtype: torch.dtype, what: str = "") -> str:
    lo, hi = usable_range(dtype)
    return (f"{name}{what} = {value} is outside the range the ops can compute in {dtype}: "
            f"[{lo:.2g}, {hi:.2g}] (σ² or 1/σ⁴ would under- or overflow); rescale the points"
            + ("" if dtype == torch.float64 else " or use float64 inputs"))


def _check_range(name: str, sigma: Tensor, dtype: torch.dtype, what: str = "") -> None:
    """sigma: float64 values, already known finite and > 0."""
    lo, hi = usable_range(dtype)
    ok = (sigma >= lo) & (sigma <= hi)
    if _checks.compiling():  # no value in the message: a traced graph cannot format one
        _checks.require(ok, _range_message(name, "a value", dtype, what))
        return
    bad = sigma[~ok]
    if bad.numel():
        raise ValueError(_range_message(name, f"{float(bad.flatten()[0]):.3g}", dtype, what))


def resolve(bandwidth, pools, dtype: torch.dtype, device, *, scale=None, name="bandwidth") -> Tensor:
    """Bandwidths σ as squared values s2: (B or 1, K) in ``dtype``.

    ``pools``: point sets (B, ·, D) whose union feeds the median heuristic. ``scale``, if given,
    maps the median distance to σ (SVGD's rule divides by sqrt(2 log(N + 1))).
    """
    if isinstance(bandwidth, str):
        if bandwidth != "median":
            raise ValueError(f'{name} must be a positive number, a list or 1-d tensor of them, or "median", got {bandwidth!r}')
        with torch.no_grad():
            z = torch.cat([p.detach().to(torch.float64 if dtype == torch.float64 else torch.float32) for p in pools], 1)
            sigma = median_distance(z)
            if scale is not None:
                sigma = sigma * scale
        _checks.require(sigma > 0, f'{name}="median" gave 0: more than half of the pairwise distances are 0 '
                                   "(repeated points); pass an explicit bandwidth")
        _check_range(name, sigma.double(), dtype, what=' from "median"')
        return (sigma * sigma).to(dtype).view(-1, 1)
    if isinstance(bandwidth, (list, tuple)):
        # A list of numbers is the same request as a 1-d tensor of them.
        if not bandwidth:
            raise ValueError(f"{name} must hold K >= 1 bandwidths, got an empty {type(bandwidth).__name__}")
        for i, b in enumerate(bandwidth):
            if isinstance(b, bool) or not isinstance(b, numbers.Real):
                raise TypeError(f"{name}[{i}] must be a number, got {type(b).__name__}")
        bandwidth = torch.tensor([float(b) for b in bandwidth], dtype=torch.float64)
    if isinstance(bandwidth, torch.Tensor):
        if bandwidth.requires_grad:
            raise TypeError(f"{name} requires grad, but gradients with respect to the bandwidth are not supported; detach it")
        if bandwidth.dtype.is_complex or bandwidth.dtype == torch.bool:
            raise TypeError(f"{name} must be a real tensor, got dtype {bandwidth.dtype}")
        if bandwidth.dim() > 1 or bandwidth.numel() == 0:
            raise ValueError(
                f"{name} must be a scalar or a 1-d tensor of K >= 1 bandwidths, got shape {tuple(bandwidth.shape)}"
            )
        sig = bandwidth.detach().to(device=device, dtype=torch.float64).reshape(1, -1)
        ok = torch.isfinite(sig) & (sig > 0)
        if _checks.compiling():
            _checks.require(ok, f"{name} must hold finite values > 0")
        elif not bool(ok.all()):
            raise ValueError(f"{name} must hold finite values > 0, got {bandwidth.tolist()}")
        _check_range(name, sig, dtype)
        return (sig * sig).to(dtype)
    sigma = _checks.positive_number(name, bandwidth)
    lo, hi = usable_range(dtype)
    if not lo <= sigma <= hi:  # a number: checked on the host, no tensor (nothing to trace)
        raise ValueError(_range_message(name, f"{sigma:.3g}", dtype))
    return torch.full((1, 1), sigma * sigma, dtype=dtype, device=device)


def single(bandwidth: Union[float, Sequence[float], Tensor, str], name: str = "bandwidth"):
    """Reject several bandwidths where one convolution is meant (KDE)."""
    if isinstance(bandwidth, torch.Tensor) and bandwidth.numel() != 1:
        raise ValueError(f"{name} must be a single bandwidth here, got shape {tuple(bandwidth.shape)}")
    if isinstance(bandwidth, (list, tuple)) and len(bandwidth) != 1:
        raise ValueError(f"{name} must be a single bandwidth here, got {len(bandwidth)} of them")
    return bandwidth


def svgd_scale(n: int) -> float:
    """Liu & Wang (2016): h = med² / log n with k = exp(−r²/h), i.e. σ = med / sqrt(2 log(n + 1))."""
    return 1.0 / math.sqrt(2.0 * math.log(n + 1.0))

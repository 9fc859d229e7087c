"""torchsde / torchdiffeq helpers. Our SDEs (``solvers.SDE``) and fields (callables (t, x)) are
already accepted by ``torchsde.sdeint`` / ``torchdiffeq.odeint`` unchanged; this adds the one
thing to get right on the torchsde side: a ``BrownianInterval`` whose ``dt`` is the step (its
default Brownian object is very slow for small steps)."""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def brownian_interval(x0: Tensor, t0: float, t1: float, dt: float, *, seed: int = 0, noise_type: str = "diagonal"):
    """A torchsde ``BrownianInterval`` on [min(t0,t1), max(t0,t1)] for state x0 (N, D), cached at step dt."""
    try:
        import torchsde
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("brownian_interval needs torchsde: pip install 'gpflow-kernels[sde]'") from e
    size = (x0.shape[0], 1) if noise_type == "scalar" else tuple(x0.shape)
    lo, hi = (t0, t1) if t0 <= t1 else (t1, t0)
    return torchsde.BrownianInterval(t0=lo, t1=hi, size=size, dtype=x0.dtype, device=x0.device,
                                     entropy=seed, dt=dt, levy_area_approximation="none")

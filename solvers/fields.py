"""Closed-form particle fields from gpflow_kernels, as ODE fields and SDEs.

Each ODE field is an ``nn.Module`` called as field(t, x), so it works with ``solvers.odeint``,
``torchdiffeq.odeint`` and ``torchdiffeq.odeint_adjoint`` alike.
"""

from __future__ import annotations

import numbers
from typing import Callable, Optional, Union

import torch
from torch import nn

import gpflow_kernels as gk

from .sde import SDE

Tensor = torch.Tensor


def _schedule(v: Union[float, Callable[[Tensor], float]]):
    return v if callable(v) else (lambda t, _v=float(v): _v)


def _ops(group):
    """The single-process ops, or the sharded ones when a process group is given."""
    if group is None:
        return gk
    from gpflow_kernels import distributed

    return _Sharded(distributed, group)


class _Sharded:
    """gpflow_kernels.distributed with ``group`` bound, called like the top-level ops."""

    def __init__(self, mod, group):
        self.mod, self.group = mod, group

    def __getattr__(self, name):
        fn = getattr(self.mod, name)
        return lambda *a, **kw: fn(*a, group=self.group, **kw)


class MMDFlow(nn.Module):
    """MMD gradient flow dx/dt = ∇h(x) toward ``data`` (Arbel et al. 2019), h the MMD witness.

    ``noise_level`` β(t) (a number or a function of t) evaluates the field at x + β ε, Arbel et
    al.'s noise injection, which helps particles escape local optima; ``generator`` seeds ε, or
    ``normals`` (a :class:`solvers.sharded.ParticleNormals`) draws ε per global particle, the same
    on any number of ranks. ``group``: a torch.distributed process group (e.g.
    ``torch.distributed.group.WORLD``); x and data are then this rank's shards and the field is
    ``gpflow_kernels.distributed.mmd_field`` over all of them.
    """

    def __init__(self, data: Tensor, *, kernel="gaussian", bandwidth=1.0, noise_level=0.0,
                 generator: Optional[torch.Generator] = None, normals=None, group=None):
        super().__init__()
        self.data, self.kernel, self.bandwidth = data, kernel, bandwidth
        self.noise_level, self.generator, self.normals = _schedule(noise_level), generator, normals
        self.group, self.ops = group, _ops(group)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        beta = self.noise_level(t)
        probe = x
        if beta:
            if self.normals is not None:
                eps = self.normals.draw((1, float(t)), x.shape[-2], x.shape[-1]).to(x.dtype).reshape(x.shape)
            else:
                eps = torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)
            probe = x + beta * eps
        return self.ops.mmd_field(probe, self.data, kernel=self.kernel, bandwidth=self.bandwidth, x_ref=x)


class SteinFlow(nn.Module):
    """SVGD as an ODE: dx/dt = φ(x), the Stein variational gradient for the target score.
    ``group``: sharded particles (``gpflow_kernels.distributed.svgd_field``), as in :class:`MMDFlow`."""

    def __init__(self, score: Callable[[Tensor], Tensor], *, kernel="gaussian", bandwidth="median", group=None):
        super().__init__()
        self.score, self.kernel, self.bandwidth = score, kernel, bandwidth
        self.group, self.ops = group, _ops(group)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.ops.svgd_field(x, self.score(x), kernel=self.kernel, bandwidth=self.bandwidth)


class LogRatioField(nn.Module):
    """dx/dt = ∇log p_σ(x) − ∇log q_σ(x): the KL flow between smoothed data and particles.

    Both scores are exact scores of the samples convolved with N(0, σ² I) (``kde_score``): the
    data set and, for q, the particles themselves. ``sigma`` may depend on t. ``group``: sharded
    particles and data, as in :class:`MMDFlow`.
    """

    def __init__(self, data: Tensor, sigma: Union[float, Callable[[Tensor], float]], group=None):
        super().__init__()
        self.data, self.sigma = data, _schedule(sigma)
        self.group, self.ops = group, _ops(group)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        s = float(self.sigma(t))
        return self.ops.kde_score(x, self.data, bandwidth=s) - self.ops.kde_score(x, x.detach(), bandwidth=s)


class LangevinFlow(SDE):
    """Overdamped Langevin dynamics dx = ∇log p(x) dt + sqrt(2 T) dW: the KL flow with noise.

    The particles do not interact, so sharding needs no group: give ``sdeint`` a
    :class:`solvers.sharded.ShardedBrownian` and every particle follows the same path on any number
    of ranks."""

    noise_type = "additive"

    def __init__(self, score: Callable[[Tensor], Tensor], temperature: float = 1.0):
        super().__init__()
        if not (isinstance(temperature, numbers.Real) and temperature >= 0):
            raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
        self.score, self.temperature = score, float(temperature)

    def drift(self, t, x):
        return self.score(x)

    def diffusion(self, t, x):
        return torch.full_like(x, (2.0 * self.temperature) ** 0.5)

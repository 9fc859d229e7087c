"""solvers: integrators for particle ODEs and SDEs (layer 2, on top of gpflow_kernels).

- ``odeint(field, x0, ts, method=...)``: euler, midpoint, heun, rk4 (fixed step).
- ``sdeint(sde, x0, ts, method=...)``: euler_maruyama, heun (additive noise), edm (churn sampler).
- grids: ``karras_sigmas``, ``loglinear_sigmas``, ``vp_sigmas``, ``ve_sigmas``, ``linear_grid``.
- particle systems: ``DiffFlowSDE``, ``MMDFlow``, ``SteinFlow``, ``LangevinFlow``, ``LogRatioField``;
  with ``group=`` their particles are sharded over torch.distributed ranks (``solvers.sharded``:
  offsets and rank-count-independent noise, ``ParticleNormals``, ``ShardedBrownian``).
"""

from ._checks import NonFiniteError
from .diffflow import DiffFlowSDE
from .edm import EDMDenoiser, KDEDenoiser, edm_step
from .fields import LangevinFlow, LogRatioField, MMDFlow, SteinFlow
from .grids import karras_sigmas, linear_grid, loglinear_sigmas, ve_sigmas, vp_sigmas
from .interop import brownian_interval
from .ode import ODE_METHODS, odeint
from .sde import SDE, SDE_METHODS, sdeint
from .sharded import ParticleNormals, ShardedBrownian, global_offset, shard_bounds

__all__ = [
    "odeint", "sdeint", "SDE", "ODE_METHODS", "SDE_METHODS", "NonFiniteError",
    "karras_sigmas", "linear_grid", "loglinear_sigmas", "ve_sigmas", "vp_sigmas",
    "DiffFlowSDE", "MMDFlow", "SteinFlow", "LangevinFlow", "LogRatioField",
    "EDMDenoiser", "KDEDenoiser", "edm_step", "brownian_interval",
    "ParticleNormals", "ShardedBrownian", "global_offset", "shard_bounds",
]

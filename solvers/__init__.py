"""solvers: integrators for particle ODEs and SDEs (layer 2, on top of gpflow_kernels).

- ``odeint(field, x0, ts, method=...)``: euler, midpoint, heun, rk4 (fixed step); dopri5, bosh3
  (error-controlled, ``rtol``/``atol``, dense output, ``stats=SolverStats()``, ``adjoint=True``).
- ``log_prob(field, x, ts, prior_log_prob)``: exact log-densities of a flow (change of variables,
  exact or Hutchinson divergence); probability-flow fields ``EDMFlow``, ``VPFlow`` and
  ``DiffFlowSDE.probability_flow()``.
- ``sdeint(sde, x0, ts, method=...)``: euler_maruyama, heun (additive noise), edm (churn sampler).
- grids: ``karras_sigmas``, ``loglinear_sigmas``, ``vp_sigmas``, ``ve_sigmas``, ``linear_grid``.
- particle systems: ``DiffFlowSDE``, ``MMDFlow``, ``SteinFlow``, ``LangevinFlow``, ``LogRatioField``;
  with ``group=`` their particles are sharded over torch.distributed ranks (``solvers.sharded``:
  offsets and rank-count-independent noise, ``ParticleNormals``, ``ShardedBrownian``).
"""

from ._checks import NonFiniteError
from .adaptive import ADAPTIVE_METHODS, PIController, SolverStats
from .diffflow import DiffFlowSDE
from .edm import EDMDenoiser, KDEDenoiser, edm_step
from .fields import LangevinFlow, LogRatioField, MMDFlow, SteinFlow
from .grids import karras_sigmas, linear_grid, loglinear_sigmas, ve_sigmas, vp_sigmas
from .interop import brownian_interval
from .likelihood import gaussian_log_prob, log_prob
from .ode import ODE_METHODS, odeint
from .probability_flow import EDMFlow, VPFlow, edm_prior
from .sde import SDE, SDE_METHODS, sdeint
from .sharded import ParticleNormals, ShardedBrownian, global_offset, shard_bounds

__all__ = [
    "odeint", "sdeint", "SDE", "ODE_METHODS", "SDE_METHODS", "NonFiniteError",
    "karras_sigmas", "linear_grid", "loglinear_sigmas", "ve_sigmas", "vp_sigmas",
    "DiffFlowSDE", "MMDFlow", "SteinFlow", "LangevinFlow", "LogRatioField",
    "EDMDenoiser", "KDEDenoiser", "edm_step", "brownian_interval",
    "ParticleNormals", "ShardedBrownian", "global_offset", "shard_bounds",
    "ADAPTIVE_METHODS", "PIController", "SolverStats", "log_prob", "gaussian_log_prob",
    "EDMFlow", "VPFlow", "edm_prior",
]

"""gpflow-kernels: kernel reductions for particle models of generative modelling.

GANs, score-based diffusion and gradient flows all move particles along a vector field
(Franceschi et al. 2023). This package computes those fields: MMD witness gradients, kernel
integrals, KDE scores and denoisers, Stein fields, score-matching losses and NTK smoothing,
in tiled plain torch with memory O(N + M).
"""

from . import kernels, ops
from .kernels import Kernel, get_kernel
from .losses import denoising_score_matching_loss, sliced_score_matching_loss
from .ntk import empirical_ntk, ntk_smooth
from .ops import (
    kde_denoiser,
    kde_score,
    kernel_integral,
    median_bandwidth,
    mmd2,
    mmd_field,
    svgd_field,
)

__version__ = "0.1.0"

__all__ = ops.__all__ + [
    "sliced_score_matching_loss",
    "denoising_score_matching_loss",
    "ntk_smooth",
    "empirical_ntk",
    "kernels",
    "Kernel",
    "get_kernel",
]

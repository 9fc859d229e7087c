"""gpflow-kernels: kernel reductions for particle models of generative modelling.

GANs, score-based diffusion and gradient flows all move particles along a vector field
(Franceschi et al. 2023). This package computes those fields: MMD witness gradients, kernel
integrals, KDE scores and denoisers, Stein fields, score-matching losses and NTK smoothing,
in tiled plain torch with memory O(N + M).

The names below are loaded on first use (PEP 562), so that ``gpflow`` can parse and check its
arguments without importing torch; ``from gpflow_kernels import mmd_field`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> the submodule that defines it
_EXPORTS = {
    "mmd_field": "ops", "mmd2": "ops", "kernel_integral": "ops", "kde_score": "ops", "kde_denoiser": "ops",
    "svgd_field": "ops", "median_bandwidth": "ops",
    "sliced_score_matching_loss": "losses", "denoising_score_matching_loss": "losses",
    "ntk_smooth": "ntk", "empirical_ntk": "ntk",
    "Kernel": "kernels", "get_kernel": "kernels",
}
_SUBMODULES = ("kernels", "ops", "losses", "ntk", "reference")

__all__ = list(_EXPORTS) + ["kernels"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))


if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from . import kernels, ops  # noqa: F401
    from .kernels import Kernel, get_kernel  # noqa: F401
    from .losses import denoising_score_matching_loss, sliced_score_matching_loss  # noqa: F401
    from .ntk import empirical_ntk, ntk_smooth  # noqa: F401
    from .ops import kde_denoiser, kde_score, kernel_integral, median_bandwidth, mmd2, mmd_field, svgd_field  # noqa: F401

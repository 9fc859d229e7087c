"""Layer 3: the papers' methods as thin wrappers, on top of ``gpflow_kernels`` ops and ``solvers``.

This subpackage (and :mod:`gpflow_kernels.cli`) is the only part of the distribution that imports
``solvers``; ``import gpflow_kernels`` never loads it. Each method is one module:

| name | kind | paper |
|---|---|---|
| edm | PM | Karras et al. 2022 (GPM: score-based diffusion) |
| score-gan | Int-PM | Franceschi et al. 2023 |
| disc-flow | PM | Franceschi et al. 2023 |
| disc-flow-gen | Int-PM | the same, distilled into a generator |
| gan | Int-PM | Goodfellow et al. 2014 / GPM |
| diffflow | PM | Zhang et al. 2023 |
| mmd-guidance | PM | Asokan et al. 2023 |
| mmd-flow, svgd, langevin | flow | Arbel et al. 2019, Liu & Wang 2016, Song & Ermon 2019 |
"""

from typing import Dict, Type

from .base import Method, Options, Sample
from .data import DATASETS, Dataset, load
from .diffflow import DiffFlow
from .disc_flow import DiscFlow, DistilledDiscFlow
from .edm import EDM
from .flows import LangevinMethod, MMDFlowMethod, SVGDMethod
from .gan import GAN
from .guidance import MMDGuidance
from .score_gan import ScoreGAN

METHODS: Dict[str, Type[Method]] = {
    m.name: m for m in (EDM, ScoreGAN, DiscFlow, DistilledDiscFlow, GAN, DiffFlow, MMDGuidance, MMDFlowMethod, SVGDMethod, LangevinMethod)
}


def get_method(name: str) -> Type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "get_method", "Method", "Options", "Sample", "DATASETS", "Dataset", "load"]

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

Their options live in :mod:`.options`, which imports no torch; this package loads the method
modules (and torch) only when ``METHODS``, ``get_method`` or a class is first asked for.
"""

from __future__ import annotations

import importlib
from typing import Dict, Type

from .options import DATA_NAMES as DATASETS
from .options import OPTIONS, Options

#: method name -> (module, class)
_CLASSES = {
    "edm": ("edm", "EDM"),
    "score-gan": ("score_gan", "ScoreGAN"),
    "disc-flow": ("disc_flow", "DiscFlow"),
    "disc-flow-gen": ("disc_flow", "DistilledDiscFlow"),
    "gan": ("gan", "GAN"),
    "diffflow": ("diffflow", "DiffFlow"),
    "mmd-guidance": ("guidance", "MMDGuidance"),
    "mmd-flow": ("flows", "MMDFlowMethod"),
    "svgd": ("flows", "SVGDMethod"),
    "langevin": ("flows", "LangevinMethod"),
}
_LAZY = {"Method": ".base", "Sample": ".base", "Dataset": "gpflow_kernels.data", "load": "gpflow_kernels.data",
         "load_run": ".serve"}


def get_method(name: str):
    if name not in _CLASSES:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(_CLASSES)}")
    module, cls = _CLASSES[name]
    return getattr(importlib.import_module(f".{module}", __name__), cls)


def __getattr__(name: str):
    if name == "METHODS":
        value: Dict[str, Type] = {m: get_method(m) for m in _CLASSES}
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = ["METHODS", "get_method", "Method", "Sample", "DATASETS", "Dataset", "load", "load_run", "OPTIONS", "Options"]

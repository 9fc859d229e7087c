"""The embedded data sets: nothing is downloaded.

2-D sets are drawn from their generating process with a seeded generator; ``digits`` is
scikit-learn's bundled 8×8 digits (1797 images, shipped inside scikit-learn). Every set comes
as flat float32 points in roughly unit scale: 2-D sets have standard deviation of order 1, digit
pixels are mapped from 0..16 to [−1, 1].
"""

from __future__ import annotations

import math
from typing import Callable, Dict

import torch

from ..methods.options import DATA_NAMES
from .dataset import Dataset

Tensor = torch.Tensor


def eight_gaussians(n: int, g: torch.Generator) -> Tensor:
    """8 Gaussians (std 0.1) evenly spaced on the circle of radius 2."""
    angles = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    centres = 2.0 * torch.stack([angles.cos(), angles.sin()], 1)
    idx = torch.randint(0, 8, (n,), generator=g)
    return (centres[idx] + 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def five_gaussians(n: int, g: torch.Generator) -> Tensor:
    """The GPM reference code's 2-D mixture: 5 Gaussians (std 0.5) evenly spaced on the circle of radius 3."""
    angles = torch.arange(5, dtype=torch.float64) * (2 * math.pi / 5)
    centres = 3.0 * torch.stack([angles.cos(), angles.sin()], 1)
    idx = torch.randint(0, 5, (n,), generator=g)
    return (centres[idx] + 0.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def two_moons(n: int, g: torch.Generator) -> Tensor:
    """Two interleaved half circles (noise 0.1), centred, scaled by 1.5."""
    upper = torch.rand(n, generator=g) < 0.5
    a = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    x = torch.where(upper, a.cos(), 1.0 - a.cos())
    y = torch.where(upper, a.sin(), 0.5 - a.sin())
    pts = torch.stack([x - 0.5, y - 0.25], 1) + 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return (1.5 * pts).float()


def checkerboard(n: int, g: torch.Generator) -> Tensor:
    """Uniform on the 8 black squares of a 4×4 board over [−2, 2]²."""
    x1 = 4.0 * torch.rand(n, generator=g, dtype=torch.float64) - 2.0
    x2 = torch.rand(n, generator=g, dtype=torch.float64) - 2.0 * torch.randint(0, 2, (n,), generator=g)
    x2 = x2 + torch.floor(x1).remainder(2.0)
    return torch.stack([x1, x2], 1).float()


def swiss_roll(n: int, g: torch.Generator) -> Tensor:
    """The 2-D swiss roll t (cos t, sin t), t ∈ [1.5π, 4.5π], scaled by 1/4, noise 0.05."""
    t = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=g, dtype=torch.float64))
    pts = torch.stack([t * t.cos(), t * t.sin()], 1) / 4.0
    return (pts + 0.05 * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


TOY: Dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "8gaussians": eight_gaussians,
    "5gaussians": five_gaussians,
    "moons": two_moons,
    "checkerboard": checkerboard,
    "swissroll": swiss_roll,
}
DATASETS = DATA_NAMES  # the 2-D sets above, then digits


def load_digits(seed: int = 0, n_test: int = 297) -> Dataset:
    """scikit-learn's 8×8 digits, pixels mapped to [−1, 1]; a seeded, class-stratified-enough split."""
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError as e:  # pragma: no cover - exercised only without scikit-learn
        raise ImportError("the digits data set ships with scikit-learn: pip install 'gpflow-kernels[cli]'") from e
    bunch = _sk_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32) / 8.0 - 1.0
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    te, tr = perm[:n_test], perm[n_test:]
    return Dataset("digits", x[tr], x[te], (8, 8), y[tr], y[te], levels=17)


def load_embedded(name: str, *, n_train: int = 4000, n_test: int = 2000, seed: int = 0) -> Dataset:
    """The embedded data set ``name`` (one of ``DATASETS``). Sizes apply to the 2-D sets; digits has 1500/297."""
    if name == "digits":
        return load_digits(seed)
    if name not in TOY:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    for arg, v in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 2:
            raise ValueError(f"{arg} must be an integer >= 2, got {v!r}")
    g = torch.Generator().manual_seed(seed)
    return Dataset(name, TOY[name](n_train, g), TOY[name](n_test, g))

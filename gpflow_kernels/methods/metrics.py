"""Sample-quality metrics: MMD², energy distance, Fréchet distance on classifier features, class coverage.

All compare generated samples x (n, D) with held-out data y (m, D) and return Python floats.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn

from ..ops import median_bandwidth, mmd2
from ..data.dataset import Dataset
from .nets import mlp
from .parallel import Parallel

Tensor = torch.Tensor
MMD_SCALES = (0.25, 0.5, 1.0, 2.0)


def mmd2_metric(x: Tensor, y: Tensor, par: Optional[Parallel] = None) -> float:
    """Unbiased MMD² with a sum of Gaussian kernels at (¼, ½, 1, 2) × the median distance of y.

    The bandwidths depend on the held-out data only, so values are comparable across methods.
    With ``par`` (several ranks) x is this rank's shard of the samples and y the whole held-out
    set; the value is the sharded op's, over all ranks' samples (y is split over the ranks).
    """
    bw = float(median_bandwidth(y)) * torch.tensor(MMD_SCALES, dtype=torch.float64)
    return _mmd2(x, y, par, bandwidth=bw, unbiased=True)


def energy_distance(x: Tensor, y: Tensor, par: Optional[Parallel] = None) -> float:
    """Squared energy distance 2E|x − y| − E|x − x'| − E|y − y'| (V-statistic): MMD² with k = −|x − y|."""
    return _mmd2(x, y, par, kernel="energy")


def _mmd2(x: Tensor, y: Tensor, par: Optional[Parallel], **kw) -> float:
    if par is None or par.world == 1:
        return float(mmd2(x.double(), y.double(), **kw))
    from .. import distributed

    y_local = y[slice(*par.shard(len(y)))]
    return float(distributed.mmd2(x.double(), y_local.double(), group=par.group, **kw))


def frechet_distance(fx: Tensor, fy: Tensor) -> float:
    """|μx − μy|² + tr(Σx + Σy − 2 (Σx^½ Σy Σx^½)^½) between Gaussian fits of two feature sets (float64)."""
    fx, fy = fx.double(), fy.double()
    mx, my = fx.mean(0), fy.mean(0)
    cx, cy = torch.cov(fx.T).reshape(fx.shape[1], -1), torch.cov(fy.T).reshape(fy.shape[1], -1)
    ex, vx = torch.linalg.eigh(cx)
    root_x = (vx * ex.clamp_min(0).sqrt()) @ vx.T
    inner = torch.linalg.eigvalsh(root_x @ cy @ root_x).clamp_min(0)
    return float((mx - my).pow(2).sum() + cx.trace() + cy.trace() - 2 * inner.sqrt().sum())


class DigitsClassifier(nn.Module):
    """An MLP on the 8×8 digits; ``features`` is its last hidden layer (64 values) for the Fréchet distance."""

    def __init__(self):
        super().__init__()
        self.body = mlp(64, 64, 128, 1)
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(64, 10))

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def _cache_dir() -> Path:
    root = os.environ.get("GPFLOW_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "gpflow_kernels")
    return Path(root)


def train_digits_classifier(data: Dataset, steps: int = 600, seed: int = 0) -> DigitsClassifier:
    """Train the classifier on the training split (full batch, Adam, light input noise); ~2 s on a CPU."""
    if data.train_labels is None:
        raise ValueError(f"the data set {data.name!r} has no labels; the digits classifier needs data='digits'")
    with torch.random.fork_rng(devices=[]):  # the caller's training RNG stream is untouched
        torch.manual_seed(seed)
        clf = DigitsClassifier()
        opt = torch.optim.Adam(clf.parameters(), lr=3e-3, weight_decay=1e-4)
        x, y = data.train.cpu(), data.train_labels.cpu()
        for _ in range(steps):
            loss = nn.functional.cross_entropy(clf(x + 0.1 * torch.randn_like(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return clf.eval()


def digits_classifier(data: Dataset, *, cache: bool = True) -> DigitsClassifier:
    """The classifier trained once on the training split and cached under $GPFLOW_CACHE (or ~/.cache)."""
    path = _cache_dir() / "digits_classifier_v1.pt"
    if cache and path.exists():
        with torch.random.fork_rng(devices=[]):
            clf = DigitsClassifier()
        try:
            clf.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return clf.eval()
        except (RuntimeError, OSError, EOFError):
            pass  # a stale or broken cache file is retrained below
    clf = train_digits_classifier(data)
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(clf.state_dict(), tmp)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache only costs retraining next time
    return clf


def class_coverage(labels: Tensor, n_classes: int = 10, min_share: float = 0.5) -> float:
    """Fraction of classes that receive at least ``min_share`` × their uniform share (1/n_classes) of samples.

    1.0 means every class is generated; mode collapse shows as a lower value.
    """
    counts = torch.bincount(labels.flatten().cpu(), minlength=n_classes).double()
    share = counts / counts.sum()
    return float((share >= min_share / n_classes).double().mean())


def evaluate(x: Tensor, data: Dataset, classifier: Optional[DigitsClassifier] = None,
             par: Optional[Parallel] = None) -> Dict[str, float]:
    """The metrics of the data set's kind: MMD² and energy distance (2-D); MMD², Fréchet distance and coverage (digits).

    Under torchrun (``par``), x is this rank's shard of the samples; every rank gets the metrics of
    all ranks' samples (MMD² and energy from the sharded ops, the classifier metrics from all samples).
    """
    x = x.detach().float()
    sharded = par is not None and par.world > 1
    if (par.any(not bool(torch.isfinite(x).all())) if sharded else not bool(torch.isfinite(x).all())):
        raise ValueError("samples contain non-finite values; cannot compute metrics")
    y = data.test.to(x.device) if sharded else data.test.cpu()
    x = x if sharded else x.cpu()
    out = {"mmd2": mmd2_metric(x, y, par)}
    if not data.is_image:
        out["energy"] = energy_distance(x, y, par)
        return out
    x, y = (par.gather_rows(x).cpu(), y.cpu()) if sharded else (x, y)
    clf = classifier if classifier is not None else digits_classifier(data)
    with torch.no_grad():
        xc = x.clamp(-1, 1)
        out["fd"] = frechet_distance(clf.features(xc), clf.features(y))
        out["coverage"] = class_coverage(clf(xc).argmax(1))
    return out

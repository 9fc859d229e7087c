"""Sample-quality metrics: MMD², energy distance, Fréchet distance and KID on classifier features, class coverage.

All compare generated samples x (n, D) with held-out data y (m, D) and return Python floats.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn

from ..ops import median_bandwidth, mmd2
from ..data.dataset import Dataset
from ..nets import mlp
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


class LabelClassifier(nn.Module):
    """An MLP on flattened images; ``features`` is its last hidden layer (64 values) for the Fréchet
    distance and KID. ``LabelClassifier()`` is the digits one (64 inputs, 10 classes)."""

    def __init__(self, dim: int = 64, n_classes: int = 10):
        super().__init__()
        self.n_classes = int(n_classes)
        self.body = mlp(dim, 64, 128, 1)
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(64, self.n_classes))

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def _cache_dir() -> Path:
    root = os.environ.get("GPFLOW_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "gpflow_kernels")
    return Path(root)


def train_classifier(data: Dataset, steps: int = 600, seed: int = 0) -> LabelClassifier:
    """Train a classifier on the training split's labels (full batch, Adam, light input noise); ~2 s
    on a CPU for the digits."""
    if data.train_labels is None:
        raise ValueError(f"the data set {data.name!r} has no labels to train the metrics' classifier on")
    with torch.random.fork_rng(devices=[]):  # the caller's training RNG stream is untouched
        torch.manual_seed(seed)
        x, y = data.train.cpu(), data.train_labels.cpu()
        clf = LabelClassifier(data.dim, int(y.max()) + 1)
        opt = torch.optim.Adam(clf.parameters(), lr=3e-3, weight_decay=1e-4)
        for _ in range(steps):
            loss = nn.functional.cross_entropy(clf(x + 0.1 * torch.randn_like(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return clf.eval()


def _cache_name(data: Dataset) -> str:
    if data.name == "digits":
        return "digits_classifier_v1.pt"
    h = hashlib.sha1()
    for t in (data.train, data.train_labels):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return f"classifier_v1_{h.hexdigest()[:20]}.pt"


def image_classifier(data: Dataset, *, cache: bool = True) -> Optional[LabelClassifier]:
    """The classifier of an image set with labels (None without labels), trained once on its
    training split and cached under $GPFLOW_CACHE (or ~/.cache), keyed by the data's contents."""
    if data.train_labels is None:
        return None
    path = _cache_dir() / _cache_name(data)
    if cache and path.exists():
        with torch.random.fork_rng(devices=[]):
            clf = LabelClassifier(data.dim, int(data.train_labels.max()) + 1)
        try:
            clf.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return clf.eval()
        except (RuntimeError, OSError, EOFError):
            pass  # a stale or broken cache file is retrained below
    clf = train_classifier(data)
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(clf.state_dict(), tmp)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache only costs retraining next time
    return clf


class FeatureNet:
    """The user's feature network for FD and KID: a TorchScript module (``torch.jit.save``) mapping
    images (N, C, H, W) in [−1, 1] to features (N, F). It has no classes, so no coverage."""

    n_classes = None

    def __init__(self, path, image_shape):
        self.path, self.shape = str(path), tuple(image_shape) if len(image_shape) == 3 else (1,) + tuple(image_shape)
        try:
            self.module = torch.jit.load(self.path, map_location="cpu").eval()
        except (RuntimeError, ValueError, OSError) as e:
            raise ValueError(f"features={self.path}: not a TorchScript file ({str(e).splitlines()[0][:160]})") from None

    def features(self, x: Tensor) -> Tensor:
        out = self.module(x.reshape((len(x),) + self.shape))
        if not isinstance(out, Tensor) or out.dim() < 2 or out.shape[0] != len(x):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"features={self.path} must map (N, C, H, W) images to (N, F) features; "
                             f"for N = {len(x)} it returned {got}")
        return out.flatten(1).double()


def feature_space(data: Dataset, features: str = ""):
    """What FD/KID are measured in: the standard FID's InceptionV3 (``inception:PATH``, ``inception.py``),
    else the user's feature network, else the labels' classifier, else None."""
    if not data.is_image:
        if features:
            raise ValueError(f"option features applies to image data; {data.name} holds points")
        return None
    if features.startswith("inception:"):
        from .inception import PREFIX, InceptionFeatures

        return InceptionFeatures(features[len(PREFIX):], data.image_shape)
    if features:
        net = FeatureNet(features, data.image_shape)
        with torch.no_grad():
            net.features(data.test[:2].cpu())  # fail now, not after training
        return net
    return image_classifier(data)


def kid(fx: Tensor, fy: Tensor) -> float:
    """Kernel Inception Distance form (Bińkowski et al. 2018): the unbiased MMD² with the cubic
    polynomial kernel k(a, b) = (aᵀb / d + 1)³ between two feature sets (float64). Computed on all
    the features at once, not averaged over subsets of 1000 as their reference code does."""
    fx, fy = fx.double(), fy.double()
    d, m, n = fx.shape[1], len(fx), len(fy)
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3
    kxx, kyy = k(fx, fx), k(fy, fy)
    return float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
                 - 2.0 * k(fx, fy).mean())


def class_coverage(labels: Tensor, n_classes: int = 10, min_share: float = 0.5) -> float:
    """Fraction of classes that receive at least ``min_share`` × their uniform share (1/n_classes) of samples.

    1.0 means every class is generated; mode collapse shows as a lower value.
    """
    counts = torch.bincount(labels.flatten().cpu(), minlength=n_classes).double()
    share = counts / counts.sum()
    return float((share >= min_share / n_classes).double().mean())


def evaluate(x: Tensor, data: Dataset, classifier: Optional[LabelClassifier] = None,
             par: Optional[Parallel] = None) -> Dict[str, float]:
    """The metrics of the data set's kind: MMD² and energy distance (points); on images MMD², and with
    labels the Fréchet distance, KID and class coverage in the feature space of a classifier trained on them.

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
    clf = classifier if classifier is not None else image_classifier(data)
    if clf is None:  # images without labels: no feature space to compare in
        return out
    x, y = (par.gather_rows(x).cpu(), y.cpu()) if sharded else (x, y)
    with torch.no_grad():
        xc = x.clamp(-1, 1)
        fx, fy = clf.features(xc), clf.features(y)
        out["fd"] = frechet_distance(fx, fy)
        out["kid"] = kid(fx, fy)
        if clf.n_classes is not None:
            out["coverage"] = class_coverage(clf(xc).argmax(1), clf.n_classes)
    return out

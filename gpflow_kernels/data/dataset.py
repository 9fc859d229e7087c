"""The container every data source fills: training and held-out points, image shape, labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch

Tensor = torch.Tensor


def split(n: int, seed: int) -> Tuple[Tensor, Tensor]:
    """(held-out, training) row numbers of a user's file of n rows: shuffled by ``seed``, the first
    max(2, min(n // 5, 2000)) held out (our choice). Loaded and streamed files share it."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(2, min(n // 5, 2000))
    return perm[:n_test], perm[n_test:]


@dataclass
class Dataset:
    """train: (N, D) points the methods learn from; test: (M, D) held-out points for the metrics.

    ``image_shape`` is (H, W) for image sets (points are flattened images), None for 2-D sets;
    ``train_labels``/``test_labels`` are the digit classes, None for 2-D sets. ``levels``: the number
    of equally spaced values a pixel takes in [−1, 1] (17 for the digits' 0..16), used to dequantise
    for bits/dim; None for continuous data.

    ``stream``: for data read as it is drawn (``stream.py``), the :class:`~.stream.Stream` of every
    training row; ``train`` then holds only a random subset of them in memory. None when the whole
    training set is in ``train``.
    """

    name: str
    train: Tensor
    test: Tensor
    image_shape: Optional[Tuple[int, int]] = None
    train_labels: Optional[Tensor] = None
    test_labels: Optional[Tensor] = None
    levels: Optional[int] = None
    stream: Optional[Any] = None

    @property
    def is_image(self) -> bool:
        return self.image_shape is not None

    @property
    def dim(self) -> int:
        return self.train.shape[1]

    def to(self, device) -> "Dataset":
        move = lambda t: None if t is None else t.to(device)
        return Dataset(self.name, move(self.train), move(self.test), self.image_shape,
                       move(self.train_labels), move(self.test_labels), self.levels, self.stream)

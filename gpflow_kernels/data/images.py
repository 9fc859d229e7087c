"""Image data from arrays and MNIST-format IDX files; resizing to ``image_size``.

Sources (``files.load_points`` routes them here):
- an array of shape (N, H, W) or (N, C, H, W), C ∈ {1, 3}, in a ``.npy``/``.npz``/``.pt`` file;
- an IDX file ``*-images-idx3-ubyte`` (gzipped or not), with its labels from the
  ``*-labels-idx1-ubyte`` file beside it when there is one (labels feed the metrics' classifier).
  IDX is a 4-byte magic (0, 0, type, rank), the sizes as big-endian int32, then the values; we
  read it with numpy (torchvision, whose MNIST reader does the same, does not import on this
  project's CPU-only torch build: its wheels need CUDA libraries).

Values are mapped to [−1, 1]: uint8 (and integer arrays within 0..255) as x / 127.5 − 1 with
256 levels (``Dataset.levels``, for bits/dim); floats already in [0, 1] as 2x − 1, or kept when
already in [−1, 1] (then no levels). Anything else is an error naming the file and the range.
Images are stored flattened (N, C·H·W) with ``image_shape`` = (H, W) for one channel, else (C, H, W).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import Dataset, split

Tensor = torch.Tensor

#: IDX type byte -> numpy big-endian dtype.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """The array in an IDX file (gzipped when the name ends in .gz); ValueError naming the problem."""
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path} cannot be read as IDX ({type(e).__name__}: {e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'none'}; "
                         "expected 0000 then a type byte and the rank)")
    rank = raw[3]
    if len(raw) < 4 + 4 * rank:
        raise ValueError(f"{path} is truncated: its header names {rank} sizes")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">i4", count=rank, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    need = int(np.prod(shape)) * dtype.itemsize
    body = raw[4 + 4 * rank:]
    if len(body) != need:
        raise ValueError(f"{path} holds {len(body)} bytes of values; its header {shape} needs {need}")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def labels_beside(path: Path) -> Optional[Path]:
    """The IDX labels file that goes with an images file, if it exists."""
    for a, b in (("images-idx3", "labels-idx1"), ("images.idx3", "labels.idx1"), ("-idx3-", "-idx1-"), (".idx3-", ".idx1-")):
        if a in path.name:
            cand = path.with_name(path.name.replace(a, b))
            if cand.exists():
                return cand
    return None


def unit_mapping(dtype: torch.dtype, lo, hi, path) -> Tuple[str, Optional[int]]:
    """How pixels of ``dtype`` spanning [lo, hi] map to [−1, 1]: ("levels", 256) for uint8 and
    integers within 0..255, ("unit", None) for floats in [0, 1], ("keep", None) for floats already in
    [−1, 1]; ValueError naming the file and the range otherwise. (lo, hi are unused for uint8.)"""
    if dtype == torch.uint8:
        return "levels", 256
    if not dtype.is_floating_point:
        if lo < 0 or hi > 255:
            raise ValueError(f"{path} holds integer pixels in [{int(lo)}, {int(hi)}]; expected 0..255")
        return "levels", 256
    if lo >= 0.0 and hi <= 1.0:
        return "unit", None
    if lo >= -1.0 and hi <= 1.0:
        return "keep", None
    raise ValueError(f"{path} holds float pixels in [{lo:.4g}, {hi:.4g}]; expected [0, 1] or [-1, 1] "
                     "(or uint8 0..255)")


def apply_mapping(t: Tensor, how: str) -> Tensor:
    """``t`` as float32 in [−1, 1] by the mapping ``unit_mapping`` chose."""
    x = t.to(torch.float32)
    if how == "levels":
        return x / 127.5 - 1.0
    return 2.0 * x - 1.0 if how == "unit" else x


def to_unit_range(t: Tensor, path) -> Tuple[Tensor, Optional[int]]:
    """(images as float32 in [−1, 1], number of levels or None); see the module docstring."""
    lo = hi = 0
    if t.dtype != torch.uint8 and not t.is_floating_point():
        lo, hi = int(t.min()), int(t.max())
    elif t.is_floating_point():
        x = t.to(torch.float32)
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            raise ValueError(f"{path} holds {int(bad.sum())} NaN or infinite pixel values (the first in image "
                             f"{int(bad.flatten(1).any(1).nonzero()[0])})")
        lo, hi = float(x.min()), float(x.max())
    how, levels = unit_mapping(t.dtype, lo, hi, path)
    return apply_mapping(t, how), levels


def nchw_shape(shape, path) -> Tuple[int, int, int, int]:
    """(N, H, W) or (N, C, H, W) with C ∈ {1, 3} -> (N, C, H, W); ValueError naming the file otherwise."""
    shape = tuple(int(v) for v in shape)
    if len(shape) == 3:
        shape = (shape[0], 1) + shape[1:]
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise ValueError(f"{path} holds an array of shape {shape}; images must be "
                         "(N, H, W) or (N, C, H, W) with C = 1 or 3 channels")
    if min(shape[2:]) < 2:
        raise ValueError(f"{path} holds images of {shape[2]}×{shape[3]} pixels; at least 2×2 are needed")
    return shape


def as_nchw(t: Tensor, path) -> Tensor:
    """(N, H, W) or (N, C, H, W) with C ∈ {1, 3} -> (N, C, H, W)."""
    return t.reshape(nchw_shape(t.shape, path))


def image_shape_of(c: int, h: int, w: int):
    return (h, w) if c == 1 else (c, h, w)


def resized_hw(h: int, w: int, size: int):
    """The (height, width) the shorter side scaled to ``size`` gives: the longer side truncated,
    int(size · long / short), as torchvision computes it."""
    return (size, int(size * w / h)) if h <= w else (int(size * h / w), size)


def resize_center_crop(x: Tensor, size: int) -> Tensor:
    """(N, C, H, W) in [−1, 1] -> (N, C, size, size): the shorter side scaled to ``size`` (bilinear,
    antialiased when shrinking, as torchvision's Resize on tensors), then the centre cropped."""
    h, w = x.shape[-2:]
    s = size / min(h, w)
    nh, nw = resized_hw(h, w, size)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=s < 1).clamp(-1, 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top:top + size, left:left + size]


def resized(ds: Dataset, size: int) -> Dataset:
    """The image set ``ds`` at size×size (resize + centre crop); pixels are no longer on the original
    levels after interpolation, so ``levels`` is kept only when nothing changed."""
    if not ds.is_image:
        raise ValueError(f"option image_size applies to image data; {ds.name} holds points")
    shape = ds.image_shape if len(ds.image_shape) == 3 else (1,) + tuple(ds.image_shape)
    if tuple(shape[1:]) == (size, size):
        return ds
    c = shape[0]
    go = lambda x: resize_center_crop(x.reshape((-1,) + tuple(shape)), size).reshape(len(x), -1).contiguous()
    return Dataset(ds.name, go(ds.train), go(ds.test), image_shape_of(c, size, size), ds.train_labels,
                   ds.test_labels, None)


def check_images(path, n: int, labels: Optional[Tensor], min_rows: int) -> None:
    """At least ``min_rows`` images, and labels (when given) one whole number >= 0 per image."""
    if n < min_rows:
        raise ValueError(f"{path} holds {n} images; at least {min_rows} are needed (2 are held out)")
    if labels is not None:
        if labels.shape != (n,):
            raise ValueError(f"{path}: labels of shape {tuple(labels.shape)} for {n} images; expected ({n},)")
        if labels.dtype == torch.bool or labels.is_complex() or not bool((labels == labels.round()).all()) \
                or bool((labels < 0).any()):
            raise ValueError(f"{path}: labels must be whole numbers >= 0 (class indices)")


def image_dataset(path, images: Tensor, labels: Optional[Tensor], seed: int, min_rows: int) -> Dataset:
    """An image Dataset from (N, H, W) / (N, C, H, W) values, split like point files."""
    x = as_nchw(images, path)
    check_images(path, x.shape[0], labels, min_rows)
    x, levels = to_unit_range(x, path)
    n, c, h, w = x.shape
    flat = x.reshape(n, c * h * w)
    te, tr = split(n, seed)
    lab = (lambda idx: labels[idx].to(torch.long)) if labels is not None else (lambda idx: None)
    return Dataset(str(path), flat[tr].contiguous(), flat[te].contiguous(), image_shape_of(c, h, w),
                   lab(tr), lab(te), levels)


def load_idx(path: Path, seed: int, min_rows: int) -> Dataset:
    images = torch.from_numpy(read_idx(path).copy())
    lab_path = labels_beside(path)
    labels = None
    if lab_path is not None:
        lab = read_idx(lab_path)
        if lab.ndim != 1:
            raise ValueError(f"{lab_path} holds an array of shape {lab.shape}; IDX labels are 1-d")
        if len(lab) != len(images):
            raise ValueError(f"{lab_path} holds {len(lab)} labels for the {len(images)} images of {path.name}")
        labels = torch.from_numpy(lab.astype(np.int64))
    return image_dataset(path, images, labels, seed, min_rows)

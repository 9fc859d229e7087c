"""Points from the user's files: ``.npy``, ``.npz``, ``.pt``/``.pth`` and ``.csv`` holding (N, D) numbers.

Arrays of rank 3 or 4 are images and IDX files are MNIST-format images: both go to ``images.py``;
folders of image files go to ``folder.py``.

The rows are shuffled with the run's seed and split: the last ``n_test = min(N // 5, 2000)`` rows are
held out for the metrics (at least 2), the rest are the training set (our choice, stated in the
README). Values are used as given (float32): the methods' default options (bandwidths, step
sizes, σ ranges) assume data of roughly unit scale, so standardise far larger or smaller data first.
Every problem is a ``ValueError`` naming the file and what is wrong.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from .dataset import Dataset, split
from .paths import check, is_idx

#: Keys tried, in order, in a ``.npz`` or a ``.pt`` dictionary holding several arrays.
KEYS = ("x", "data", "points", "images", "X", "arr_0")
#: Keys of image labels in the same dictionary (used for the metrics' classifier).
LABEL_KEYS = ("labels", "y", "targets")
#: Fewest rows a file may hold: two held-out points for the unbiased MMD², two to train on.
MIN_ROWS = 4


def _pick(mapping, path: Path):
    keys = [k for k in mapping.keys() if k not in LABEL_KEYS]
    if len(keys) == 1:
        return mapping[keys[0]]
    for k in KEYS:
        if k in mapping:
            return mapping[k]
    raise ValueError(f"{path} holds several arrays {keys} and none is named one of {list(KEYS)}; "
                     "save the points under one of those names or alone")


def _labels(mapping):
    for k in LABEL_KEYS:
        if k in mapping:
            return torch.as_tensor(mapping[k])
    return None


def _unreadable(path: Path, suffix: str, e: Exception) -> ValueError:
    return ValueError(f"{path} cannot be read as {suffix} ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200] if str(e) else ''})")


def tensor_in(obj, path: Path):
    """(the tensor, labels or None) of what torch.load returned: a tensor, or a dictionary of them."""
    labels = None
    if isinstance(obj, dict):
        obj, labels = _pick(obj, path), _labels(obj)
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a tensor of points")
    return obj, labels


def real_dtype(dtype, path: Path) -> torch.dtype:
    """The torch dtype of a numpy or torch dtype of real numbers; ValueError naming the file otherwise."""
    if isinstance(dtype, np.dtype):
        if dtype.kind not in "fiu" or dtype.itemsize > 8:  # strings, objects, booleans, complex numbers
            raise ValueError(f"{path} holds {dtype} values; expected real numbers")
        dtype = torch.from_numpy(np.zeros(0, dtype=dtype.newbyteorder("="))).dtype
    if dtype == torch.bool or dtype.is_complex or not (dtype.is_floating_point or dtype in
                                                       (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{path} holds {dtype} values; expected real numbers")
    return dtype


def check_points_shape(path: Path, shape) -> None:
    """(N, D) with N >= MIN_ROWS and D >= 1; ValueError naming the file otherwise."""
    if len(shape) != 2:
        raise ValueError(f"{path} holds an array of shape {tuple(shape)}; expected (N, D) points or "
                         "(N, H, W) / (N, C, H, W) images")
    if shape[0] < MIN_ROWS or shape[1] == 0:
        raise ValueError(f"{path} holds {shape[0]} points of dimension {shape[1]}; at least {MIN_ROWS} points "
                         "of dimension >= 1 are needed (2 are held out for the metrics)")


def _read(path: Path):
    """(the array, labels stored beside it in the same .npz / .pt dictionary or None)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if not z.files:
                    raise ValueError(f"{path} holds no arrays")
                arrays = {k: z[k] for k in z.files}
                return _pick(arrays, path), _labels(arrays)
        if suffix in (".pt", ".pth"):
            return tensor_in(torch.load(path, map_location="cpu", weights_only=True), path)
        return _read_csv(path), None
    except ValueError as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"{path} cannot be read as {suffix}: {str(e).splitlines()[0][:200]}") from None
    except (OSError, EOFError, zipfile.BadZipFile, RuntimeError, Exception) as e:  # garbage or truncated
        raise _unreadable(path, suffix, e) from None


def _read_csv(path: Path):
    with open(path, encoding="utf-8", errors="strict") as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    if not lines:
        raise ValueError(f"{path} is empty")
    rows = []
    for i, ln in enumerate(lines):
        cells = [c.strip() for c in ln.split(",")]
        try:
            rows.append([float(c) for c in cells])
        except ValueError:
            if i == 0:  # a header line
                continue
            raise ValueError(f"{path}, line {i + 1}: not all numbers: {ln[:80]!r}") from None
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise ValueError(f"{path}: rows have different numbers of columns {sorted(widths)}")
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), -1 if rows else 0)


def load_points(path, *, seed: int = 0, image_size=None, stream: str = "off", stream_subset: int = 10_000) -> Dataset:
    """The (N, D) points in the file ``path``, split into training and held-out rows (see module doc);
    images (rank-3/4 arrays, IDX files) as an image Dataset (``images.py``); a folder of image files
    through Pillow/torchvision (``folder.py``), each image resized to ``image_size`` when it is given.
    With ``stream`` "on" (or "auto" and a training set too large for memory) the training rows stay
    in the file and are read as they are drawn (``stream.py``; images then resized as they are read)."""
    path = check(str(path))
    from .stream import MODES, open_stream

    if stream not in MODES:
        raise ValueError(f"stream must be one of {', '.join(MODES)}, got {stream!r}")
    streamed = open_stream(path, seed, MIN_ROWS, image_size, stream, stream_subset)
    if streamed is not None:
        return streamed
    if path.is_dir():
        from .folder import load_folder

        return load_folder(path, seed, MIN_ROWS, image_size)
    if is_idx(path):
        from .images import load_idx

        return load_idx(path, seed, MIN_ROWS)
    raw, labels = _read(path)
    if not isinstance(raw, torch.Tensor):
        raw = np.asarray(raw)
        real_dtype(raw.dtype, path)
        raw = torch.from_numpy(raw)
    t = raw
    real_dtype(t.dtype, path)
    if t.dim() in (3, 4):
        from .images import image_dataset

        return image_dataset(path, t, labels, seed, MIN_ROWS)
    check_points_shape(path, t.shape)
    x = t.to(torch.float32)
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        row = int(bad.any(1).nonzero()[0])
        raise ValueError(f"{path} holds {int(bad.sum())} NaN or infinite values (the first in row {row}); "
                         "remove or impute them")
    if t.is_floating_point() and bool(torch.isfinite(t).all()) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{path}: values overflow float32")
    te, tr = split(len(x), seed)
    return Dataset(str(path), x[tr].contiguous(), x[te].contiguous())

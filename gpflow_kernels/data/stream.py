"""Training rows read from the file as minibatches are drawn: data larger than memory.

With the option ``stream=on`` (or ``auto``, when the training set as float32 would take more than a
quarter of the memory the system reports available), :func:`open_stream` does not read the file:
- ``.npy`` files are mapped with ``numpy.load(mmap_mode="r")``, ``.pt``/``.pth`` tensors with
  ``torch.load(mmap=True)`` (the zip format torch has written since 1.6), uncompressed IDX files
  with ``numpy.memmap``; a folder of images is listed and its headers read (``folder.py``), each
  image decoded when it is drawn. ``.npz``, ``.csv`` and gzipped IDX files cannot be read by row:
  ``stream=on`` refuses them (save the array with ``numpy.save``), ``auto`` loads them whole.
- The rows are split exactly as a loaded file is (same permutation, same held-out rows), and the
  file's values are checked in one sequential pass in chunks (NaN/inf, the pixel range that fixes
  the mapping to [−1, 1]), so bad data still fail before anything is written.
- The held-out rows (at most 2 000) and a random subset of ``stream_subset`` training rows are read
  into memory: the kernel methods' reference points (DiffFlow's and Score GAN's data score, the MMD
  flows' and guidance's witness), the data statistics (σ_data) and the metrics' classifier use that
  subset (our choice: those use every training point on every step, which does not scale past
  memory anyway). Minibatches come from every training row.

:class:`Batches` draws minibatches through a ``torch.utils.data.DataLoader``: a sampler yields the
row numbers of batch k from a generator seeded by (seed, k), with replacement as the in-memory path
draws them, worker processes read and convert them (one read per batch, rows in file order), and
pinned memory feeds a CUDA device. The k-th batch depends only on (seed, k, the rows), so a resumed
run (the checkpoint keeps k) repeats an uninterrupted one exactly, whatever the number of workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from .dataset import Dataset, split

Tensor = torch.Tensor

#: Rows per chunk of the checking pass, by bytes (so wide rows take fewer per chunk).
SCAN_BYTES = 64 << 20
#: ``auto`` streams when the float32 training set exceeds this fraction of the available memory.
AUTO_FRACTION = 0.25
MODES = ("auto", "on", "off")


class DataError(ValueError):
    """A row that cannot be read while training (an undecodable image, a file changed on disk)."""


def available_memory() -> int:
    """Bytes of memory the system reports available (MemAvailable on Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


# ----- rows -------------------------------------------------------------------------------------


class ArrayRows(torch.utils.data.Dataset):
    """Rows of a mapped array as float32: ``rows[[i, j, ...]]`` -> (B, D). Images: (N, [C,] H, W)
    values mapped to [−1, 1] by ``how`` (``images.unit_mapping``), resized to ``size`` when given,
    flattened; points: (N, D) values as float32."""

    def __init__(self, array, path: Path, image: Optional[Tuple[int, int, int]] = None, how: str = "keep",
                 size: Optional[int] = None):
        self.array, self.path, self.image, self.how, self.size = array, path, image, how, size

    def __len__(self) -> int:
        return len(self.array)

    def _raw(self, idx: np.ndarray) -> Tensor:
        order = np.argsort(idx, kind="stable")  # one pass through the file, in its order
        try:
            if isinstance(self.array, torch.Tensor):
                got = self.array[torch.from_numpy(idx[order])]
            else:
                part = self.array[idx[order]]
                got = torch.from_numpy(np.ascontiguousarray(part, dtype=part.dtype.newbyteorder("=")))
        except (OSError, ValueError, RuntimeError, IndexError) as e:
            raise DataError(f"{self.path}: rows cannot be read ({type(e).__name__}: {str(e)[:160]})") from None
        out = torch.empty_like(got)
        out[torch.from_numpy(order)] = got
        return out

    def __getitem__(self, idx) -> Tensor:
        raw = self._raw(np.asarray(idx, dtype=np.int64).reshape(-1))
        if self.image is None:
            return raw.to(torch.float32)
        from .images import apply_mapping, resize_center_crop

        x = apply_mapping(raw, self.how).reshape((len(raw),) + self.image)
        if self.size is not None:
            x = resize_center_crop(x, self.size)
        return x.reshape(len(raw), -1).contiguous()


class FolderRows(torch.utils.data.Dataset):
    """Images of a folder, decoded when drawn: ``rows[[i, ...]]`` -> (B, C·H·W) in [−1, 1]; grey
    images repeated to RGB when ``rgb`` (the folder mixes modes); every image must decode to
    ``shape`` (C, H, W)."""

    def __init__(self, files: List[Path], size: Optional[int], rgb: bool, shape: Tuple[int, int, int]):
        self.files, self.size, self.rgb, self.shape = files, size, rgb, shape

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx) -> Tensor:
        from .folder import _Decoded

        dec = _Decoded(self.files, self.size)
        imgs = []
        for i in np.asarray(idx, dtype=np.int64).reshape(-1):
            try:
                im = dec[int(i)]
            except ValueError as e:
                raise DataError(str(e)) from None
            if self.rgb and im.shape[0] == 1:
                im = im.expand(3, -1, -1)
            if tuple(im.shape) != self.shape:
                raise DataError(f"{self.files[i]} decodes to {tuple(im.shape)} (C, H, W), not the {self.shape} its "
                                "header and the other images have; was it changed while training?")
            imgs.append(im)
        return (torch.stack(imgs).to(torch.float32) / 127.5 - 1.0).reshape(len(imgs), -1)


@dataclass
class Stream:
    """rows: every row of the file (``rows[list]`` -> (B, D) float32); indices: (N_train,) the file rows
    that form the training set."""

    rows: torch.utils.data.Dataset
    indices: Tensor


# ----- minibatches ------------------------------------------------------------------------------


class SeededBatches(torch.utils.data.Sampler):
    """Row numbers of batch k = start, start + 1, ...: ``batch`` draws with replacement from
    ``indices``, by numpy's generator seeded with (seed, k). Endless."""

    def __init__(self, indices: Tensor, batch: int, seed: int, start: int = 0):
        self.indices, self.batch, self.seed, self.start = indices.numpy(), batch, seed, start

    def rows_of(self, k: int) -> np.ndarray:
        pos = np.random.default_rng([self.seed, k]).integers(0, len(self.indices), self.batch)
        return self.indices[pos]

    def __iter__(self):
        k = self.start
        while True:
            yield self.rows_of(k)
            k += 1


class Batches:
    """Minibatches of ``batch`` training rows from a Stream, on ``device`` (see the module docstring).

    ``next()`` returns batch k and counts it; ``drawn`` (in checkpoints) sets where the next run starts.
    ``indices`` are the rows this process draws from (its shard under torchrun); ``workers`` reading
    processes (0: read in this process).
    """

    def __init__(self, stream: Stream, indices: Tensor, batch: int, seed: int, device: torch.device, workers: int = 0):
        if len(indices) == 0:
            raise ValueError("this process's share of the streamed training rows is empty")
        self.stream, self.indices, self.batch, self.seed, self.workers = stream, indices, batch, seed, workers
        self.device = torch.device(device)
        self.drawn = 0
        self._it = None
        self._loader = None

    def _start(self):
        w = self.workers
        sampler = SeededBatches(self.indices, self.batch, self.seed, self.drawn)
        self._loader = torch.utils.data.DataLoader(
            self.stream.rows, batch_size=None, sampler=sampler, num_workers=w,
            pin_memory=self.device.type == "cuda", prefetch_factor=4 if w else None, persistent_workers=w > 0,
            generator=torch.Generator())  # its own: a loader draws a base seed, which must not move the run's stream
        self._it = iter(self._loader)

    def next(self) -> Tensor:
        if self._it is None:
            self._start()
        try:
            x = next(self._it)
        except Exception as e:
            raise _our_line(e) from None
        self.drawn += 1
        return x.to(self.device, non_blocking=True)

    def set_drawn(self, k: int) -> None:
        """Continue from batch ``k`` (a resumed run)."""
        self.close()
        self.drawn = int(k)

    def close(self) -> None:
        """Stop the worker processes (a later ``next`` starts them again)."""
        it, self._it, self._loader = self._it, None, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()


def _our_line(e: Exception) -> Exception:
    """A worker's DataError comes back with the worker's traceback in its message: our line alone."""
    text = str(e).strip()
    if "\n" not in text:
        return e
    line = next((ln for ln in reversed(text.splitlines()) if ln.startswith(_PREFIXES)), None)
    return e if line is None else DataError(line.split(": ", 1)[1])


_PREFIXES = ("gpflow_kernels.data.stream.DataError: ", "DataError: ")


def read_rows(rows, idx: Tensor) -> Tensor:
    """rows[idx] (B, D) at start-up; a folder's many images are decoded by DataLoader workers in chunks
    (as ``folder.py`` decodes a folder it loads). A DataError becomes the ValueError of a file that
    cannot be used."""
    from .folder import WORKERS_FROM

    idx = idx.numpy()
    chunk = 256
    workers = min(8, os.cpu_count() or 1)
    try:
        if not isinstance(rows, FolderRows) or len(idx) < WORKERS_FROM or workers < 2:
            return rows[idx]
        parts = [idx[a:a + chunk] for a in range(0, len(idx), chunk)]
        loader = torch.utils.data.DataLoader(rows, batch_size=None, sampler=parts, num_workers=workers,
                                             generator=torch.Generator())
        return torch.cat(list(loader))
    except Exception as e:
        err = _our_line(e)
        if isinstance(err, DataError):
            raise ValueError(str(err)) from None
        raise


# ----- opening a file for streaming -------------------------------------------------------------


def _not_streamable(path: Path, why: str) -> ValueError:
    return ValueError(f"{path} cannot be streamed ({why}); save the array with numpy.save as .npy (read by row "
                      "through a memory map), or set stream=off to load it whole")


def _mapped(path: Path):
    """(array read by row, labels or None) of ``path``, or a ValueError from _not_streamable."""
    from .paths import is_idx

    suffix = path.suffix.lower()
    name = path.name.lower()
    if is_idx(path):
        if name.endswith(".gz"):
            raise _not_streamable(path, "a gzipped IDX file is read whole; gunzip it")
        return _idx_memmap(path), _idx_labels(path)
    if suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as e:
            from .files import _unreadable

            raise _unreadable(path, ".npy", e) from None
        return arr, None
    if suffix in (".pt", ".pth"):
        from .files import _unreadable, tensor_in

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            if isinstance(e, RuntimeError) and ("mmap" in str(e) or "zip" in str(e)):
                raise _not_streamable(path, "written in torch's legacy format, which cannot be mapped") from None
            raise _unreadable(path, suffix, e) from None
        return tensor_in(obj, path)
    raise _not_streamable(path, f"{suffix} files are read whole")


def _idx_memmap(path: Path) -> np.ndarray:
    from .images import _IDX_TYPES

    with open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_TYPES or head[3] == 0:
            raise ValueError(f"{path} is not an IDX file (bad magic number {head.hex() or 'none'}; "
                             "expected 0000 then a type byte and the rank)")
        sizes = f.read(4 * head[3])
    if len(sizes) < 4 * head[3]:
        raise ValueError(f"{path} is truncated: its header names {head[3]} sizes")
    shape = tuple(int(v) for v in np.frombuffer(sizes, dtype=">i4"))
    dtype = np.dtype(_IDX_TYPES[head[2]])
    offset = 4 + 4 * head[3]
    need = int(np.prod(shape)) * dtype.itemsize
    have = path.stat().st_size - offset
    if have != need:
        raise ValueError(f"{path} holds {have} bytes of values; its header {shape} needs {need}")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _idx_labels(path: Path) -> Optional[Tensor]:
    from .images import labels_beside, read_idx

    lab_path = labels_beside(path)
    if lab_path is None:
        return None
    lab = read_idx(lab_path)
    if lab.ndim != 1:
        raise ValueError(f"{lab_path} holds an array of shape {lab.shape}; IDX labels are 1-d")
    return torch.from_numpy(lab.astype(np.int64))


def scan(arr, path: Path, *, points: bool) -> Tuple[float, float]:
    """(min, max) of every value, read in chunks of rows; ValueError naming the first row with a
    NaN/inf (or, for points, a value past float32)."""
    n = len(arr)
    row_bytes = max(1, int(np.prod(arr.shape[1:])) * arr.dtype.itemsize) if len(arr.shape) > 1 else 8
    step = max(1, SCAN_BYTES // row_bytes)
    lo, hi, bad_count, first_bad = np.inf, -np.inf, 0, None
    what = "values" if points else "pixel values"
    for a in range(0, n, step):
        part = arr[a:a + step]
        t = part if isinstance(part, torch.Tensor) else torch.from_numpy(
            np.array(part, dtype=part.dtype.newbyteorder("=")))  # a copy: mapped pages are read-only
        if t.is_floating_point():
            f = t.reshape(len(t), -1)
            bad = ~torch.isfinite(f)
            if points and not bool(bad.any()):
                bad = ~torch.isfinite(f.to(torch.float32))
                if bool(bad.any()):
                    raise ValueError(f"{path}: values overflow float32")
            if bool(bad.any()):
                bad_count += int(bad.sum())
                if first_bad is None:
                    first_bad = a + int(bad.any(1).nonzero()[0])
                continue
        if t.numel():
            lo, hi = min(lo, float(t.min())), max(hi, float(t.max()))
    if first_bad is not None:
        raise ValueError(f"{path} holds {bad_count} NaN or infinite {what} (the first in {'row' if points else 'image'} "
                         f"{first_bad})" + ("; remove or impute them" if points else ""))
    return lo, hi


def open_stream(path: Path, seed: int, min_rows: int, image_size: Optional[int], mode: str,
                subset: int) -> Optional[Dataset]:
    """The Dataset of ``path`` with its training rows streamed, or None when ``mode`` is "auto" and
    they fit in memory (or the format cannot be streamed): the caller then loads the file."""
    if mode == "off":
        return None
    if path.is_dir():
        return _open_folder(path, seed, min_rows, image_size, mode, subset)
    try:
        arr, labels = _mapped(path)
    except ValueError:
        if mode == "auto":  # unreadable or not by row: loading it whole says what is wrong
            return None
        raise
    shape = tuple(arr.shape)
    if mode == "auto":
        if len(shape) not in (2, 3, 4):
            return None
        width = (shape[-3] if len(shape) == 4 else 1) * image_size ** 2 if image_size and len(shape) > 2 \
            else int(np.prod(shape[1:]))
        if shape[0] * width * 4 <= AUTO_FRACTION * available_memory():
            return None
    from .files import check_points_shape, real_dtype

    dtype = real_dtype(arr.dtype, path)
    if len(shape) in (3, 4):
        from .images import nchw_shape

        n, c, h, w = nchw_shape(shape, path)
        out_hw = (image_size, image_size) if image_size else (h, w)
    else:
        check_points_shape(path, shape)
        n = shape[0]
    if len(shape) == 2:
        scan(arr, path, points=True)
        rows = ArrayRows(arr, path)
        return _split(path, rows, n, labels, seed, subset, None, None)
    from .images import check_images, image_shape_of, unit_mapping

    check_images(path, n, labels, min_rows)
    lo = hi = 0
    if dtype != torch.uint8:
        lo, hi = scan(arr, path, points=False)
    how, levels = unit_mapping(dtype, lo, hi, path)
    size = image_size if image_size and (h, w) != (image_size, image_size) else None
    rows = ArrayRows(arr, path, (c, h, w), how, size)
    return _split(path, rows, n, labels, seed, subset, image_shape_of(c, *out_hw),
                  None if size else levels)


def _split(path, rows, n: int, labels, seed: int, subset: int, image_shape, levels) -> Dataset:
    """Held-out and subset rows read into memory, the training rows streamed; the split is the one
    a loaded file gets (``files.load_points``, ``images.image_dataset``)."""
    te, tr = split(n, seed)
    keep = tr[:subset]
    lab = (lambda idx: labels[idx].to(torch.long)) if labels is not None else (lambda idx: None)
    test, train = read_rows(rows, te), read_rows(rows, keep)
    return Dataset(str(path), train, test, image_shape, lab(keep), lab(te), levels,
                   stream=Stream(rows, tr.clone()))


def _open_folder(root: Path, seed, min_rows, image_size, mode, subset) -> Optional[Dataset]:
    from .folder import GREY_MODES, usable_images

    files, labels = usable_images(root, min_rows)
    from PIL import Image

    if mode == "auto":  # estimated from the first image's header: reading them all takes a while
        try:
            with Image.open(files[0]) as im:
                c, (w, h) = (1 if im.mode in GREY_MODES else 3), im.size
        except Exception:
            return None  # loading the folder names the file
        if len(files) * c * (image_size ** 2 if image_size else h * w) * 4 <= AUTO_FRACTION * available_memory():
            return None
    heads = []
    for f in files:  # headers only: PIL decodes the pixels later, when asked
        try:
            with Image.open(f) as im:
                heads.append((im.mode in GREY_MODES, im.size))
        except Exception as e:
            raise ValueError(f"{f} cannot be decoded as an image ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
    rgb = not all(g for g, _ in heads)
    c = 3 if rgb else 1
    if image_size:
        h = w = image_size
    else:
        sizes = sorted({s for _, s in heads})
        if len(sizes) > 1:
            (a, sa), (b, sb) = [next((f, s) for f, (_, s) in zip(files, heads) if s == want) for want in sizes[:2]]
            raise ValueError(f"{root} holds images of different sizes ({a.name}: {sa[1]}×{sa[0]}, {b.name}: "
                             f"{sb[1]}×{sb[0]}); give --set image_size=N to resize and centre-crop them to N×N")
        w, h = sizes[0]
    from .images import image_shape_of

    rows = FolderRows(files, image_size or None, rgb, (c, h, w))
    lab = None if labels is None else torch.tensor(labels, dtype=torch.long)
    return _split(root, rows, len(files), lab, seed, subset, image_shape_of(c, h, w), 256)

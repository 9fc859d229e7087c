"""Data for the methods: the embedded sets and the user's files (layer 3 machinery beside ``methods``).

- ``dataset.py``: :class:`Dataset`, what every source fills;
- ``embedded.py``: the 2-D sets and scikit-learn's 8×8 digits (nothing is downloaded);
- ``files.py``: points from ``.npy``/``.npz``/``.pt``/``.csv`` files; ``images.py``: images from
  rank-3/4 arrays and IDX files, and resizing; ``folder.py``: folders of PNG/JPEG files through
  torchvision where it imports (the ``[images]`` extra), else Pillow and torch; ``paths.py`` checks a ``--data`` value without torch;
- ``stream.py``: files larger than memory, read by row as minibatches are drawn (``stream``).

``load(name_or_path, seed=...)`` is the one entry point. Contents load on first use (no torch
at ``import gpflow_kernels.data``), so the command line can check ``--data`` before importing torch.
"""

from __future__ import annotations

__all__ = ["Dataset", "load", "load_points", "DATASETS"]


def load(name: str, *, seed: int = 0, image_size=None, stream: str = "off", stream_subset: int = 10_000,
         **sizes):
    """An embedded data set by name (``DATASETS``; ``n_train``/``n_test`` size the 2-D sets), or the
    points of a file or the images of a folder (see ``files.py``). ``image_size`` resizes a folder's
    images as they are decoded (other image sources are resized afterwards, ``images.resized``).
    ``stream`` ("off", "on", "auto") and ``stream_subset``: a file's training rows read as they are
    drawn (``stream.py``)."""
    from .paths import is_file_data

    if is_file_data(name):
        if sizes:
            raise ValueError(f"n_train/n_test size the embedded 2-D sets, not a file ({name})")
        from .files import load_points

        return load_points(name, seed=seed, image_size=image_size, stream=stream, stream_subset=stream_subset)
    if stream == "on":
        raise ValueError(f"stream=on reads a file by row; {name!r} is an embedded data set (always in memory)")
    from .embedded import load_embedded

    return load_embedded(name, seed=seed, **sizes)


def __getattr__(name):
    if name == "Dataset":
        from .dataset import Dataset

        return Dataset
    if name == "load_points":
        from .files import load_points

        return load_points
    if name == "DATASETS":
        from ..methods.options import DATA_NAMES

        return DATA_NAMES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""What ``--data`` may name, checked without torch (the command line checks it before importing torch).

A data set is one of the embedded names (``DATA_NAMES``) or a file: ``.npy``, ``.npz``,
``.pt``/``.pth`` (a tensor) or ``.csv`` (numbers) holding (N, D) points or (N, H, W) / (N, C, H, W)
images, or an MNIST-format ``*-images-idx3-ubyte`` file (gzipped or not), or a folder of image
files (``folder.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..methods.options import DATA_NAMES

#: File formats of arrays: (N, D) points or (N, [C,] H, W) images.
POINT_SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".csv")
#: How MNIST-format image files end (the labels file beside them ends in idx1-ubyte).
IDX_ENDINGS = ("-idx3-ubyte", "-idx3-ubyte.gz", ".idx3-ubyte", ".idx3-ubyte.gz")


def is_idx(path: Path) -> bool:
    return path.name.lower().endswith(IDX_ENDINGS)


def is_file_data(value: str) -> bool:
    """True when ``value`` names a file rather than an embedded data set."""
    return value not in DATA_NAMES


def check(value: str) -> Path:
    """The file ``value`` names, if it can be a data file; ValueError naming the problem otherwise."""
    names = ", ".join(DATA_NAMES)
    p = Path(value).expanduser()
    looks_like_path = os.sep in value or p.suffix != "" or p.exists()
    if not looks_like_path:
        raise ValueError(f"unknown data set {value!r}; choose one of {names}, or give a file of points or "
                         f"images ({', '.join(POINT_SUFFIXES)}, *-images-idx3-ubyte[.gz]) or a folder of images")
    if not p.exists():
        raise ValueError(f"--data {value}: no such file")
    if p.is_dir():
        if not os.access(p, os.R_OK | os.X_OK):
            raise ValueError(f"--data {value}: the folder is not readable (permissions)")
        return p
    if p.suffix.lower() not in POINT_SUFFIXES and not is_idx(p):
        raise ValueError(f"--data {value}: unsupported file type {p.suffix or '(none)'!r}; "
                         f"use one of {', '.join(POINT_SUFFIXES)} holding an (N, D) or (N, [C,] H, W) array, "
                         "or an *-images-idx3-ubyte[.gz] file")
    if not os.access(p, os.R_OK):
        raise ValueError(f"--data {value}: the file is not readable (permissions)")
    return p

"""What ``--data`` may name, checked without torch (the command line checks it before importing torch).

A data set is one of the embedded names (``DATA_NAMES``) or a file of points:
``.npy``, ``.npz``, ``.pt``/``.pth`` (a tensor) or ``.csv`` (numbers), holding an (N, D) array.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..methods.options import DATA_NAMES

#: File formats of point data (N, D).
POINT_SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".csv")


def is_file_data(value: str) -> bool:
    """True when ``value`` names a file rather than an embedded data set."""
    return value not in DATA_NAMES


def check(value: str) -> Path:
    """The file ``value`` names, if it can be a data file; ValueError naming the problem otherwise."""
    names = ", ".join(DATA_NAMES)
    p = Path(value).expanduser()
    looks_like_path = os.sep in value or p.suffix != "" or p.exists()
    if not looks_like_path:
        raise ValueError(f"unknown data set {value!r}; choose one of {names}, or give a file of points "
                         f"({', '.join(POINT_SUFFIXES)})")
    if not p.exists():
        raise ValueError(f"--data {value}: no such file")
    if p.is_dir():
        raise ValueError(f"--data {value} is a folder; folders of images are not supported yet (issue #15): "
                         f"give a file of points ({', '.join(POINT_SUFFIXES)})")
    if p.suffix.lower() not in POINT_SUFFIXES:
        raise ValueError(f"--data {value}: unsupported file type {p.suffix or '(none)'!r}; "
                         f"use one of {', '.join(POINT_SUFFIXES)} holding an (N, D) array")
    if not os.access(p, os.R_OK):
        raise ValueError(f"--data {value}: the file is not readable (permissions)")
    return p

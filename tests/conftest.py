import os

import torch

# The Triton kernels are tested on the CPU through Triton's interpreter when there is no GPU.
# It must be chosen before any @triton.jit function is created, hence here, first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest

from gpflow_kernels import reference


@pytest.fixture(params=["one_tile", "ragged_tiles"])
def tiles(request, monkeypatch):
    """Run a test with the default tiling and with tiny ragged tiles (many partial tiles)."""
    if request.param == "ragged_tiles":
        monkeypatch.setattr(reference, "TILE_ELEMS", 40)
        monkeypatch.setattr(reference, "COL_TILE", 7)
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def t64(a):
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)

import gzip
import os

# One torch thread per test process (xdist runs one process per core, see the README's test
# command): two OpenMP threads per process wait on each other whenever anything else holds a
# core, which once made the suite three times slower on a loaded 2-core machine. Set before torch
# is imported, so that the subprocesses the tests start (torchrun, the CLI) inherit it too; tests
# that exercise threading set their own count and restore it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The Triton kernels are tested on the CPU through Triton's interpreter when there is no GPU.
# It must be chosen before any @triton.jit function is created, hence here, first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    # On a GPU: one block shape per kernel variant instead of five to compile and time (the
    # tests check numbers, not speed; gpu_check.py checks the tuned kernels' accuracy).
    os.environ.setdefault("GPFLOW_TRITON_AUTOTUNE", "0")

import random
import re

import numpy as np
import pytest
from hypothesis import settings

# Hypothesis: derandomised in CI (CI=true, as .ci/run is started), so a property test either
# always passes or always fails on a given tree; local runs explore new examples. Either way a
# failure prints the blob that reproduces it (@reproduce_failure). HYPOTHESIS_PROFILE overrides.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))

from gpflow_kernels import reference


def _version(text):
    return tuple(int(p) for p in re.findall(r"\d+", text)[:2])


def _interpreter_problem():
    """Why the Triton tests cannot run through this Triton's interpreter, or None."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return None
    try:
        import triton
    except ImportError:
        return None  # the modules skip themselves
    if _version(triton.__version__) < (3, 7) and _version(np.__version__) >= (2, 4):
        return (f"triton {triton.__version__}'s interpreter fails under numpy {np.__version__} (it converts "
                "1-element arrays to Python scalars, an error since numpy 2.4): use triton >= 3.7 or numpy < 2.4")
    return None


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the tests marked slow (GPFLOW_SLOW_TESTS=1 does the same)")


def pytest_collection_modifyitems(config, items):
    why = _interpreter_problem()
    slow = config.getoption("--run-slow") or os.environ.get("GPFLOW_SLOW_TESTS") == "1"
    for item in items:
        if why and item.get_closest_marker("interpreter"):
            item.add_marker(pytest.mark.skip(reason=why))
        if not slow and item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.skip(reason="slow (minutes on 2 cores): run with --run-slow; "
                                                    "benchmarks/gpu_session.sh's tests stage does"))


@pytest.fixture(autouse=True)
def _seeded_global_generators():
    """Every test starts from the same global random state (Python, numpy, torch), whatever ran
    before it in this process: a draw a test forgot to seed is still the same draw every run."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


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


# ----- a 16-image IDX set (tests/test_data_images.py, tests/test_nets.py) -----------------------

def idx_bytes(arr: np.ndarray, code: int = 0x08, dtype=">u1") -> bytes:
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return head + arr.astype(dtype).tobytes()


def digit_images(n=16):
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:n] * 255 / 16).astype(np.uint8), d.target[:n].astype(np.uint8)


@pytest.fixture
def idx_set(tmp_path):
    x, y = digit_images()
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(idx_bytes(x))
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(idx_bytes(y))
    return tmp_path / "t10k-images-idx3-ubyte.gz", x, y

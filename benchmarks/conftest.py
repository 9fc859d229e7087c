"""pytest-benchmark set-up: benchmarks/ on sys.path, and the headline table by default.

``pytest benchmarks --benchmark-only`` runs the headline cases: each op and solver against its
baseline at one or two sizes (under 10 minutes on 2 cores; RESULTS.md has the measured time).
``--bench-full`` runs every case (hours on 2 cores). A module marks its headline cases with a
function ``headline(params) -> bool`` of a case's parameters (its ``callspec.params``); a module
without one is headline throughout.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def pytest_addoption(parser):
    parser.addoption("--bench-full", action="store_true", default=False,
                     help="run every benchmark case, not only the headline table (hours on 2 cores)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--bench-full"):
        return
    keep, drop = [], []
    for item in items:
        pick = getattr(item.module, "headline", None)
        params = getattr(getattr(item, "callspec", None), "params", {})
        (keep if pick is None or pick(params) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep

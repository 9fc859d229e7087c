"""Bounded memory: 10^6 points against a few hundred, where a dense pair matrix would be ~1 GB.

Each case runs in a fresh subprocess and reports the growth of its peak resident memory
(ru_maxrss) over the inputs, so allocations inside torch are counted.
"""

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, torch
    import gpflow_kernels as gk
    torch.manual_seed(0)
    op, n, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    x = torch.randn(n, 2)
    y = torch.randn(m, 2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if op == "mmd_field":
        out = gk.mmd_field(x, y, bandwidth=0.5, x_ref=y)
    elif op == "mmd_field_backward":
        x.requires_grad_(True)
        gk.mmd_field(x, y, bandwidth=0.5, x_ref=y).square().sum().backward()
        out = x.grad
    elif op == "kde_score":
        out = gk.kde_score(x, y, bandwidth=0.1)
    elif op == "kernel_integral":
        out = gk.kernel_integral(x, y, kernel="laplace")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"extra_mb": (after - before) / 1024, "finite": bool(torch.isfinite(out).all())}))
    """
)

CASES = [
    ("mmd_field", 1_000_000, 256),
    ("mmd_field", 256, 1_000_000),
    ("mmd_field_backward", 1_000_000, 128),
    ("kde_score", 256, 1_000_000),
    ("kernel_integral", 1_000_000, 256),
]


@pytest.mark.parametrize("op,n,m", CASES)
def test_peak_memory_stays_bounded(op, n, m):
    res = subprocess.run([sys.executable, "-c", SCRIPT, op, str(n), str(m)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout.strip().splitlines()[-1])
    dense_mb = n * m * 4 / 2**20  # one float32 pair matrix
    assert info["finite"]
    assert info["extra_mb"] < 300, f"{op} {n}x{m}: {info['extra_mb']:.0f} MB extra (dense would need {dense_mb:.0f} MB)"

"""Can pykeops compile and run here? One Gaussian reduction on the GPU, checked against torch.

    python benchmarks/keops_probe.py        (exit 0: usable; anything else, a crash included: not)

gpu_session.sh runs this in a process of its own before it lets KeOps into the timed stages,
because a failing KeOps compile can take its whole process down (a segfault, not an exception).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import keops_ops  # noqa: E402

device = "cuda" if torch.cuda.is_available() else "cpu"
g = torch.Generator(device=device).manual_seed(0)
x, y = torch.randn(300, 2, device=device, generator=g), torch.randn(200, 2, device=device, generator=g)
v = torch.randn(200, 3, device=device, generator=g)
want = torch.exp(-torch.cdist(x.double(), y.double()) ** 2 / 2) @ v.double()
got = keops_ops.kernel_integral(x, y, v, 1.0)
torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
print("KeOps usable on", device, "| pykeops", __import__("pykeops").__version__)

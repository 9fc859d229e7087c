"""The csrc/ CUDA extension: compile-only where nvcc is present (CI), numbers where a GPU is."""

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

import gpflow_kernels as gk
from gpflow_kernels import _cuda, reference
from gpflow_kernels.kernels import IMQ, Energy, Gaussian, Laplace, Polyharmonic

ROOT = Path(__file__).resolve().parents[1]
HAS_GPU = torch.cuda.is_available()
needs_ext = pytest.mark.skipif(not _cuda.available(), reason=f"CUDA extension not built: {_cuda.IMPORT_ERROR}")
needs_gpu = pytest.mark.skipif(not (HAS_GPU and _cuda.available()), reason="needs a CUDA device and the built extension")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("arch", [pytest.param("80", marks=pytest.mark.slow), "90"])
def test_cuda_source_compiles(arch, tmp_path):
    src = ROOT / "csrc" / "gpflow_cuda.cu"
    archs = os.environ.get("GPFLOW_CUDA_ARCHS", "80;90").split(";")
    if _cuda.available() and arch in archs:
        from gpflow_kernels import _cuda_ext

        if Path(_cuda_ext.__file__).stat().st_mtime >= src.stat().st_mtime:
            # CI's install compiled this very source for this arch (the same nvcc flags, in setup.py),
            # and test_install_built_the_extension_where_nvcc_is_present checks that it did
            pytest.skip(f"the built extension is newer than {src.name} and was compiled for sm_{arch}")
    pybind11 = pytest.importorskip("pybind11")
    cmd = ["nvcc", "-std=c++17", "-O3", "-Xcompiler", "-fPIC", f"-I{pybind11.get_include()}",
           f"-I{sysconfig.get_paths()['include']}", "-gencode", f"arch=compute_{arch},code=sm_{arch}",
           "-c", str(src), "-o", str(tmp_path / "k.o")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]


@pytest.mark.skipif(shutil.which("nvcc") is None or os.environ.get("GPFLOW_BUILD_CUDA") == "0", reason="nvcc absent or build disabled")
def test_install_built_the_extension_where_nvcc_is_present():
    assert _cuda.available(), f"nvcc is on PATH but gpflow_kernels._cuda_ext did not build or load: {_cuda.IMPORT_ERROR}"


@needs_ext
def test_extension_limits_and_argument_checks_without_a_gpu():
    from gpflow_kernels import _cuda_ext

    assert _cuda_ext.MAX_D == reference.EXACT_MAX_D == _cuda.MAX_D
    # Argument checks happen before any launch, so they need no device.
    with pytest.raises(ValueError, match="D <= 8"):
        _cuda_ext.grad_sum(0, 0, 0, 0, 0, 1, 4, 4, 9, 1, 0, 0, 0.0, 0.0, 0.0, 0, 0)
    with pytest.raises(ValueError, match="P <= 16"):
        _cuda_ext.integral(0, 0, 0, 0, 0, 1, 4, 4, 2, 17, 1, 0, 0, 0.0, 0.0, 0.0, 0, 0)
    with pytest.raises(ValueError, match="dtype code"):
        _cuda_ext.softmax_mean(0, 0, 0, 0, 0, 1, 4, 4, 2, 0, 7, 0)


def test_backend_cuda_errors_are_clear():
    x = torch.randn(5, 2)
    want = "needs CUDA tensors" if _cuda.available() else "backend='cuda' is not available"
    with pytest.raises(ValueError, match=want):
        gk.mmd_field(x, x, backend="cuda")


KERNELS = [Gaussian(), IMQ(), Laplace(), Energy(), Polyharmonic(3.0), Polyharmonic(2.0), Polyharmonic(-1.0, eps=0.5)]


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kern", KERNELS, ids=repr)
@pytest.mark.parametrize("D", [1, 2, 3, 5, 8])
def test_kernels_match_the_reference_on_gpu(D, kern, dtype):
    g = torch.Generator(device="cuda").manual_seed(D)
    mk = lambda *s: torch.randn(*s, device="cuda", generator=g, dtype=torch.float64)
    x, y, v = mk(2, 301, D), mk(2, 257, D) + 0.3, mk(2, 257, 3)
    a = torch.rand(2, 257, device="cuda", generator=g, dtype=torch.float64) + 0.1
    s2 = torch.tensor([[0.7, 2.0]], device="cuda", dtype=torch.float64) ** 2 * max(1, D)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-4)
    c = lambda t: t.to(dtype)
    for got, want in [
        (_cuda.integral(kern, c(x), c(y), c(v), c(s2)), reference.integral(kern, x, y, v, s2)),
        (_cuda.integral(kern, c(x), c(y), None, c(s2)), reference.integral(kern, x, y, None, s2)),
        (_cuda.grad_sum(kern, c(x), c(y), c(a), c(s2)), reference.grad_sum(kern, x, y, a, s2)),
    ]:
        scale = want.abs().max().clamp_min(1.0)
        torch.testing.assert_close(got.double() / scale, want / scale, **tol)
    mu, lse = _cuda.softmax_mean(c(x), c(y), c(s2[:, :1]))
    mu_r, lse_r = reference.softmax_mean(x, y, s2[:, :1])
    torch.testing.assert_close(mu.double(), mu_r, **tol)
    torch.testing.assert_close(lse.double(), lse_r, **tol)


@needs_gpu
def test_public_ops_with_backend_cuda_and_their_gradients():
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(3, 200, 2, device="cuda", generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 150, 2, device="cuda", generator=g, dtype=torch.float64)
    for op in (lambda b: gk.mmd_field(x, y, bandwidth=0.7, backend=b), lambda b: gk.kde_score(x, y, bandwidth=0.3, backend=b),
               lambda b: gk.kernel_integral(x, y, kernel="laplace", backend=b)):
        out_c, out_t = op("cuda"), op("torch")
        torch.testing.assert_close(out_c, out_t, rtol=1e-10, atol=1e-12)
        (g_c,) = torch.autograd.grad(out_c.square().sum(), x)
        (g_t,) = torch.autograd.grad(out_t.square().sum(), x)
        torch.testing.assert_close(g_c, g_t, rtol=1e-9, atol=1e-11)

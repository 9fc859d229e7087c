"""The fused CPU kernels (csrc/gpflow_cpu.cpp, backend="cpu" and the CPU default) against the tiled
torch reference in float64, on odd shapes, every built-in kernel, weights, values, several
bandwidths and batches; gradcheck; 1 and 2 threads; empty and single-point inputs; our exp."""

import math

import pytest
import torch

import gpflow_kernels as gk
from gpflow_kernels import _cpu, ops, reference
from gpflow_kernels.kernels import Polyharmonic, get_kernel

pytestmark = pytest.mark.skipif(not _cpu.available(), reason=f"the CPU extension is not built ({_cpu.IMPORT_ERROR})")

KERNELS = {
    "gaussian": get_kernel("gaussian"),
    "imq": get_kernel("imq"),
    "laplace": get_kernel("laplace"),
    "energy": get_kernel("energy"),
    "poly3": Polyharmonic(3.0),
    "poly2eps": Polyharmonic(2.0, eps=0.1),
}
DIMS = (1, 2, 3, 5, 64, 130)


def _data(D, dtype, B=2, N=37, M=29, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, D, generator=g, dtype=dtype)
    y = torch.randn(B, M, D, generator=g, dtype=dtype) + 0.3
    x[0, 3] = y[0, 5]  # a coincident pair: singular kernels must give it no force
    return x, y, g


def _close(got, want, scale=None, tol=1e-10):
    for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert (a is None) == (b is None)
        if a is None:
            continue
        s = float(b.abs().max()) if scale is None else scale
        assert float((a - b).abs().max()) <= tol * max(s, 1e-300), (float((a - b).abs().max()), s)


@pytest.mark.parametrize("D", DIMS)
@pytest.mark.parametrize("kname", list(KERNELS))
def test_pair_reductions_match_the_reference_in_float64(kname, D):
    kern, dt = KERNELS[kname], torch.float64
    x, y, g = _data(D, dt)
    s2 = torch.tensor([[0.7 * D, 2.0 * D], [0.5 * D, 1.5 * D]], dtype=dt)  # per-batch bandwidths, summed
    v, a = torch.randn(2, 29, 3, generator=g, dtype=dt), torch.rand(2, 29, generator=g, dtype=dt)
    gv, gd = torch.randn(2, 37, 3, generator=g, dtype=dt), torch.randn(2, 37, D, generator=g, dtype=dt)
    _close(_cpu.integral(kern, x, y, v, s2), reference.integral(kern, x, y, v, s2))
    _close(_cpu.integral(kern, x, y, None, s2), reference.integral(kern, x, y, None, s2))
    v6 = torch.randn(2, 29, 6, generator=g, dtype=dt)  # more than 4 value columns: the per-column sums
    _close(_cpu.integral(kern, x, y, v6, s2), reference.integral(kern, x, y, v6, s2))
    _close(_cpu.grad_sum(kern, x, y, a, s2), reference.grad_sum(kern, x, y, a, s2))
    _close(_cpu.grad_sum(kern, x, y, None, s2), reference.grad_sum(kern, x, y, None, s2))
    every = (True, True, True)
    _close(_cpu.integral_backward(kern, x, y, v, s2, gv, every), reference.integral_backward(kern, x, y, v, s2, gv, every))
    g1 = gv[..., :1].contiguous()
    _close(_cpu.integral_backward(kern, x, y, None, s2, g1, every), reference.integral_backward(kern, x, y, None, s2, g1, every))
    # The field's Jacobian: in one dimension the singular kernels' terms cancel (|x| has no
    # curvature), so there the scale is the size of the terms, not of their tiny sum.
    want = reference.grad_sum_backward(kern, x, y, a, s2, gd, every)
    scale = float(reference.grad_sum(kern, x, y, None, s2).abs().max()) * 1e3 if D == 1 and kname != "gaussian" and kname != "imq" else None
    _close(_cpu.grad_sum_backward(kern, x, y, a, s2, gd, every), want, scale)
    _close(_cpu.grad_sum_backward(kern, x, y, None, s2, gd, (True, True, False)),
           reference.grad_sum_backward(kern, x, y, None, s2, gd, (True, True, False)), scale)


@pytest.mark.parametrize("D", DIMS)
def test_soft_assignment_and_its_backward_match_the_reference(D):
    dt = torch.float64
    x, y, g = _data(D, dt)
    s2 = torch.tensor([[0.3 * D], [0.05 * D]], dtype=dt)  # the second is sharp: the online log-sum-exp matters
    mu, lse = _cpu.softmax_mean(x, y, s2)
    mr, lr = reference.softmax_mean(x, y, s2)
    _close((mu, lse), (mr, lr))
    gd = torch.randn(2, 37, D, generator=g, dtype=dt)
    _close(_cpu.softmax_mean_backward(x, y, s2, lr, mr, gd, (True, True)),
           reference.softmax_mean_backward(x, y, s2, lr, mr, gd, (True, True)))


@pytest.mark.parametrize("D", (2, 130))
@pytest.mark.parametrize("threads", (1, 2))
def test_float32_public_ops_against_float64_oracles(D, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, y, g = _data(D, torch.float64, B=1, N=70, M=45)
        w = torch.rand(1, 45, generator=g, dtype=torch.float64)
        v = torch.randn(1, 45, 2, generator=g, dtype=torch.float64)
        s = 0.8 * math.sqrt(D)
        cases = [
            lambda a, b, be: gk.mmd_field(a, b, bandwidth=s, weights=w.to(a.dtype), backend=be),
            lambda a, b, be: gk.mmd_field(a, b, kernel="energy", x_ref=b[:, :20] * 0.5, backend=be),
            lambda a, b, be: gk.kernel_integral(a, b, v.to(a.dtype), kernel="laplace", bandwidth=[s, 2 * s], backend=be),
            lambda a, b, be: gk.kde_score(a, b, bandwidth=s, backend=be),
            lambda a, b, be: gk.svgd_field(a, a * 0.5, kernel="imq", backend=be),
            lambda a, b, be: gk.mmd2(a, b, bandwidth="median", unbiased=True, backend=be),
        ]
        for f in cases:
            want = f(x, y, "torch")
            got = f(x.float(), y.float(), "cpu")
            assert got.dtype == torch.float32
            torch.testing.assert_close(got.double(), want, rtol=2e-4, atol=2e-5 * float(want.abs().max()))
            assert torch.equal(got, f(x.float(), y.float(), "auto"))  # the CPU default is the fused path
    finally:
        torch.set_num_threads(before)


def test_gradcheck_through_the_public_ops():
    g = torch.Generator().manual_seed(3)
    for D in (2, 11):
        x = torch.randn(5, D, generator=g, dtype=torch.float64, requires_grad=True)
        y = torch.randn(4, D, generator=g, dtype=torch.float64, requires_grad=True)
        w = torch.rand(4, generator=g, dtype=torch.float64, requires_grad=True)
        v = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
        s = 1.3 * math.sqrt(D)
        assert torch.autograd.gradcheck(lambda a, b, c: gk.mmd_field(a, b, bandwidth=s, weights=c, backend="cpu"), (x, y, w))
        assert torch.autograd.gradcheck(lambda a, b, c: gk.kernel_integral(a, b, c, kernel="imq", bandwidth=s, backend="cpu"), (x, y, v))
        assert torch.autograd.gradcheck(lambda a, b: gk.kde_score(a, b, bandwidth=s, backend="cpu"), (x, y))
        assert torch.autograd.gradcheck(lambda a, b: gk.svgd_field(a, b, bandwidth=s, backend="cpu"), (x, (0.3 * x.detach() + 0.1).requires_grad_()))


def test_empty_and_single_point_inputs():
    for D in (2, 9):
        x, y = torch.randn(1, D), torch.randn(3, D)
        for be in ("cpu", "torch"):
            assert gk.mmd_field(x, y, backend=be).shape == (1, D)
        torch.testing.assert_close(gk.mmd_field(x, y, backend="cpu"), gk.mmd_field(x, y, backend="torch"))
        torch.testing.assert_close(gk.kde_score(x, y[:1], bandwidth=0.5, backend="cpu"), (y[:1] - x) / 0.25)
        for be in ("cpu", "torch"):  # the public ops' error for empty point sets is unchanged
            with pytest.raises(ValueError, match="x is empty: expected at least one point"):
                gk.kernel_integral(torch.randn(0, D), y, backend=be)
        # A rank's empty shard reaches the primitives (gpflow_kernels.distributed).
        s2 = torch.ones(1, 1)
        k = get_kernel("gaussian")
        assert _cpu.grad_sum(k, torch.randn(2, 0, D), torch.randn(2, 3, D), None, s2).shape == (2, 0, D)
        assert _cpu.integral(k, torch.randn(2, 4, D), torch.randn(2, 0, D), None, s2).abs().max() == 0


def test_our_exp_against_math_exp():
    ext = _cpu._cpu_ext
    ts = torch.linspace(-79.9, 79.9, 4001, dtype=torch.float64).tolist() + [0.0, -1e-30, 1e-30]
    for t in ts:  # measured: at most 1 ulp in float64, 1.2 ulp in float32
        assert ext.fexp(t, 1) == pytest.approx(math.exp(t), rel=3e-16)
        t32 = float(torch.tensor(t, dtype=torch.float32))
        assert ext.fexp(t32, 0) == pytest.approx(math.exp(t32), rel=1.5e-7)
    assert ext.fexp(-1000.0, 1) == pytest.approx(math.exp(-700.0), rel=1e-15)  # the reference's floor
    assert ext.fexp(-1000.0, 0) == pytest.approx(math.exp(-80.0), rel=1e-6)
    assert math.isnan(ext.fexp(float("nan"), 0)) and math.isnan(ext.fexp(float("nan"), 1))


def test_backend_cpu_errors_name_the_problem(monkeypatch):
    from gpflow_kernels.kernels import Kernel

    class Custom(Kernel):
        def profile(self, u, order):
            return (torch.exp(-u), -torch.exp(-u), torch.exp(-u))[: order + 1]

    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="no fused kernel for .*Custom"):
        gk.mmd_field(x, x, kernel=Custom(), backend="cpu")
    torch.testing.assert_close(gk.mmd_field(x, x + 1, kernel=Custom()), gk.mmd_field(x, x + 1, kernel=Custom(), backend="torch"))
    monkeypatch.setattr(_cpu, "_cpu_ext", None)
    with pytest.raises(ValueError, match="backend='cpu' is not available"):
        gk.mmd_field(x, x, backend="cpu")
    monkeypatch.setattr(ops, "_NOTICED", [])
    with pytest.warns(RuntimeWarning, match="fused CPU kernels are not built"):  # once per process
        assert ops._impl("auto", x) is reference  # without the extension the CPU default is the tiled path
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ops._impl("auto", x) is reference


def test_the_kernels_share_torchs_openmp_runtime_and_run_in_a_forked_one_thread_child():
    """The extension's libgomp is the copy torch loaded (one OpenMP pool, so no second set of
    threads competes with torch's). As with torch's own ops, a child forked after parallel work
    runs them with one thread (DataLoader workers set that), which touches no pool."""
    import multiprocessing as mp
    import re

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(700, 2, generator=torch.Generator().manual_seed(0))
        want = gk.mmd_field(x, x + 1, backend="cpu")
        with open("/proc/self/maps") as f:  # by soname: wheels such as scikit-learn's bundle renamed copies
            gomps = {p for p in re.findall(r"\S*/libgomp[^/\s]*", f.read()) if p.rsplit("/", 1)[1].startswith("libgomp.so")}
        assert len(gomps) == 1 and "torch" in next(iter(gomps)), gomps

        def child():
            torch.set_num_threads(1)
            q.put(gk.mmd_field(x, x + 1, backend="cpu").tolist())

        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=child)
        p.start()
        got = q.get(timeout=60)
        p.join(timeout=60)
        assert p.exitcode == 0
        torch.testing.assert_close(torch.tensor(got), want)  # the order of the sums differs with 1 thread
    finally:
        torch.set_num_threads(before)


def test_every_benchmark_case_computes_its_op():
    """benchmarks/fused_cpu_cases.py: each (op, pass) gives the tiled path's numbers when fused, at
    small sizes, so that the timed closures cannot time the wrong thing."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from fused_cpu_cases import OPS, make
    finally:
        sys.path.pop(0)
    for op in OPS:
        for d in (2, 9):
            for backward in (False, True):
                want = make(op, "tiled", 50, d, backward)()
                got = make(op, "fused", 50, d, backward)()
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_a_particles_own_term_cancels_exactly_as_in_the_reference():
    """Points 100 apart at σ = 0.055: the repulsion's self terms (weight −1/σ² next to e^−80-sized
    ones) must cancel exactly, leaving the tiny field, as the reference's rounded products do; a
    fused multiply-add in the final x·ΣW − ΣW·y left 3e-4 (found by tests/test_fuzz_ops.py)."""
    g = torch.Generator().manual_seed(0)
    x = 100 * torch.randn(2, 1, generator=g, dtype=torch.float64)
    y = 100 * torch.randn(1, 1, generator=g, dtype=torch.float64)
    for dt in (torch.float32, torch.float64):
        for D in (1, 9):  # the row and the tiled path
            a, b = x.to(dt).repeat(1, D), y.to(dt).repeat(1, D)
            got = gk.mmd_field(a, b, bandwidth=0.0546875 * math.sqrt(D), backend="cpu")
            want = gk.mmd_field(a, b, bandwidth=0.0546875 * math.sqrt(D), backend="torch")
            assert float(got.abs().max()) < 1e-25 and float(want.abs().max()) < 1e-25


@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
@pytest.mark.parametrize("D", [3, 16])
def test_soft_assignment_whose_nearest_point_comes_in_a_late_block(D, dt):
    """The tiled pass weighs each block against the running maximum and redoes a block only when
    it holds logits far above it: put each point's nearest neighbour in the third or fourth
    block of 128 (logits ~150 above every earlier one), far points first."""
    g = torch.Generator().manual_seed(5)
    y = torch.randn(1, 400, D, generator=g, dtype=torch.float64) * 3
    x = y[:, [300, 390, 257, 5]] + 0.01 * torch.randn(1, 4, D, generator=g, dtype=torch.float64)
    s2 = torch.tensor([[0.09]], dtype=torch.float64)
    mu, lse = _cpu.softmax_mean(x.to(dt), y.to(dt), s2.to(dt))
    mr, lr = reference.softmax_mean(x, y, s2)
    tol = 1e-4 if dt == torch.float32 else 1e-10
    torch.testing.assert_close(mu.double(), mr, rtol=tol, atol=tol * 10)
    torch.testing.assert_close(lse.double(), lr, rtol=tol, atol=tol * 10)

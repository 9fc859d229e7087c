"""Triton kernels against the tiled torch reference, forward and backward.

On a machine without a GPU these run through TRITON_INTERPRET=1 (set in conftest) on small,
ragged shapes (not multiples of the 16×16 interpreter blocks); on a GPU, on the device.
"""

import pytest
import torch

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter

import gpflow_kernels as gk  # noqa: E402
from gpflow_kernels import _triton as T  # noqa: E402
from gpflow_kernels import reference as R  # noqa: E402
from gpflow_kernels.kernels import IMQ, Energy, Gaussian, Laplace, Polyharmonic  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNELS = [Gaussian(), IMQ(), Laplace(), Energy(), Polyharmonic(3.0), Polyharmonic(2.0), Polyharmonic(-1.0, eps=0.5)]
DIMS = [1, 2, 3, 17, 64, 130]
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-5)}



def data(D, dtype, B=2, N=13, M=19, P=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype=dtype, device=DEVICE)
    scale = max(1.0, D**0.5)
    x, y = mk(B, N, D), mk(B, M, D) + 0.3
    s2 = torch.tensor([[0.7 * scale, 2.0 * scale]], dtype=dtype, device=DEVICE) ** 2
    a = torch.rand(B, M, generator=g, dtype=torch.float64).to(dtype=dtype, device=DEVICE) + 0.1
    return x, y, mk(B, M, P), a, s2, mk(B, N, P), mk(B, N, D)


def close(got, want, dtype, same_precision_ref=None):
    """got (in dtype) against the float64 truth ``want``, scaled by its largest entry (floor 1:
    some exact answers are 0, e.g. the energy kernel's Hessian in D = 1 is −1/r + 1/r).

    In float32 the budget also allows 10× the error of the torch reference computed in float32:
    near-coincident points make the singular kernels' Hessians ill-conditioned in any code.
    """
    want = want.to(torch.float64)
    scale = float(want.abs().max().clamp_min(1.0))
    err = float((got.to(torch.float64) - want).abs().max())
    budget = TOL[dtype]["atol"] * scale + TOL[dtype]["rtol"] * float(want.abs().max())
    if same_precision_ref is not None and dtype != torch.float64:
        budget = max(budget, 10.0 * float((same_precision_ref.to(torch.float64) - want).abs().max()))
    assert err <= budget, f"max error {err:.3g} exceeds {budget:.3g} (scale {scale:.3g})"


def truth(*ts):
    return [None if t is None else t.to(torch.float64) for t in ts]


# float64 (tight tolerances: any indexing or masking slip shows) at every dimension but D = 2 (its
# float64 Triton paths are those of D = 3 without the padding column; D = 2 runs through the public
# ops below and in test_accuracy_contract.py); float32 at one dimension of each code path (D = 1,
# the unrolled D = 3, the dot-product paths at 17 and 130): the interpreter takes about a second a case.
PAIR_CASES = [(D, torch.float64) for D in DIMS if D != 2] + [(D, torch.float32) for D in (1, 3, 17, 130)]


@pytest.mark.parametrize("kern", KERNELS, ids=repr)
@pytest.mark.parametrize("D, dtype", PAIR_CASES, ids=lambda v: str(v))
def test_pair_reductions_forward_and_backward(D, kern, dtype):
    x, y, v, a, s2, gP, gD = data(D, dtype)
    X, Y, V, A, S2, GP, GD = truth(x, y, v, a, s2, gP, gD)
    for fn, args, args64 in [
        (lambda m, *t: [m.integral(kern, *t)], (x, y, v, s2), (X, Y, V, S2)),
        (lambda m, *t: [m.integral(kern, *t)], (x, y, None, s2), (X, Y, None, S2)),
        (lambda m, *t: [m.grad_sum(kern, *t)], (x, y, a, s2), (X, Y, A, S2)),
        (lambda m, *t: m.integral_backward(kern, *t, (True, True, True)), (x, y, v, s2, gP), (X, Y, V, S2, GP)),
        (lambda m, *t: m.grad_sum_backward(kern, *t, (True, True, True)), (x, y, a, s2, gD), (X, Y, A, S2, GD)),
        (lambda m, *t: m.grad_sum_backward(kern, *t, (True, True, True)), (x, y, None, s2, gD), (X, Y, None, S2, GD)),
    ]:
        for got, want, ref in zip(fn(T, *args), fn(R, *args64), fn(R, *args)):
            if want is None:
                assert got is None
            else:
                close(got, want, dtype, ref)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("D", DIMS)
def test_soft_assignment_forward_and_backward(D, dtype):
    x, y, _, _, s2, _, gD = data(D, dtype)
    s2 = s2[:, :1]
    mu_t, lse_t = T.softmax_mean(x, y, s2)
    X, Y, S2, GD = truth(x, y, s2, gD)
    mu_r, lse_r = R.softmax_mean(X, Y, S2)
    mu_f, lse_f = R.softmax_mean(x, y, s2)
    close(mu_t, mu_r, dtype, mu_f)
    for got, want, ref in zip(T.softmax_mean_backward(x, y, s2, lse_t, mu_t, gD, (True, True)),
                              R.softmax_mean_backward(X, Y, S2, lse_r, mu_r, GD, (True, True)),
                              R.softmax_mean_backward(x, y, s2, lse_f, mu_f, gD, (True, True))):
        close(got, want, dtype, ref)


@pytest.mark.parametrize("D", [2, 17])
def test_public_ops_and_their_gradients_match_the_torch_backend(D):
    g = torch.Generator().manual_seed(1)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(DEVICE)
    x, y, xr, v = mk(3, 11, D), mk(3, 9, D) + 0.5, mk(3, 7, D), mk(3, 9, 2)
    w = torch.rand(3, 9, generator=g, dtype=torch.float64).to(DEVICE) + 0.2
    ops = {
        "mmd_field": lambda b, x, y: gk.mmd_field(x, y, bandwidth=torch.tensor([0.8, 3.0]), x_ref=xr, weights=w, backend=b),
        "mmd2": lambda b, x, y: gk.mmd2(x, y, kernel="imq", bandwidth=1.3, unbiased=True, backend=b),
        "kernel_integral": lambda b, x, y: gk.kernel_integral(x, y, v, kernel="laplace", bandwidth=1.1, backend=b),
        "kde_score": lambda b, x, y: gk.kde_score(x, y, bandwidth=0.6 * D**0.5, backend=b),
        "svgd_field": lambda b, x, y: gk.svgd_field(x, -x, bandwidth=1.0, backend=b),
    }
    for name, op in ops.items():
        outs, grads = [], []
        for b in ("triton", "torch"):
            xx, yy = x.clone().requires_grad_(), y.clone().requires_grad_()
            out = op(b, xx, yy)
            gx, gy = torch.autograd.grad(out.square().sum(), (xx, yy), allow_unused=True)
            outs.append(out)
            grads.append((gx, gy))
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-9, atol=1e-11, msg=name)
        for a_, b_ in zip(*grads):
            if b_ is None:
                assert a_ is None
            else:
                torch.testing.assert_close(a_, b_, rtol=1e-9, atol=1e-11, msg=name)


def test_tiny_bandwidth_and_half_precision():
    g = torch.Generator().manual_seed(2)
    y = (torch.randn(20, 3, generator=g) * 10).to(DEVICE)
    x = y[[3, 7, 11]] + 0.05
    den = gk.kde_denoiser(x, y, bandwidth=1e-3, backend="triton")
    assert torch.isfinite(den).all()
    torch.testing.assert_close(den, y[[3, 7, 11]], rtol=1e-5, atol=1e-4)
    xb, yb = x.to(torch.bfloat16), y.to(torch.bfloat16)
    got = gk.mmd_field(xb, yb, bandwidth=5.0, backend="triton")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), gk.mmd_field(xb.float(), yb.float(), bandwidth=5.0), rtol=1e-2, atol=1e-2)


def test_non_contiguous_and_batched_inputs():
    base = torch.randn(2, 3, 8, 12, dtype=torch.float64, device=DEVICE)
    x = base.transpose(-1, -2)[..., :5]  # (2, 3, 12, 5) non-contiguous
    y = torch.randn(2, 3, 9, 5, dtype=torch.float64, device=DEVICE)
    assert not x.is_contiguous()
    torch.testing.assert_close(gk.mmd_field(x, y, backend="triton"), gk.mmd_field(x, y, backend="torch"), rtol=1e-10, atol=1e-12)


def test_backend_errors_are_clear():
    x = torch.randn(4, 600, device=DEVICE)
    with pytest.raises(ValueError, match="D <= 512"):
        gk.mmd_field(x, x, backend="triton")

    class Custom(Gaussian):
        pass

    with pytest.raises(ValueError, match="no fused kernel"):
        gk.mmd_field(x[:, :2], x[:, :2], kernel=Custom(), backend="triton")
    with pytest.raises(ValueError, match="backend='cuda' (is not available|needs CUDA tensors)"):
        gk.mmd_field(x[:, :2], x[:, :2], backend="cuda")


def test_autotune_switch(monkeypatch):
    from gpflow_kernels._triton import common

    monkeypatch.setattr(common, "INTERPRET", False)
    monkeypatch.setattr(common, "AUTOTUNE", True)
    shape = lambda c: (c.kwargs["BN"], c.kwargs["BM"], c.num_warps, c.num_stages)  # noqa: E731
    tuned = [shape(c) for c in common.configs()]
    assert len(tuned) == 6 and len(set(tuned)) == 6 and tuned[-1] == common.SMALL
    monkeypatch.setattr(common, "AUTOTUNE", False)
    assert [shape(c) for c in common.configs()] == [common.PINNED, common.SMALL]
    assert common.PINNED in tuned  # the pinned shape is one of the tuned ones
    for value, want in [("0", False), ("1", True), (" 1 ", True)]:
        monkeypatch.setenv("GPFLOW_TRITON_AUTOTUNE", value)
        assert common._autotune_flag() is want
    monkeypatch.setenv("GPFLOW_TRITON_AUTOTUNE", "off")
    with pytest.raises(ValueError, match="GPFLOW_TRITON_AUTOTUNE must be 0 or 1, got 'off'"):
        common._autotune_flag()


@pytest.mark.parametrize("autotune", [True, False])
def test_prune_keeps_a_shape_that_fits_in_shared_memory(monkeypatch, autotune):
    # On an H200 a float64 launch at D = 130 took a tuned shape needing 983 040 bytes of shared
    # memory (the limit is 232 448) and died in Triton's launcher; prune adds SMALL wherever no
    # tuned shape surely fits, and a pinned shape that may not fit is replaced by SMALL.
    from gpflow_kernels._triton import common

    monkeypatch.setattr(common, "INTERPRET", False)
    monkeypatch.setattr(common, "AUTOTUNE", autotune)
    monkeypatch.setattr(common, "shared_limit", lambda index: 232448)
    shape = lambda c: (c.kwargs["BN"], c.kwargs["BM"], c.num_warps, c.num_stages)  # noqa: E731
    cfgs = common.configs()
    for dtype, d, small in [(torch.float32, 2, False), (torch.float32, 64, False), (torch.float64, 130, True),
                            (torch.float64, 512, True), (torch.float32, 512, True)]:
        q = torch.empty(1, 4, d, dtype=dtype)
        kept = [shape(c) for c in common.prune(cfgs, {"q_ptr": q}, BD=common.pow2(d))]
        if autotune:
            assert kept == common.TUNED + ([common.SMALL] if small else []), (dtype, d)
        else:
            assert kept == [common.SMALL if small else common.PINNED], (dtype, d)
        for bn, bm, w, st in kept:  # what is kept and surely fits is within the limit
            if (bn, bm, w, st) != common.SMALL and not autotune:
                assert common.shared_bound(bn, bm, st, common.pow2(d), q.element_size()) <= 232448


def test_autotune_keys_name_the_tile_shape():
    # a shape tuned at one D (or one kernel variant) is not reused at another
    from gpflow_kernels._triton import kde, pairs

    for kernel in (pairs._integral_kernel, pairs._field_kernel, pairs._hessian_kernel, kde._kde_fwd, kde._kde_bwd_x,
                   kde._kde_bwd_y):
        if hasattr(kernel, "keys"):  # an Autotuner (not under the interpreter's single shape)
            assert {"N", "M", "D", "BD", "EXACT", "DOT"} <= set(kernel.keys), kernel.keys


def test_triton_version_floor(monkeypatch):
    for version, ok in [("3.5.0", True), ("3.6.0+git1234", True), ("3.10.1", True), ("4.0.0", True),
                        ("3.4.0", False), ("2.3.1", False), ("nightly", False)]:
        problem = T.version_problem(version)
        assert (problem is None) is ok, version
        if not ok:
            assert problem.startswith(f"triton {version} is older than 3.5")
    assert T.version_problem() is None  # the installed one
    monkeypatch.setattr(T, "version_problem", lambda version=None: "triton 3.4.0 is older than 3.5, the oldest version the fused kernels support")
    x = torch.randn(5, 2, device=DEVICE)
    with pytest.raises(ValueError, match=r"backend='triton' needs the triton package \(>= 3.5\), which is not usable here: triton 3.4.0 is older"):
        gk.mmd_field(x, x, backend="triton")
    torch.testing.assert_close(gk.mmd_field(x, x, backend="auto"), gk.mmd_field(x, x, backend="torch"))


@pytest.fixture
def matmul_precision():
    """Set torch's float32 matmul precision for one test, then restore it."""
    old = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(old)


# On a GPU: "high" runs three TF32 tensor-core products per dot (about float32 accuracy), "medium"
# one (about 1e-3). Under the interpreter tl.dot ignores the precision, so there this checks that
# every launcher passes it through and that float64 stays exact.
PRECISIONS = {"highest": ("ieee", 1e-4), "high": ("tf32x3", 1e-4), "medium": ("tf32", 5e-3)}


# D = 64 takes the dot-product distances, where the precision matters; D = 3 (exact differences)
# only at the lowest precision, to show that setting it does not reach the exact path.
@pytest.mark.parametrize("D, precision", [(64, p) for p in PRECISIONS] + [(3, "medium")])
def test_float32_matmul_precision_picks_the_dot_precision(D, precision, matmul_precision):
    from gpflow_kernels._triton import common

    matmul_precision(precision)
    dot, tol = PRECISIONS[precision]
    assert common.dot_precision(torch.float32) == dot and common.dot_precision(torch.float64) == "ieee"
    g = torch.Generator().manual_seed(3)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(DEVICE)
    x, y, v = mk(2, 37, D), mk(2, 29, D) + 0.3, mk(2, 29, 3)
    s = 0.7 * D**0.5
    ops = {
        "mmd_field": lambda b, x, y: gk.mmd_field(x, y, bandwidth=s, backend=b),
        "kernel_integral": lambda b, x, y: gk.kernel_integral(x, y, v.to(x.dtype), bandwidth=s, backend=b),
        "kde_score": lambda b, x, y: gk.kde_score(x, y, bandwidth=s, backend=b),
    }
    for name, op in ops.items():
        X, Y = x.clone().requires_grad_(), y.clone().requires_grad_()
        want = op("torch", X, Y)
        want_g = torch.autograd.grad(want.square().sum(), (X, Y))
        # float64 always takes "ieee" dots (asserted above): its leg runs once, under "highest"
        legs = ((torch.float32, tol),) + (((torch.float64, 1e-10),) if precision == "highest" else ())
        for dtype, budget in legs:
            xx, yy = x.to(dtype).requires_grad_(), y.to(dtype).requires_grad_()
            got = op("triton", xx, yy)
            got_g = torch.autograd.grad(got.square().sum(), (xx, yy))
            for a, b in [(got, want)] + list(zip(got_g, want_g)):
                err = float((a.detach().double() - b.detach()).abs().max() / b.detach().abs().max())
                assert err < budget, f"{name} {dtype} {precision}: relative error {err:.2e} >= {budget:.0e}"


@pytest.mark.parametrize("P", [1, 2, 4, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_kernel_integral_for_each_number_of_value_columns(P, dtype):
    # P <= 4 in float32 keeps one register slot per column (pairs._integral_kernel's NP); P = 5 and
    # float64 use the padded tl.dot. Ragged sizes, so that masked columns are in every tile.
    g = torch.Generator().manual_seed(P)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(DEVICE)
    x, y, v = mk(2, 23, 2), mk(2, 37, 2) + 0.4, mk(2, 37, P)
    want = gk.kernel_integral(x, y, v, bandwidth=0.9, backend="torch")
    got = gk.kernel_integral(x.to(dtype), y.to(dtype), v.to(dtype), bandwidth=0.9, backend="triton")
    close(got, want, dtype)
    ones = gk.kernel_integral(x.to(dtype), y.to(dtype), bandwidth=0.9, backend="triton")
    close(ones, gk.kernel_integral(x, y, bandwidth=0.9, backend="torch"), dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("D", [2, 17])
def test_half_precision_inputs_accumulate_in_float32(D, dtype):
    # Inputs in bf16/fp16, outputs and gradients in the same dtype; the kernels accumulate in
    # float32, so what is left is the output's rounding (bf16 keeps 8 bits: about 4e-3 relative).
    # The oracle is the torch backend in float32 on the same (already rounded) inputs.
    g = torch.Generator().manual_seed(4)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype=dtype, device=DEVICE)
    x, y, v = mk(2, 21, D), mk(2, 27, D) + 0.3, mk(2, 27, 3)
    s = 0.8 * D**0.5
    ops = {
        "mmd_field": lambda b, x, y: gk.mmd_field(x, y, bandwidth=[s, 2 * s], backend=b),
        "mmd2": lambda b, x, y: gk.mmd2(x, y, kernel="imq", bandwidth=s, backend=b),
        "kernel_integral": lambda b, x, y: gk.kernel_integral(x, y, v.to(x.dtype), bandwidth=s, backend=b),
        "kde_score": lambda b, x, y: gk.kde_score(x, y, bandwidth=s, backend=b),
        "svgd_field": lambda b, x, y: gk.svgd_field(x, y[..., :21, :] - x, bandwidth=s, backend=b),
    }
    for name, op in ops.items():
        xx, yy = x.clone().requires_grad_(), y.clone().requires_grad_()
        got = op("triton", xx, yy)
        gx, gy = torch.autograd.grad(got.float().square().sum(), (xx, yy))
        X, Y = x.float().requires_grad_(), y.float().requires_grad_()
        want = op("torch", X, Y)
        wx, wy = torch.autograd.grad(want.square().sum(), (X, Y))
        for a, b, what in [(got, want, "value"), (gx, wx, "grad x"), (gy, wy, "grad y")]:
            assert a.dtype == dtype, f"{name} {what}: dtype {a.dtype}"
            err = float((a.detach().float() - b.detach()).abs().max() / b.detach().abs().max())
            assert err < 1e-2, f"{name} {what} {dtype}: relative error {err:.2e}"

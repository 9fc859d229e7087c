"""Bad input: a named, clear TypeError/ValueError before any work, never a broadcast or NaN."""

import re

import pytest
import torch

import gpflow_kernels as gk
from gpflow_kernels.kernels import Polyharmonic

X = torch.randn(5, 2)
Y = torch.randn(6, 2)

PAIR_OPS = {
    "mmd_field": lambda x, y, **kw: gk.mmd_field(x, y, **kw),
    "mmd2": lambda x, y, **kw: gk.mmd2(x, y, **kw),
    "kernel_integral": lambda x, y, **kw: gk.kernel_integral(x, y, **kw),
    "kde_score": lambda x, y, **kw: gk.kde_score(x, y, bandwidth=kw.pop("bandwidth", 1.0), **kw),
    "kde_denoiser": lambda x, y, **kw: gk.kde_denoiser(x, y, bandwidth=kw.pop("bandwidth", 1.0), **kw),
}
ops = pytest.mark.parametrize("op", list(PAIR_OPS.values()), ids=list(PAIR_OPS))


@ops
def test_mismatched_d(op):
    with pytest.raises(ValueError, match=r"same point dimension.*\(5, 2\).*\(6, 3\)"):
        op(X, torch.randn(6, 3))


@ops
def test_mismatched_batch_dims_are_not_broadcast(op):
    with pytest.raises(ValueError, match="equal batch dims"):
        op(torch.randn(3, 5, 2), torch.randn(1, 6, 2))
    with pytest.raises(ValueError, match="equal batch dims"):
        op(torch.randn(3, 5, 2), Y)


@ops
def test_empty_sets(op):
    with pytest.raises(ValueError, match=r"x is empty.*\(0, 2\)"):
        op(torch.randn(0, 2), Y)
    with pytest.raises(ValueError, match=r"y is empty"):
        op(X, torch.randn(6, 0))


@ops
@pytest.mark.parametrize("bw", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_bandwidth(op, bw):
    with pytest.raises(ValueError, match="bandwidth"):
        op(X, Y, bandwidth=bw)


@ops
@pytest.mark.parametrize("dtype, bw", [(torch.float32, 1e-20), (torch.float32, 1e20), (torch.float32, 1e-12),
                                       (torch.float16, 1e-20), (torch.float64, 1e-80), (torch.float64, 1e80)])
@pytest.mark.parametrize("form", ["number", "list", "tensor"])
def test_bandwidth_outside_the_dtypes_range_is_named(op, dtype, bw, form):
    """σ² (or 1/σ⁴ in the backward passes) under- or overflows: a ValueError naming the bandwidth, the
    dtype and the usable range, not all-NaN results (σ ≤ 1e-20 in float32) or torch's overflow error."""
    lo, hi = gk._bandwidth.usable_range(torch.float64 if dtype == torch.float64 else torch.float32)
    value = {"number": bw, "list": [1.0, bw], "tensor": torch.tensor([bw], dtype=torch.float64)}[form]
    if op in (PAIR_OPS["kde_score"], PAIR_OPS["kde_denoiser"]) and form == "list":
        value = [bw]
    expected = re.escape(f"bandwidth = {bw:.3g} is outside the range") + ".*" + re.escape(f"[{lo:.2g}, {hi:.2g}]")
    with pytest.raises(ValueError, match=expected):
        op(X.to(dtype), Y.to(dtype), bandwidth=value)


@ops
def test_bandwidth_at_the_ends_of_the_range_gives_finite_results(op):
    for dtype in (torch.float32, torch.float64):
        lo, hi = gk._bandwidth.usable_range(dtype)
        for bw in (lo * 1.01, hi / 1.01):
            x, y = X.to(dtype).clone().requires_grad_(), Y.to(dtype).clone().requires_grad_()
            out = op(x, y, bandwidth=bw)
            gx, gy = torch.autograd.grad(out.sum(), [x, y])
            assert all(bool(torch.isfinite(t).all()) for t in (out, gx, gy)), (dtype, bw)


def test_median_bandwidth_outside_the_range_is_named():
    tiny = 1e-12 * torch.randn(20, 2)
    with pytest.raises(ValueError, match=r'bandwidth from "median" = .* is outside the range the ops can compute in torch.float32'):
        gk.mmd_field(tiny, tiny.flip(0), bandwidth="median")
    assert bool(torch.isfinite(gk.mmd_field(tiny.double(), tiny.flip(0).double(), bandwidth="median")).all())


def test_float16_results_that_overflow_are_named():
    """The KDE score ~ distance/σ² exceeds float16's 65504 at small σ: an error, not inf."""
    x, y = (10 * X).half(), Y.half()
    with pytest.raises(ValueError, match=r"kde_score: the result overflows torch.float16 .*bandwidth=0.005"):
        gk.kde_score(x, y, bandwidth=0.005)
    assert bool(torch.isfinite(gk.kde_score(x, y, bandwidth=0.5)).all())


@pytest.mark.parametrize("which", ["x", "y"])
def test_meta_tensors_are_named(which):
    meta = torch.empty(5, 2, device="meta")
    x, y = (meta, meta[:4]) if which == "x" else (X, Y)
    if which == "y":
        x, y = meta, meta
    for call in (lambda: gk.mmd_field(x, y), lambda: gk.mmd2(x, y), lambda: gk.kde_score(x, y, bandwidth=1.0),
                 lambda: gk.svgd_field(x, x), lambda: gk.median_bandwidth(x)):
        with pytest.raises(ValueError, match="is a meta tensor"):
            call()


def test_solvers_and_ntk_name_meta_tensors():
    import solvers

    meta = torch.empty(4, 2, device="meta")
    with pytest.raises(ValueError, match="x0 is a meta tensor"):
        solvers.odeint(lambda t, x: x, meta, torch.linspace(0, 1, 3))
    with pytest.raises(ValueError, match="x0 is a meta tensor"):
        solvers.sdeint(solvers.LangevinFlow(lambda x: -x), meta, torch.linspace(0, 1, 3))
    with pytest.raises(ValueError, match="must be on the device of the generator's parameters"):
        gk.ntk_smooth(torch.nn.Linear(2, 2), meta, meta)


@ops
def test_bad_bandwidth_tensor_and_string(op):
    with pytest.raises(ValueError, match="bandwidth"):
        op(X, Y, bandwidth=torch.tensor([[1.0]]))
    with pytest.raises(ValueError, match="bandwidth"):
        op(X, Y, bandwidth="silverman")
    with pytest.raises(TypeError, match="bandwidth"):
        op(X, Y, bandwidth=torch.tensor(1.0, requires_grad=True))


@ops
def test_integer_and_mixed_dtypes(op):
    with pytest.raises(TypeError, match=r"x must be a floating tensor.*torch.int64"):
        op(torch.ones(5, 2, dtype=torch.long), Y)
    with pytest.raises(TypeError, match=r"y has dtype torch.float64 but x has dtype torch.float32"):
        op(X, Y.double())
    with pytest.raises(TypeError, match="torch.Tensor"):
        op(X.numpy(), Y)


@ops
def test_non_finite_points(op):
    bad = Y.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="y contains NaN"):
        op(X, bad)


@ops
def test_unknown_backend(op):
    with pytest.raises(ValueError, match="backend"):
        op(X, Y, backend="keops")


def test_mixed_devices_are_named():
    meta = torch.randn(6, 2, device="meta")
    with pytest.raises(ValueError, match="device meta.*device cpu"):
        gk.mmd_field(X, meta)


def test_unknown_kernel_names_known_ones():
    with pytest.raises(ValueError, match=r"unknown kernel 'rbf'.*gaussian"):
        gk.mmd_field(X, Y, kernel="rbf")
    with pytest.raises(TypeError, match="kernel must be"):
        gk.mmd2(X, Y, kernel=3)


def test_polyharmonic_arguments():
    with pytest.raises(ValueError, match="eps > 0"):
        Polyharmonic(order=-2.0)
    with pytest.raises(TypeError, match="order"):
        Polyharmonic(order="3")
    with pytest.raises(ValueError, match="eps"):
        Polyharmonic(order=3, eps=-1.0)


def test_op_specific_arguments():
    with pytest.raises(ValueError, match=r"weights must have shape \(6,\)"):
        gk.mmd_field(X, Y, weights=torch.ones(5))
    with pytest.raises(ValueError, match="weights must be >= 0"):
        gk.mmd_field(X, Y, weights=-torch.ones(6))
    with pytest.raises(ValueError, match="x_ref"):
        gk.mmd_field(X, Y, x_ref=torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"v must have shape \(6, 3\)"):
        gk.kernel_integral(X, Y, torch.randn(5, 3))
    with pytest.raises(ValueError, match="unbiased MMD² needs at least 2"):
        gk.mmd2(X[:1], Y, unbiased=True)
    with pytest.raises(ValueError, match=r"score must have shape \(5, 2\)"):
        gk.svgd_field(X, torch.randn(5, 3))
    with pytest.raises(ValueError, match="must have shape \\(..., N, D\\)"):
        gk.mmd_field(torch.randn(5), Y)


def test_unavailable_backend_is_explained():
    # Without the built extension: "not available"; with it, CPU tensors are refused by name.
    with pytest.raises(ValueError, match="backend='cuda' (is not available|needs CUDA tensors)"):
        gk.mmd_field(X, Y, backend="cuda")


def test_median_of_repeated_points():
    z = torch.zeros(6, 2)
    with pytest.raises(ValueError, match="median"):
        gk.mmd_field(z, z, bandwidth="median")


def test_median_of_a_single_point():
    with pytest.raises(ValueError, match="at least 2 points"):
        gk.svgd_field(torch.randn(1, 2), torch.randn(1, 2))


def test_bandwidth_as_a_list_is_the_tensor_form():
    for op in (gk.mmd_field, gk.kernel_integral, gk.svgd_field):
        args = (X, -X) if op is gk.svgd_field else (X, Y)
        torch.testing.assert_close(op(*args, bandwidth=[0.5, 2]), op(*args, bandwidth=torch.tensor([0.5, 2.0])))
    torch.testing.assert_close(gk.mmd2(X, Y, bandwidth=(0.5, 2.0)), gk.mmd2(X, Y, bandwidth=torch.tensor([0.5, 2.0])))
    torch.testing.assert_close(gk.kde_score(X, Y, bandwidth=[0.7]), gk.kde_score(X, Y, bandwidth=0.7))
    with pytest.raises(ValueError, match="bandwidth must hold K >= 1 bandwidths, got an empty list"):
        gk.mmd_field(X, Y, bandwidth=[])
    with pytest.raises(TypeError, match=r"bandwidth\[1\] must be a number, got str"):
        gk.mmd_field(X, Y, bandwidth=[1.0, "2"])
    with pytest.raises(ValueError, match=r"bandwidth must hold finite values > 0, got \[1.0, 0.0\]"):
        gk.mmd2(X, Y, bandwidth=[1.0, 0.0])
    with pytest.raises(ValueError, match="bandwidth must be a single bandwidth here, got 2 of them"):
        gk.kde_score(X, Y, bandwidth=[0.5, 1.0])


def test_remaining_argument_errors_name_the_argument():
    with pytest.raises(TypeError, match="bandwidth must be a real tensor, got dtype torch.complex64"):
        gk.mmd_field(X, Y, bandwidth=torch.tensor([1.0 + 1.0j]))
    with pytest.raises(ValueError, match=r"bandwidth must hold finite values > 0, got \[1.0, -2.0\]"):
        gk.mmd_field(X, Y, bandwidth=torch.tensor([1.0, -2.0]))
    with pytest.raises(ValueError, match=r"x is empty \(a batch dim is 0\)"):
        gk.mmd_field(torch.randn(0, 5, 2), torch.randn(0, 6, 2))
    with pytest.raises(TypeError, match="unbiased must be a bool, got str"):
        gk.mmd2(X, Y, unbiased="yes")
    with pytest.raises(TypeError, match="sigma must be a number, got str"):
        gk.denoising_score_matching_loss(lambda z, s: z, X, "0.3")


def test_numpy_scalars_are_numbers():
    # Bandwidths and step sizes often come out of numpy: its scalars are numbers.Real/Integral,
    # so they are accepted exactly like Python numbers (and bools still are not).
    import numpy as np

    import solvers

    torch.testing.assert_close(gk.mmd_field(X, Y, bandwidth=np.float32(0.7)), gk.mmd_field(X, Y, bandwidth=0.7))
    torch.testing.assert_close(gk.mmd2(X, Y, bandwidth=[np.float64(0.5), np.int64(2)]), gk.mmd2(X, Y, bandwidth=[0.5, 2.0]))
    torch.testing.assert_close(solvers.karras_sigmas(np.int64(5), np.float32(0.5), 8.0), solvers.karras_sigmas(5, 0.5, 8.0))
    torch.testing.assert_close(solvers.linear_grid(0.0, np.float32(1.0), np.int32(4)), solvers.linear_grid(0.0, 1.0, 4))
    x0, ts = torch.ones(3, 2, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    sde = solvers.LangevinFlow(lambda x: -x)
    run = lambda dt: solvers.sdeint(sde, x0, ts, dt=dt, generator=torch.Generator().manual_seed(0), save="last")
    torch.testing.assert_close(run(np.float32(0.25)), run(0.25))
    with pytest.raises(TypeError, match="bandwidth must be a number, got bool"):
        gk.mmd_field(X, Y, bandwidth=True)
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 2.0"):
        solvers.karras_sigmas(2.0)

import numpy as np
import pytest
import torch

import gpflow_kernels as gk
from gpflow_kernels.kernels import Polyharmonic

import dense
from conftest import t64

KERNELS = [
    ("gaussian", {}),
    ("imq", {}),
    ("laplace", {}),
    ("energy", {}),
    ("polyharmonic", {"order": 3.0}),
    ("polyharmonic", {"order": 2.0}),
    ("polyharmonic", {"order": -1.0, "eps": 0.5}),
]
SHAPES = [(7, 5, 1), (13, 11, 3), (9, 6, 17)]


def kernel_arg(name, kw):
    return Polyharmonic(**kw) if name == "polyharmonic" else name


@pytest.mark.parametrize("name,kw", KERNELS, ids=lambda p: str(p))
@pytest.mark.parametrize("N,M,D", SHAPES)
def test_field_matches_finite_differences_of_dense_witness(name, kw, N, M, D, tiles, rng):
    x = rng.normal(size=(N, D))
    y = rng.normal(size=(M, D)) * 1.3 + 0.5
    sigma = 1.7
    got = gk.mmd_field(t64(x), t64(y), kernel=kernel_arg(name, kw), bandwidth=sigma).numpy()
    want = dense.witness_gradient_fd(name, x, y, x, sigma, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
def test_x_ref_weights_and_batch_dims(name, tiles, rng):
    B, N, M, L, D = (2, 3), 6, 8, 5, 2
    x = rng.normal(size=B + (N, D))
    y = rng.normal(size=B + (M, D)) + 1.0
    xr = rng.normal(size=B + (L, D))
    w = rng.uniform(0.1, 2.0, size=B + (M,))
    got = gk.mmd_field(t64(x), t64(y), kernel=name, bandwidth=0.8, x_ref=t64(xr), weights=t64(w)).numpy()
    assert got.shape == x.shape
    for idx in np.ndindex(*B):
        want = dense.witness_gradient_fd(name, x[idx], y[idx], xr[idx], 0.8, weights=w[idx])
        np.testing.assert_allclose(got[idx], want, rtol=1e-6, atol=1e-8)


def test_several_bandwidths_sum_the_kernels(rng):
    x, y = t64(rng.normal(size=(10, 2))), t64(rng.normal(size=(12, 2)))
    bws = torch.tensor([0.3, 1.0, 4.0])
    got = gk.mmd_field(x, y, bandwidth=bws)
    want = sum(gk.mmd_field(x, y, bandwidth=float(b)) for b in bws)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_median_bandwidth_is_median_pairwise_distance_of_pooled_points(rng):
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(15, 3)) + 2
    sigma = dense.median_distance(np.concatenate([x, y]))
    assert float(gk.median_bandwidth(t64(x), t64(y))) == pytest.approx(sigma, rel=1e-12)
    got = gk.mmd_field(t64(x), t64(y), bandwidth="median")
    torch.testing.assert_close(got, gk.mmd_field(t64(x), t64(y), bandwidth=sigma))


@pytest.mark.parametrize("n", [1, 2, 5, 8, 601])
def test_median_selection_equals_numpy_median_with_ties(rng, n):
    # The heuristic selects the middle values instead of sorting; ties decide the upper one.
    from gpflow_kernels._bandwidth import _median

    for d in (rng.random(size=(3, n)), rng.integers(0, 4, size=(3, n)).astype(float)):
        np.testing.assert_allclose(_median(t64(d)).numpy(), np.median(d, axis=-1), rtol=1e-15)


def test_field_is_minus_half_n_times_gradient_of_mmd2(rng):
    x = t64(rng.normal(size=(11, 4))).requires_grad_()
    y = t64(rng.normal(size=(9, 4)) + 0.5)
    (g,) = torch.autograd.grad(gk.mmd2(x, y, kernel="imq", bandwidth=1.5), x)
    field = gk.mmd_field(x.detach(), y, kernel="imq", bandwidth=1.5)
    torch.testing.assert_close(field, -0.5 * 11 * g)


def test_large_d_uses_matrix_products_accurately_in_float32(rng):
    # D = 64 takes the |x|² + |y|² − 2x·y path; data far from the origin checks the centring.
    x = rng.normal(size=(40, 64)) + 100.0
    y = rng.normal(size=(30, 64)) + 100.3
    sigma = 8.0
    want = dense.witness_gradient_fd("gaussian", x, y, x, sigma)
    got = gk.mmd_field(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), bandwidth=sigma)
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-3, atol=2e-4 * np.abs(want).max())


@pytest.mark.parametrize("name", ["laplace", "energy"])
def test_singular_kernels_give_no_self_force_in_matmul_path(name, rng):
    x = rng.normal(size=(12, 20))
    y = rng.normal(size=(10, 20))
    got = gk.mmd_field(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), kernel=name, bandwidth=3.0)
    want = dense.witness_gradient_fd(name, x, y, x, 3.0)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-3, atol=1e-4)


def test_half_precision_inputs_compute_in_float32(rng):
    x = torch.tensor(rng.normal(size=(16, 3)), dtype=torch.float32)
    y = torch.tensor(rng.normal(size=(16, 3)), dtype=torch.float32)
    want = gk.mmd_field(x, y, bandwidth=1.0)
    for dt in (torch.bfloat16, torch.float16):
        got = gk.mmd_field(x.to(dt), y.to(dt), bandwidth=1.0)
        assert got.dtype == dt
        torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("name", ["gaussian", "imq", "laplace", Polyharmonic(order=3.0)])
def test_gradcheck(name, tiles):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 2, dtype=torch.float64, generator=g).requires_grad_()
    y = (torch.randn(4, 2, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    xr = torch.randn(3, 2, dtype=torch.float64, generator=g).requires_grad_()
    w = torch.rand(4, dtype=torch.float64, generator=g).add(0.2).requires_grad_()
    f = lambda x, y, xr, w: gk.mmd_field(x, y, kernel=name, bandwidth=0.9, x_ref=xr, weights=w)
    assert torch.autograd.gradcheck(f, (x, y, xr, w))
    assert torch.autograd.gradcheck(lambda x, y: gk.mmd_field(x, y, kernel=name, bandwidth=0.9), (x, y))


def test_gradcheck_large_d_and_batch():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 11, dtype=torch.float64, generator=g).requires_grad_()
    y = torch.randn(2, 5, 11, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: gk.mmd_field(x, y, bandwidth=3.0), (x, y))


def test_double_backward_raises_clearly():
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(gk.mmd_field(x, y).sum(), x, create_graph=True)


def test_flow_moves_particles_toward_data():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(200, 2, generator=g) * 0.5 + torch.tensor([3.0, -1.0])
    x = torch.randn(150, 2, generator=g)
    before = float(gk.mmd2(x, y))
    for _ in range(50):
        x = x + 1.0 * 150 * gk.mmd_field(x, y) / 50
    assert float(gk.mmd2(x, y)) < 0.2 * before

import math

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import rbf_kernel

import gpflow_kernels as gk
from gpflow_kernels.kernels import Polyharmonic

import dense
from conftest import t64


@pytest.mark.parametrize("N,M,D,P", [(6, 9, 1, 1), (11, 13, 3, 4), (7, 5, 17, 2), (5, 8, 130, 3)])
def test_gaussian_matches_sklearn(N, M, D, P, tiles, rng):
    x, y, v = rng.normal(size=(N, D)), rng.normal(size=(M, D)), rng.normal(size=(M, P))
    sigma = 0.8 * np.sqrt(D)
    want = rbf_kernel(x, y, gamma=1 / (2 * sigma**2)) @ v
    got = gk.kernel_integral(t64(x), t64(y), t64(v), bandwidth=sigma)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["imq", "laplace", "energy"])
def test_other_kernels_and_value_shapes(name, tiles, rng):
    x, y = rng.normal(size=(2, 7, 3)), rng.normal(size=(2, 9, 3))
    v = rng.normal(size=(2, 9))
    got_vec = gk.kernel_integral(t64(x), t64(y), t64(v), kernel=name, bandwidth=1.1)
    got_none = gk.kernel_integral(t64(x), t64(y), kernel=name, bandwidth=1.1)
    assert got_vec.shape == (2, 7) and got_none.shape == (2, 7)
    for b in range(2):
        K = dense.kernel_matrix(name, x[b], y[b], 1.1)
        np.testing.assert_allclose(got_vec[b].numpy(), K @ v[b], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got_none[b].numpy(), K.sum(1), rtol=1e-10, atol=1e-12)


def test_polyharmonic_from_penalty(rng):
    # m = 2, n = 3: the Poly-WGAN kernel exponent is 2m - n = 1.
    kern = Polyharmonic.from_penalty(2, 3)
    assert kern.order == 1.0
    x, y, v = rng.normal(size=(5, 3)), rng.normal(size=(6, 3)), rng.normal(size=(6, 1))
    got = gk.kernel_integral(t64(x), t64(y), t64(v), kernel=kern, bandwidth=2.0)
    np.testing.assert_allclose(got.numpy(), dense.kernel_matrix("energy", x, y, 2.0) @ v, rtol=1e-12)


@pytest.mark.parametrize("name", ["gaussian", "imq", "laplace"])
def test_gradcheck_x_y_v(name, tiles):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 3, dtype=torch.float64, generator=g).requires_grad_()
    y = torch.randn(6, 3, dtype=torch.float64, generator=g).requires_grad_()
    v = torch.randn(6, 2, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y, v: gk.kernel_integral(x, y, v, kernel=name, bandwidth=1.3), (x, y, v))


def test_gradcheck_matmul_path():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 12, dtype=torch.float64, generator=g).requires_grad_()
    y = torch.randn(5, 12, dtype=torch.float64, generator=g).requires_grad_()
    v = torch.randn(5, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y, v: gk.kernel_integral(x, y, v, bandwidth=3.0), (x, y, v))


def test_non_contiguous_inputs(rng):
    x = t64(rng.normal(size=(3, 8))).t()  # (8, 3), non-contiguous
    y = t64(rng.normal(size=(4, 10))).t()[:, :3]  # (10, 3) view
    assert not x.is_contiguous()
    got = gk.kernel_integral(x, y)
    want = dense.kernel_matrix("gaussian", x.numpy(), y.numpy(), 1.0).sum(1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_exp_floor_keeps_values_and_only_raises_underflowing_ones():
    from gpflow_kernels.kernels import EXP_FLOOR, exp_

    for dt in (torch.float32, torch.float64):
        a = torch.linspace(-900, 5, 1001, dtype=dt)
        got = exp_(a.clone())
        keep = a >= EXP_FLOOR[dt]
        torch.testing.assert_close(got[keep], torch.exp(a[keep]), rtol=2 * torch.finfo(dt).eps, atol=0)
        assert torch.equal(got[~keep], torch.full_like(got[~keep], math.exp(EXP_FLOOR[dt])))


def test_far_apart_points_give_negligible_gaussian_integrals():
    # Every pair is ~10^4 bandwidths apart: exact value ~e^-(5e7); ours is at most M e^-80.
    x = torch.zeros(3, 2)
    y = torch.full((4, 2), 100.0)
    out = gk.kernel_integral(x, y, torch.ones(4, 1), bandwidth=0.01)
    assert torch.isfinite(out).all() and float(out.abs().max()) <= 4 * math.exp(-80) * 1.01

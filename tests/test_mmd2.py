import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.metrics.pairwise import rbf_kernel

import gpflow_kernels as gk
from gpflow_kernels.kernels import Polyharmonic

import dense
from conftest import t64


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("N,M,D", [(9, 7, 1), (12, 15, 5), (8, 10, 30)])
def test_gaussian_matches_sklearn_rbf(N, M, D, unbiased, tiles, rng):
    x, y = rng.normal(size=(N, D)), rng.normal(size=(M, D)) + 0.3
    sigma = 1.4
    gamma = 1.0 / (2 * sigma**2)
    kxx, kyy, kxy = rbf_kernel(x, x, gamma=gamma), rbf_kernel(y, y, gamma=gamma), rbf_kernel(x, y, gamma=gamma)
    if unbiased:
        want = (kxx.sum() - N) / (N * (N - 1)) + (kyy.sum() - M) / (M * (M - 1)) - 2 * kxy.mean()
    else:
        want = kxx.mean() + kyy.mean() - 2 * kxy.mean()
    got = gk.mmd2(t64(x), t64(y), bandwidth=sigma, unbiased=unbiased)
    assert got.shape == ()
    assert float(got) == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_energy_kernel_gives_scipy_energy_distance_squared(tiles, rng):
    u, v = rng.normal(size=40), rng.exponential(size=33)
    got = gk.mmd2(t64(u[:, None]), t64(v[:, None]), kernel="energy")
    assert float(got) == pytest.approx(scipy.stats.energy_distance(u, v) ** 2, rel=1e-10)


@pytest.mark.parametrize("name,kw", [("imq", {}), ("laplace", {}), ("polyharmonic", {"order": 1.5}),
                                      ("polyharmonic", {"order": 0.0, "eps": 0.3})])
@pytest.mark.parametrize("unbiased", [False, True])
def test_other_kernels_match_dense(name, kw, unbiased, tiles, rng):
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(13, 3)) + 0.4
    kern = Polyharmonic(**kw) if name == "polyharmonic" else name
    got = gk.mmd2(t64(x), t64(y), kernel=kern, bandwidth=0.9, unbiased=unbiased)
    assert float(got) == pytest.approx(dense.mmd2(name, x, y, 0.9, unbiased=unbiased, **kw), rel=1e-10, abs=1e-12)


def test_batch_dims_and_several_bandwidths(rng):
    x, y = rng.normal(size=(3, 2, 8, 2)), rng.normal(size=(3, 2, 6, 2))
    bws = [0.5, 2.0]
    got = gk.mmd2(t64(x), t64(y), bandwidth=torch.tensor(bws), unbiased=True)
    assert got.shape == (3, 2)
    for idx in np.ndindex(3, 2):
        assert float(got[idx]) == pytest.approx(dense.mmd2("gaussian", x[idx], y[idx], bws, unbiased=True), rel=1e-10)


def test_gradcheck_both_arguments(tiles):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 3, dtype=torch.float64, generator=g).requires_grad_()
    y = torch.randn(2, 4, 3, dtype=torch.float64, generator=g).requires_grad_()
    for unbiased in (False, True):
        for kern in ("gaussian", "laplace"):
            assert torch.autograd.gradcheck(lambda a, b: gk.mmd2(a, b, kernel=kern, unbiased=unbiased), (x, y))


def test_is_zero_for_identical_samples_and_positive_otherwise(rng):
    x = t64(rng.normal(size=(20, 2)))
    assert abs(float(gk.mmd2(x, x))) < 1e-14
    assert float(gk.mmd2(x, x + 1.0)) > 0.1

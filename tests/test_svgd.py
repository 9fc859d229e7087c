import numpy as np
import pytest
import torch

import gpflow_kernels as gk

import dense
from conftest import t64


@pytest.mark.parametrize("N,D", [(6, 1), (9, 2), (7, 5)])
def test_matches_dense_formula(N, D, tiles, rng):
    x, s = rng.normal(size=(N, D)), rng.normal(size=(N, D))
    got = gk.svgd_field(t64(x), t64(s), bandwidth=0.9).numpy()
    np.testing.assert_allclose(got, dense.svgd(x, s, 0.9), rtol=1e-10, atol=1e-12)


def test_median_rule_of_liu_and_wang(rng):
    x, s = rng.normal(size=(12, 2)), rng.normal(size=(12, 2))
    sigma = dense.median_distance(x) / np.sqrt(2 * np.log(13))
    got = gk.svgd_field(t64(x), t64(s)).numpy()
    np.testing.assert_allclose(got, dense.svgd(x, s, sigma), rtol=1e-10, atol=1e-12)


def test_batch_dims(rng):
    x, s = rng.normal(size=(3, 6, 2)), rng.normal(size=(3, 6, 2))
    got = gk.svgd_field(t64(x), t64(s), bandwidth=1.2).numpy()
    for b in range(3):
        np.testing.assert_allclose(got[b], dense.svgd(x[b], s[b], 1.2), rtol=1e-10, atol=1e-12)


def test_gradcheck():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(5, 2, dtype=torch.float64, generator=g).requires_grad_()
    s = torch.randn(5, 2, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, s: gk.svgd_field(x, s, bandwidth=0.8), (x, s))


def test_svgd_moves_particles_to_a_gaussian_target():
    # Target N(2, 0.5² I): the particles' mean and spread converge to it.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 2, generator=g, dtype=torch.float64) * 0.1 - 1.0
    for _ in range(400):
        x = x + 0.05 * gk.svgd_field(x, -(x - 2.0) / 0.25)
    assert torch.allclose(x.mean(0), torch.full((2,), 2.0, dtype=torch.float64), atol=0.05)
    assert torch.allclose(x.std(0), torch.full((2,), 0.5, dtype=torch.float64), atol=0.1)

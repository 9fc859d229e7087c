import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn.neighbors import KernelDensity

import gpflow_kernels as gk

from conftest import t64


def sklearn_score_fd(x, y, sigma, h=1e-5):
    """∇ log KDE by central differences of scikit-learn's KernelDensity log-density."""
    kde = KernelDensity(bandwidth=sigma, kernel="gaussian", rtol=0, atol=0).fit(y)
    out = np.zeros_like(x)
    for d in range(x.shape[1]):
        e = np.zeros(x.shape[1])
        e[d] = h
        out[:, d] = (kde.score_samples(x + e) - kde.score_samples(x - e)) / (2 * h)
    return out


@pytest.mark.parametrize("N,M,D", [(8, 13, 1), (10, 7, 2), (6, 9, 3)])
@pytest.mark.parametrize("sigma", [0.3, 1.0])
def test_score_matches_finite_differences_of_sklearn_kde(N, M, D, sigma, tiles, rng):
    x, y = rng.normal(size=(N, D)), rng.normal(size=(M, D))
    got = gk.kde_score(t64(x), t64(y), bandwidth=sigma).numpy()
    np.testing.assert_allclose(got, sklearn_score_fd(x, y, sigma), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("D", [1, 3, 17, 64])
def test_denoiser_is_softmax_weighted_mean(D, tiles, rng):
    x, y = rng.normal(size=(2, 9, D)), rng.normal(size=(2, 11, D))
    sigma = 0.5 * np.sqrt(D)
    got = gk.kde_denoiser(t64(x), t64(y), bandwidth=sigma).numpy()
    for b in range(2):
        r2 = ((x[b][:, None] - y[b][None]) ** 2).sum(-1)
        np.testing.assert_allclose(got[b], softmax(-r2 / (2 * sigma**2), axis=1) @ y[b], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("D", [2, 32])
def test_tiny_bandwidth_is_stable(D, tiles, rng):
    # exp(−r²/(2σ²)) underflows to 0 for every pair here; the log-sum-exp must not.
    y = rng.normal(size=(20, D)) * 10
    x = y[[3, 7, 11]] + 0.05 * rng.normal(size=(3, D))
    for dt in (torch.float32, torch.float64):
        den = gk.kde_denoiser(torch.tensor(x, dtype=dt), torch.tensor(y, dtype=dt), bandwidth=1e-3)
        assert torch.isfinite(den).all()
        np.testing.assert_allclose(den.numpy(), y[[3, 7, 11]], rtol=1e-5, atol=1e-4)
        score = gk.kde_score(torch.tensor(x, dtype=dt), torch.tensor(y, dtype=dt), bandwidth=1e-3)
        assert torch.isfinite(score).all()


def test_score_is_tweedie_of_denoiser(rng):
    x, y = t64(rng.normal(size=(7, 2))), t64(rng.normal(size=(5, 2)))
    torch.testing.assert_close(gk.kde_score(x, y, bandwidth=0.7), (gk.kde_denoiser(x, y, bandwidth=0.7) - x) / 0.49)


@pytest.mark.parametrize("D", [2, 12])
def test_gradcheck(D, tiles):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(5, D, dtype=torch.float64, generator=g).requires_grad_()
    y = torch.randn(7, D, dtype=torch.float64, generator=g).requires_grad_()
    s = 0.8 * D**0.5
    assert torch.autograd.gradcheck(lambda x, y: gk.kde_denoiser(x, y, bandwidth=s), (x, y))
    assert torch.autograd.gradcheck(lambda x, y: gk.kde_score(x, y, bandwidth=s), (x, y))


def test_several_bandwidths_are_rejected():
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="single bandwidth"):
        gk.kde_score(x, x, bandwidth=torch.tensor([0.1, 0.2]))


@pytest.mark.parametrize("D", [2, 32])
def test_small_bandwidth_with_most_pairs_past_the_exp_floor(D, tiles, rng):
    # Logits of most pairs lie far below exp's underflow (clamped at EXP_FLOOR for speed), a few
    # neighbours still matter: the float32 result must keep the float64 softmax's digits.
    y = rng.normal(size=(40, D)) * 5
    x = 0.5 * (y[:5] + y[5:10]) + 0.02 * rng.normal(size=(5, D))
    sigma = 0.2 * np.sqrt(D)
    r2 = ((x[:, None] - y[None]) ** 2).sum(-1)
    logits = -r2 / (2 * sigma**2)
    assert (logits - logits.max(1, keepdims=True) < -80).mean() > 0.5
    want = softmax(logits, axis=1) @ y
    got = gk.kde_denoiser(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), bandwidth=sigma)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4 * np.abs(y).max())

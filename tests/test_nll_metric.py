"""final.nll: the held-out NLL equals the closed form on Gaussian data, in nats/dim and bits/dim."""

import math
from types import SimpleNamespace

import pytest
import torch

import solvers
from gpflow_kernels.data.dataset import Dataset
from gpflow_kernels.methods.base import LikelihoodFlow
from gpflow_kernels.methods.nll import held_out_nll
from gpflow_kernels.methods.parallel import SINGLE

S2 = 0.7  # data variance per coordinate
SMIN, SMAX = 0.01, 30.0


def gaussian_model(nll_points):
    """A stand-in method whose flow is the exact EDM probability-flow ODE of N(0, S2 I) data."""
    def flow(generator):
        field = solvers.EDMFlow(lambda x, s: x * S2 / (S2 + s**2))
        return LikelihoodFlow(field, torch.tensor([SMIN, SMAX]), solvers.gaussian_log_prob(math.sqrt(S2 + SMAX**2)), "exact")

    return SimpleNamespace(opts=SimpleNamespace(nll_points=nll_points), device=torch.device("cpu"), likelihood_flow=flow)


def gauss_nats_per_dim(y):
    v = S2 + SMIN**2
    return float((0.5 * y.double() ** 2 / v + 0.5 * math.log(2 * math.pi * v)).mean())


def test_points_nll_is_the_gaussian_nats_per_dim():
    g = torch.Generator().manual_seed(0)
    test = math.sqrt(S2) * torch.randn(300, 2, generator=g)
    ds = Dataset("g", test, test)
    res = held_out_nll(gaussian_model(200), ds, SINGLE)
    assert res["units"] == "nats/dim" and res["points"] == 200 and res["divergence"] == "exact"
    assert res["value"] == pytest.approx(gauss_nats_per_dim(test[:200]), abs=1e-4)
    assert held_out_nll(gaussian_model(0), ds, SINGLE) is None


def test_image_nll_is_dequantised_bits_per_dim():
    levels, seed = 5, 3
    g = torch.Generator().manual_seed(1)
    grid = torch.linspace(-1, 1, levels)
    test = grid[torch.randint(0, levels, (40, 4), generator=g)]
    ds = Dataset("img", test, test, image_shape=(2, 2), levels=levels)
    res = held_out_nll(gaussian_model(40), ds, SINGLE, seed=seed)
    delta = 2 / (levels - 1)
    u = torch.rand(test.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    want = (gauss_nats_per_dim(test.double() + (u - 0.5) * delta) - math.log(delta)) / math.log(2)
    assert res["units"] == "bits/dim" and res["value"] == pytest.approx(want, abs=1e-4)


def test_a_method_without_density_gives_none():
    m = SimpleNamespace(opts=SimpleNamespace(nll_points=10), device=torch.device("cpu"), likelihood_flow=lambda g: None)
    x = torch.zeros(5, 2)
    assert held_out_nll(m, Dataset("g", x, x), SINGLE) is None


def test_log_prob_falls_back_to_autograd_for_our_fused_ops():
    # kde_score is a custom autograd.Function (no torch.func support): the same numbers as plain torch.
    import gpflow_kernels as gk

    g = torch.Generator().manual_seed(0)
    data = torch.randn(40, 2, generator=g, dtype=torch.float64)
    x = torch.randn(5, 2, generator=g, dtype=torch.float64)

    def plain(t, y):
        d = y[:, None, :] - data[None]
        w = torch.softmax(-d.square().sum(-1) / (2 * 0.25), 1)
        return -(w[..., None] * d).sum(1) / 0.25

    ts, prior = torch.tensor([0.0, 1.0]), solvers.gaussian_log_prob()
    with torch.no_grad():
        fused = solvers.log_prob(lambda t, y: gk.kde_score(y, data, bandwidth=0.5), x, ts, prior)
    torch.testing.assert_close(fused, solvers.log_prob(plain, x, ts, prior), rtol=0, atol=1e-10)


def test_compare_table_has_an_nll_column_with_a_dash_where_there_is_no_density():
    from gpflow_kernels.methods.runner import compare_table

    common = {"nfe": 1, "sample_seconds": 0.1, "train_seconds": 1.0, "mmd2": 0.01, "energy": 0.02}
    rows = [{"method": "gan", "kind": "Int-PM", **common}, {"method": "edm", "kind": "PM", **common, "nll": 1.25}]
    lines = compare_table(rows, "moons", 0, 50)
    assert "| mmd2 | energy | nll |" in lines[2]
    assert lines[4].startswith("| gan | Int-PM | 0.01 | 0.02 | — |") and lines[5].startswith("| edm | PM | 0.01 | 0.02 | 1.25 |")
    assert any(line.startswith("nll: held-out negative log-likelihood") for line in lines)

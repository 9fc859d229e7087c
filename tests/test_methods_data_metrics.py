"""Embedded data sets and the sample-quality metrics, against SciPy / scikit-learn / numpy."""

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from sklearn.metrics.pairwise import rbf_kernel

from gpflow_kernels import data as D
from gpflow_kernels.data import embedded as E
from gpflow_kernels.methods import metrics as M


@pytest.mark.parametrize("name", ["8gaussians", "moons", "checkerboard", "swissroll"])
def test_toy_sets_are_seeded_2d_and_unit_scale(name):
    a, b = D.load(name, n_train=500, n_test=300, seed=3), D.load(name, n_train=500, n_test=300, seed=3)
    assert a.train.shape == (500, 2) and a.test.shape == (300, 2) and a.train.dtype == torch.float32
    assert torch.equal(a.train, b.train) and not torch.equal(a.train, D.load(name, n_train=500, seed=4).train)
    assert not a.is_image and 0.4 < float(a.train.std()) < 2.5


def test_eight_gaussians_sit_on_the_circle_and_checkerboard_on_black_squares():
    g = torch.Generator().manual_seed(0)
    r = E.eight_gaussians(2000, g).norm(dim=1)
    assert abs(float(r.mean()) - 2.0) < 0.02
    c = E.checkerboard(2000, g)
    assert float(c.abs().max()) <= 2.0
    parity = torch.floor(c + 2.0).sum(1) % 2  # cells 0..3 on each axis: one colour of the board
    assert bool((parity == parity[0]).all())


def test_digits_are_sklearns_images_in_minus_one_one():
    d = D.load("digits")
    assert d.is_image and d.image_shape == (8, 8) and d.dim == 64
    assert len(d.train) + len(d.test) == 1797 and float(d.train.min()) == -1.0 and float(d.train.max()) == 1.0
    assert set(d.test_labels.tolist()) == set(range(10))


def test_unknown_data_set_is_named():
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        D.load("mnist")


def test_energy_distance_matches_scipy_in_1d():
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=300), rng.normal(0.5, 2.0, size=200)
    ours = M.energy_distance(torch.tensor(u)[:, None], torch.tensor(v)[:, None])
    assert ours == pytest.approx(scipy.stats.energy_distance(u, v) ** 2, rel=1e-9)


def test_mmd2_metric_matches_dense_unbiased_rbf_sum():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(150, 3)), rng.normal(0.3, 1.0, size=(120, 3))
    dists = np.sqrt(((y[:, None] - y[None]) ** 2).sum(-1))
    med = np.median(dists[np.triu_indices(len(y), 1)])

    def k(a, b):
        return sum(rbf_kernel(a, b, gamma=1.0 / (2 * (s * med) ** 2)) for s in M.MMD_SCALES)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    want = (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
    assert M.mmd2_metric(torch.tensor(x), torch.tensor(y)) == pytest.approx(want, rel=1e-3, abs=1e-6)


def test_frechet_distance_matches_the_scipy_sqrtm_formula():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(1.0, 1.0, size=(300, 5)) @ rng.normal(size=(5, 5))
    ca, cb = np.cov(a.T), np.cov(b.T)
    want = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real)
    assert M.frechet_distance(torch.tensor(a), torch.tensor(b)) == pytest.approx(want, rel=1e-7)
    assert M.frechet_distance(torch.tensor(a), torch.tensor(a)) == pytest.approx(0.0, abs=1e-8)


def test_class_coverage_counts_classes_with_half_their_share():
    assert M.class_coverage(torch.arange(10).repeat(5)) == 1.0
    assert M.class_coverage(torch.zeros(100, dtype=torch.long)) == 0.1
    labels = torch.cat([torch.arange(5).repeat(19), torch.tensor([5] * 5)])  # class 5 has 5 % = half of 10 %
    assert M.class_coverage(labels) == 0.6


def test_digits_classifier_is_accurate_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GPFLOW_CACHE", str(tmp_path))
    d = D.load("digits")
    state = torch.get_rng_state()
    clf = M.image_classifier(d)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG stream is untouched
    acc = float((clf(d.test).argmax(1) == d.test_labels).double().mean())
    assert acc > 0.93
    assert (tmp_path / "digits_classifier_v1.pt").exists()
    again = M.image_classifier(d)
    assert torch.equal(again(d.test), clf(d.test))
    scores = M.evaluate(d.test, d, clf)
    assert scores["coverage"] == 1.0 and abs(scores["fd"]) < 1e-6 and scores["mmd2"] < 0.01


def test_evaluate_rejects_non_finite_samples():
    d = D.load("moons", n_train=100, n_test=100)
    with pytest.raises(ValueError, match="non-finite"):
        M.evaluate(torch.full((10, 2), float("nan")), d)


def test_torch_free_catalogues_match_the_modules():
    """methods/options.py lists data sets, kernels and methods without importing torch; they must match."""
    from gpflow_kernels.kernels import KERNELS
    from gpflow_kernels.methods import METHODS, OPTIONS
    from gpflow_kernels.methods.options import DATA_NAMES, IMAGE_DATA, KERNEL_NAMES

    assert set(E.TOY) | {"digits"} == set(DATA_NAMES) and IMAGE_DATA == ("digits",)
    assert set(KERNEL_NAMES) == set(KERNELS)
    assert list(METHODS) == list(OPTIONS) and all(METHODS[m].Options is OPTIONS[m] for m in METHODS)


def test_five_gaussians_is_the_gpm_reference_mixture():
    x = D.load("5gaussians", n_train=20000, n_test=2).train.double()
    r = x.norm(dim=1)
    assert abs(float(r.mean()) - 3.0) < 0.1
    angles = torch.atan2(x[:, 1], x[:, 0])
    mode = torch.round(angles / (2 * torch.pi / 5)).remainder(5)
    counts = torch.bincount(mode.long(), minlength=5).double() / len(x)
    assert float((counts - 0.2).abs().max()) < 0.02
    centre = 3.0 * torch.stack([torch.cos(mode * 2 * torch.pi / 5), torch.sin(mode * 2 * torch.pi / 5)], 1)
    assert abs(float((x - centre).std()) - 0.5) < 0.02

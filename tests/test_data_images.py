"""Image data from arrays and IDX files: formats, scaling, resizing (against PIL), KID (against
scikit-learn), bad data, and a few training steps of every method on a 16-image set."""

import numpy as np
import pytest
import torch

from gpflow_kernels.data import load
from gpflow_kernels.data.images import read_idx, resize_center_crop, resized
from gpflow_kernels.methods import METHODS
from gpflow_kernels.methods import metrics as M
from gpflow_kernels.methods.runner import RunError, run_method

from conftest import digit_images, idx_bytes


def test_idx_gz_with_labels_beside(idx_set):
    path, x, y = idx_set
    ds = load(str(path), seed=0)
    assert ds.image_shape == (8, 8) and ds.levels == 256 and ds.train.shape == (13, 64) and ds.test.shape == (3, 64)
    # Pixels scaled x / 127.5 − 1, and each image keeps its own label.
    flat = torch.from_numpy(x.reshape(16, 64)).float() / 127.5 - 1
    for img, lab in zip(torch.cat([ds.train, ds.test]), torch.cat([ds.train_labels, ds.test_labels])):
        k = int((flat - img).abs().sum(1).argmin())
        assert torch.equal(flat[k], img) and int(y[k]) == int(lab)


def test_idx_reader_handles_types_and_byte_order(tmp_path):
    a = np.arange(-6, 6, dtype=np.int16).reshape(3, 2, 2) * 1000
    (tmp_path / "s-idx3-ubyte").write_bytes(idx_bytes(a, 0x0B, ">i2"))
    np.testing.assert_array_equal(read_idx(tmp_path / "s-idx3-ubyte"), a)


@pytest.mark.parametrize("kind", ["npy_nchw_uint8", "npy_nhw_float01", "npz_labels", "pt_rgb"])
def test_array_files(tmp_path, kind):
    g = np.random.RandomState(0)
    if kind == "npy_nchw_uint8":
        a = g.randint(0, 256, (10, 1, 5, 7)).astype(np.uint8)
        np.save(tmp_path / "a.npy", a)
        ds, shape, levels = load(str(tmp_path / "a.npy")), (5, 7), 256
        ref = a.reshape(10, -1) / 127.5 - 1
    elif kind == "npy_nhw_float01":
        a = g.rand(10, 4, 4).astype(np.float32)
        np.save(tmp_path / "a.npy", a)
        ds, shape, levels = load(str(tmp_path / "a.npy")), (4, 4), None
        ref = 2 * a.reshape(10, -1) - 1
    elif kind == "npz_labels":
        a = g.rand(10, 4, 4).astype(np.float32) * 2 - 1
        np.savez(tmp_path / "a.npz", images=a, labels=np.arange(10) % 3)
        ds, shape, levels = load(str(tmp_path / "a.npz")), (4, 4), None
        ref = a.reshape(10, -1)
        assert sorted(torch.cat([ds.train_labels, ds.test_labels]).tolist()) == sorted((np.arange(10) % 3).tolist())
    else:
        a = g.rand(10, 3, 4, 6).astype(np.float32)
        torch.save({"x": torch.from_numpy(a), "y": torch.arange(10)}, tmp_path / "a.pt")
        ds, shape, levels = load(str(tmp_path / "a.pt")), (3, 4, 6), None
        ref = 2 * a.reshape(10, -1) - 1
    assert ds.image_shape == shape and ds.levels == levels and ds.is_image
    got = torch.cat([ds.train, ds.test]).double()
    want = torch.from_numpy(ref).double()
    assert torch.allclose(got.sort(0).values, want.sort(0).values, atol=1e-6)


def test_resize_and_centre_crop_match_pil():
    from PIL import Image

    x = torch.rand(2, 1, 9, 12, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for size in (4, 5, 15):
        nh, nw = size, int(size * 12 / 9)  # torchvision's truncation of the longer side
        top, left = (nh - size) // 2, (nw - size) // 2
        ref = [np.asarray(Image.fromarray(im, mode="F").resize((nw, nh), Image.BILINEAR))[top:top + size, left:left + size]
               for im in x[:, 0].numpy()]
        torch.testing.assert_close(resize_center_crop(x, size)[:, 0], torch.tensor(np.clip(np.stack(ref), -1, 1)),
                                   rtol=0, atol=2e-6)


def test_resized_dataset_and_points_refuse_image_size(idx_set):
    ds = resized(load(str(idx_set[0])), 6)
    assert ds.image_shape == (6, 6) and ds.train.shape[1] == 36 and ds.levels is None
    with pytest.raises(ValueError, match="image_size applies to image data"):
        resized(load("moons"), 6)


def test_kid_matches_scikit_learn_polynomial_kernel():
    from sklearn.metrics.pairwise import polynomial_kernel

    g = torch.Generator().manual_seed(0)
    fx, fy = torch.randn(30, 5, generator=g, dtype=torch.float64), torch.randn(40, 5, generator=g, dtype=torch.float64) + 0.3
    k = lambda a, b: polynomial_kernel(a.numpy(), b.numpy(), degree=3, gamma=1 / 5, coef0=1)
    kxx, kyy, kxy = k(fx, fx), k(fy, fy), k(fx, fy)
    want = ((kxx.sum() - np.trace(kxx)) / (30 * 29) + (kyy.sum() - np.trace(kyy)) / (40 * 39) - 2 * kxy.mean())
    assert M.kid(fx, fy) == pytest.approx(want, rel=1e-12)


def _write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("case,match", [
    ("nan", "NaN or infinite pixel values"),
    ("channels", r"C = 1 or 3 channels"),
    ("range", r"float pixels in \[0, 5\]"),
    ("int_range", r"integer pixels in \[0, 300\]"),
    ("magic", "not an IDX file"),
    ("truncated", "needs"),
    ("labels_count", "holds 3 labels for the 16 images"),
    ("labels_negative", "whole numbers >= 0"),
    ("too_few", "at least 4 are needed"),
])
def test_bad_image_data(tmp_path, case, match):
    x, _ = digit_images()
    if case == "nan":
        a = np.random.default_rng(3).random((6, 4, 4)).astype(np.float32)
        a[3, 1, 1] = np.nan
        np.save(tmp_path / "a.npy", a)
        path = str(tmp_path / "a.npy")
    elif case == "channels":
        np.save(tmp_path / "a.npy", np.zeros((6, 2, 4, 4), np.uint8))
        path = str(tmp_path / "a.npy")
    elif case == "range":
        np.save(tmp_path / "a.npy", np.linspace(0, 5, 96, dtype=np.float32).reshape(6, 4, 4))
        path = str(tmp_path / "a.npy")
    elif case == "int_range":
        np.save(tmp_path / "a.npy", np.linspace(0, 300, 96).astype(np.int32).reshape(6, 4, 4))
        path = str(tmp_path / "a.npy")
    elif case == "magic":
        path = _write(tmp_path / "x-idx3-ubyte", b"\x12\x34\x08\x03" + bytes(20))
    elif case == "truncated":
        path = _write(tmp_path / "x-idx3-ubyte", idx_bytes(x)[:-10])
    elif case == "labels_count":
        path = _write(tmp_path / "x-images-idx3-ubyte", idx_bytes(x))
        _write(tmp_path / "x-labels-idx1-ubyte", idx_bytes(np.arange(3, dtype=np.uint8)))
    elif case == "labels_negative":
        np.savez(tmp_path / "a.npz", x=x, labels=-np.ones(16))
        path = str(tmp_path / "a.npz")
    else:
        np.save(tmp_path / "a.npy", x[:3])
        path = str(tmp_path / "a.npy")
    with pytest.raises(ValueError, match=match) as e:
        load(path)
    assert str(tmp_path) in str(e.value)  # the message names the file
    with pytest.raises(RunError, match=match):  # and a run stops before writing anything
        run_method("edm", path, tmp_path / "never", options={"steps": 1}, plots=False, progress=False, log=lambda s: None)
    assert not (tmp_path / "never").exists()


TINY = {
    "edm": {"steps": 3, "sample_steps": 3, "nll_points": 3},
    "score-gan": {"data_steps": 2, "steps": 2, "batch": 8},
    "disc-flow": {"steps": 2, "batch": 8, "flow_steps": 2},
    "disc-flow-gen": {"steps": 2, "distill_steps": 2, "batch": 8, "flow_steps": 2},
    "gan": {"steps": 2, "batch": 8},
    "diffflow": {"sample_steps": 3, "nll_points": 2},
    "mmd-guidance": {"steps": 2, "sample_steps": 3, "n_data": 10, "nll_points": 0},
    "mmd-flow": {"sample_steps": 3},
    "svgd": {"sample_steps": 3},
    "langevin": {"sample_steps": 2, "levels": 2},
}


def test_every_method_has_tiny_image_settings():
    assert set(TINY) == set(METHODS)


def test_every_method_trains_and_samples_on_a_16_image_set(idx_set, tmp_path, monkeypatch):
    monkeypatch.setenv("GPFLOW_CACHE", str(tmp_path / "cache"))
    for method in sorted(METHODS):
        res = run_method(method, str(idx_set[0]), tmp_path / method, options=TINY[method], n_samples=16,
                         plots=method == "edm", progress=False, log=lambda s: None)
        assert {"mmd2", "fd", "kid", "coverage"} <= set(res["final"]), method
    assert (tmp_path / "edm" / "samples.png").stat().st_size > 1000
    assert list((tmp_path / "cache").glob("classifier_v1_*.pt"))  # trained once on the labels, then cached


def test_a_users_torchscript_feature_network(idx_set, tmp_path, monkeypatch):
    monkeypatch.setenv("GPFLOW_CACHE", str(tmp_path / "cache"))

    class Pool(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 2).flatten(1)

    path = tmp_path / "features.pt"
    torch.jit.script(Pool()).save(str(path))
    kw = dict(n_samples=16, plots=False, progress=False, log=lambda s: None)
    res = run_method("gan", str(idx_set[0]), tmp_path / "f", options={"steps": 2, "batch": 8, "features": str(path)}, **kw)
    assert set(res["final"]) == {"mmd2", "fd", "kid"}  # no classes: no coverage
    torch.save({"not": "a script"}, tmp_path / "bad.pt")
    for bad, match in ((tmp_path / "bad.pt", "not a TorchScript file"), (tmp_path / "none.pt", "not a TorchScript file")):
        with pytest.raises(RunError, match=match):
            run_method("gan", str(idx_set[0]), tmp_path / "g", options={"steps": 2, "features": str(bad)}, **kw)
    assert not (tmp_path / "g").exists()
    with pytest.raises(RunError, match="features applies to image data"):
        run_method("gan", "moons", tmp_path / "h", options={"steps": 2, "features": str(path)}, **kw)

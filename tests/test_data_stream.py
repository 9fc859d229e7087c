"""Streamed data (gpflow_kernels.data.stream): the rows a streamed file gives equal those of the same
file loaded whole, minibatches are reproducible and resumable, and bad files still fail at start-up."""

import gzip
import json

import numpy as np
import pytest
import torch

from conftest import digit_images, idx_bytes
from gpflow_kernels.data import load
from gpflow_kernels.data import stream as S
from gpflow_kernels.data.images import resized
from gpflow_kernels.methods import get_method
from gpflow_kernels.methods.runner import RunError, RunFailed, run_method

X = np.random.default_rng(0).normal(size=(57, 3)).astype(np.float32)
QUIET = dict(n_samples=16, plots=False, progress=False, log=lambda s: None)


def _same_file_both_ways(path, **kw):
    whole = load(str(path), seed=5, stream="off")
    streamed = load(str(path), seed=5, stream="on", **kw)
    return whole, streamed


def test_points_streamed_equal_points_loaded(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, X.astype(np.float64))
    whole, st = _same_file_both_ways(p, stream_subset=7)
    assert st.stream is not None and whole.stream is None
    assert isinstance(st.stream.rows.array, np.memmap)  # the file is mapped, not read
    assert torch.equal(st.test, whole.test)  # the same held-out rows
    assert torch.equal(st.train, whole.train[:7])  # the subset in memory: the first training rows
    assert torch.equal(st.stream.rows[st.stream.indices.numpy()], whole.train)  # every training row, in order


@pytest.mark.parametrize("kind", ["npy-uint8", "pt-float01-labels", "idx"])
def test_images_streamed_equal_images_loaded(tmp_path, kind):
    imgs, labels = digit_images(30)
    if kind == "npy-uint8":
        p = tmp_path / "im.npy"
        np.save(p, imgs[:, None])
    elif kind == "pt-float01-labels":
        p = tmp_path / "im.pt"
        torch.save({"images": torch.from_numpy(imgs / 255.0), "labels": torch.from_numpy(labels.astype(np.int64))}, p)
    else:
        p = tmp_path / "train-images-idx3-ubyte"
        p.write_bytes(idx_bytes(imgs))
        (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    whole, st = _same_file_both_ways(p)
    assert (st.image_shape, st.levels) == (whole.image_shape, whole.levels)
    assert torch.equal(st.test, whole.test) and torch.equal(st.stream.rows[st.stream.indices.numpy()], whole.train)
    if kind != "npy-uint8":
        assert torch.equal(st.train_labels, whole.train_labels) and torch.equal(st.test_labels, whole.test_labels)
    # resized as they are read: the same values as resizing the loaded set
    small = load(str(p), seed=5, stream="on", image_size=5)
    ref = resized(whole, 5)
    assert small.image_shape == (5, 5) and small.levels is None
    torch.testing.assert_close(small.stream.rows[small.stream.indices.numpy()], ref.train, rtol=0, atol=1e-6)
    torch.testing.assert_close(small.test, ref.test, rtol=0, atol=1e-6)


def test_batches_are_seeded_per_batch_whatever_the_workers(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, X)
    st = load(str(p), seed=0, stream="on").stream
    rows = st.rows[np.arange(len(X))]
    b0 = S.Batches(st, st.indices, 6, seed=11, device="cpu", workers=2)
    b1 = S.Batches(st, st.indices, 6, seed=11, device="cpu", workers=0)
    got0, got1 = [b0.next() for _ in range(5)], [b1.next() for _ in range(5)]
    for k, (a, b) in enumerate(zip(got0, got1)):
        want = rows[torch.from_numpy(S.SeededBatches(st.indices, 6, 11).rows_of(k))]
        assert torch.equal(a, want) and torch.equal(b, want)
    # a resumed reader continues where the first stopped
    b2 = S.Batches(st, st.indices, 6, seed=11, device="cpu", workers=2)
    b2.set_drawn(3)
    assert torch.equal(b2.next(), got0[3]) and b2.drawn == 4
    drawn = torch.cat(got0)
    train = set(map(tuple, rows[st.indices].tolist()))
    assert all(tuple(r) in train for r in drawn.tolist())  # never a held-out row
    for b in (b0, b1, b2):
        b.close()


class _Broken(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, idx):
        if 7 in list(idx):
            raise S.DataError("/data/x.npy: rows cannot be read (OSError: bad sector)")
        return torch.zeros(len(idx), 2)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_row_that_cannot_be_read_is_one_line(workers):
    b = S.Batches(S.Stream(_Broken(), torch.arange(10)), torch.tensor([7]), 3, seed=0, device="cpu", workers=workers)
    with pytest.raises(S.DataError) as e:
        b.next()
    assert str(e.value) == "/data/x.npy: rows cannot be read (OSError: bad sector)"
    b.close()


def test_auto_streams_only_what_does_not_fit(tmp_path, monkeypatch):
    p = tmp_path / "x.npy"
    np.save(p, X)
    assert load(str(p), stream="auto").stream is None
    monkeypatch.setattr(S, "available_memory", lambda: 4 * X.size)  # the file needs 4x a quarter of this
    assert load(str(p), stream="auto").stream is not None
    z = tmp_path / "x.npz"
    np.savez(z, X)
    assert load(str(z), stream="auto").stream is None  # cannot be read by row: loaded whole
    with pytest.raises(ValueError, match=r"x\.npz cannot be streamed \(\.npz files are read whole\); save the array "
                                         r"with numpy\.save"):
        load(str(z), stream="on")


@pytest.mark.parametrize("case, match", [
    ("nan", r"bad\.npy holds 2 NaN or infinite values \(the first in row 41\); remove or impute them"),
    ("overflow", r"bad\.npy: values overflow float32"),
    ("int-pixels", r"bad\.npy holds integer pixels in \[-3, 255\]; expected 0\.\.255"),
    ("float-pixels", r"bad\.npy holds float pixels in \[0, 2\]; expected \[0, 1\] or \[-1, 1\]"),
    ("nan-pixels", r"bad\.npy holds 1 NaN or infinite pixel values \(the first in image 9\)"),
    ("rank", r"bad\.npy holds an array of shape \(57,\); expected \(N, D\) points"),
    ("channels", r"bad\.npy holds an array of shape \(12, 2, 4, 4\); images must be"),
    ("gz-idx", r"cannot be streamed \(a gzipped IDX file is read whole; gunzip it\)"),
    ("embedded", r"stream=on reads a file by row; 'moons' is an embedded data set"),
])
def test_bad_streamed_data_fail_at_the_start(tmp_path, monkeypatch, case, match):
    monkeypatch.setattr(S, "SCAN_BYTES", 64)  # several chunks even for these tiny files
    p = tmp_path / "bad.npy"
    a = X.astype(np.float64)
    if case == "nan":
        a[41, 1], a[50, 0] = np.nan, np.inf
    elif case == "overflow":
        a[3, 0] = 1e300
    elif case == "int-pixels":
        a = np.full((12, 4, 4), 255, np.int16)
        a[5, 1, 1] = -3
    elif case == "float-pixels":
        a = np.linspace(0, 2, 12 * 16).reshape(12, 4, 4)
    elif case == "nan-pixels":
        a = np.zeros((12, 1, 4, 4))
        a[9, 0, 2, 2] = np.nan
    elif case == "rank":
        a = X[:, 0]
    elif case == "channels":
        a = np.zeros((12, 2, 4, 4), np.uint8)
    elif case == "gz-idx":
        p = tmp_path / "t-images-idx3-ubyte.gz"
    np.save(p, a) if p.suffix == ".npy" else p.write_bytes(gzip.compress(idx_bytes(digit_images(8)[0])))
    with pytest.raises(ValueError, match=match):
        load("moons" if case == "embedded" else str(p), stream="on")


def test_a_streamed_run_resumes_exactly_and_refuses_to_switch(tmp_path, monkeypatch):
    monkeypatch.setenv("GPFLOW_CACHE", str(tmp_path / "cache"))
    p = tmp_path / "x.npy"
    np.save(p, np.random.default_rng(1).normal(size=(300, 2)).astype(np.float32))
    opts = {"steps": 6, "batch": 16, "hidden": 16, "depth": 2, "sample_steps": 3, "nll_points": 0,
            "stream": "on", "stream_subset": 50}
    full = run_method("edm", str(p), tmp_path / "a", options=opts, **QUIET)
    assert run_method("edm", str(p), tmp_path / "b", options=opts, stop_after=4, **QUIET) == {"stopped_at": 4}
    ck = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ck["state"]["data.batches"] == 4
    resumed = run_method("edm", str(p), tmp_path / "b", options={**opts, "workers": 2}, resume=True, **QUIET)
    assert resumed["final"] == full["final"]
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["state"] for d in "ab")
    nets = [k for k in a if k.startswith("module.")]
    assert nets and all(torch.equal(a[n][k], b[n][k]) for n in nets for k in a[n])
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["train_points_per_second"] > 0
    run_method("edm", str(p), tmp_path / "c", options=opts, stop_after=2, **QUIET)
    with pytest.raises(RunError, match="the checkpoint's run read .* streamed, this one would not .* stream=on"):
        run_method("edm", str(p), tmp_path / "c", options={**opts, "stream": "off"}, resume=True, **QUIET)


def test_a_kernel_method_uses_the_subset_as_its_data(tmp_path, monkeypatch):
    monkeypatch.setenv("GPFLOW_CACHE", str(tmp_path / "cache"))
    p = tmp_path / "x.npy"
    np.save(p, np.random.default_rng(2).normal(size=(200, 2)).astype(np.float32))
    opts = {"stream": "on", "stream_subset": 40, "sample_steps": 3, "n_data": 500}
    ds = load(str(p), stream="on", stream_subset=40)
    m = get_method("mmd-flow")(ds, get_method("mmd-flow").make_options(ds, opts), "cpu")
    assert len(m.x_train) == 40 and m.batches is None  # the flow's data: the subset; no minibatches
    res = run_method("mmd-flow", str(p), tmp_path / "f", options=opts, **QUIET)
    assert np.isfinite(res["final"]["mmd2"]) and res["final"]["energy"] < res["init"]["energy"]


def test_a_row_lost_while_training_fails_the_run_with_the_file_named(tmp_path, monkeypatch):
    monkeypatch.setenv("GPFLOW_CACHE", str(tmp_path / "cache"))
    p = tmp_path / "x.npy"
    np.save(p, np.random.default_rng(1).normal(size=(100, 2)).astype(np.float32))
    real = S.ArrayRows.__getitem__
    calls = []

    def flaky(self, idx):
        calls.append(1)
        if len(calls) > 3:  # after the start-up reads and the first batch
            raise S.DataError(f"{self.path}: rows cannot be read (OSError: Input/output error)")
        return real(self, idx)

    monkeypatch.setattr(S.ArrayRows, "__getitem__", flaky)
    opts = {"steps": 5, "batch": 8, "hidden": 8, "depth": 1, "sample_steps": 2, "stream": "on", "workers": 0}
    with pytest.raises(RunFailed, match=r"training failed at step 2: .*x\.npy: rows cannot be read \(OSError"):
        run_method("edm", str(p), tmp_path / "r", options=opts, **QUIET)
    assert not (tmp_path / "r").exists()


def test_every_method_trains_and_samples_on_a_streamed_image_file(tmp_path, monkeypatch):
    from test_data_images import TINY

    monkeypatch.setenv("GPFLOW_CACHE", str(tmp_path / "cache"))
    p = tmp_path / "t-images-idx3-ubyte"
    p.write_bytes(idx_bytes(digit_images(16)[0]))  # no labels: no metrics' classifier to train here
    drawn = {}
    for method in sorted(TINY):
        opts = {**TINY[method], "stream": "on", "stream_subset": 6}
        if "nll_points" in opts:
            opts["nll_points"] = 0  # the likelihood does not read the training rows
        if method == "mmd-guidance":
            opts.update(latent=4, ae_steps=2)  # the latent (autoencoder) variant draws minibatches too
        res = run_method(method, str(p), tmp_path / method, options=opts, **{**QUIET, "n_samples": 8})
        assert np.isfinite(res["final"]["mmd2"]), method
        ck = torch.load(tmp_path / method / "checkpoint.pt", weights_only=True)
        drawn[method] = ck["state"].get("data.batches")
    # the methods that train on minibatches read them from the file; flows and KDE scores use the subset
    assert drawn == {"edm": 3, "score-gan": 2, "disc-flow": 2, "disc-flow-gen": 2, "gan": 2, "diffflow": None,
                     "mmd-guidance": 4, "mmd-flow": None, "svgd": None, "langevin": None}, drawn


@pytest.mark.parametrize("stream", ["on", "off"])
def test_more_ranks_than_training_rows_is_one_error_before_anything_runs(tmp_path, stream):
    from gpflow_kernels.methods.parallel import Parallel

    p = tmp_path / "x.npy"
    np.save(p, X[:6])  # 4 training rows
    with pytest.raises(RunError, match=r"x\.npy has 4 training rows for 5 ranks"):
        run_method("gan", str(p), tmp_path / "r", options={"steps": 2, "stream": stream}, parallel=Parallel(None, 0, 5),
                   **QUIET)
    assert not (tmp_path / "r").exists()

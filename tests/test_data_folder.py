"""Folders of image files: layouts, pixels, channels, resizing, bad folders, DataLoader workers,
streaming, and training on a 16-image folder.

Fixture images are written with PIL (a test dependency). The tests run on whichever decoder path
this environment has: torchvision where it imports, else Pillow and torch alone (data/folder.py,
``_PilOps``; the project's CPU torch 2.13 has no torchvision on this machine's registry). Where
torchvision imports, one test also checks that the two paths give the same tensors.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch

from gpflow_kernels.data import load
from gpflow_kernels.data import folder as F
from gpflow_kernels.methods import METHODS
from gpflow_kernels.methods.runner import RunError, run_method

from conftest import digit_images
from test_data_images import TINY


def _torchvision_imports():
    try:
        import torchvision.io  # noqa: F401
        return True
    except Exception:  # ImportError, or RuntimeError from a torchvision built for another torch
        return False


needs_tv = pytest.mark.skipif(not _torchvision_imports(), reason="torchvision does not import here (pip install '.[images]')")


def _png(path, a: np.ndarray):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def _digit_folder(root, n=16):
    """n 8×8 grey digits in class sub-folders named after the digit; returns (images, labels)."""
    x, y = digit_images(n)
    for i, (im, lab) in enumerate(zip(x, y)):
        _png(root / f"d{lab}" / f"{i:02d}.png", im)
    return x, y


def test_class_folders_keep_pixels_and_labels(tmp_path):
    x, y = _digit_folder(tmp_path / "set")
    (tmp_path / "set" / "README.txt").write_text("not an image: ignored")
    ds = load(str(tmp_path / "set"), seed=0)
    assert ds.image_shape == (8, 8) and ds.levels == 256 and ds.train.shape == (13, 64) and ds.test.shape == (3, 64)
    classes = sorted({f"d{v}" for v in y})  # labels number the sub-folders in sorted order
    flat = torch.from_numpy(x.reshape(len(x), 64)).float() / 127.5 - 1
    for img, lab in zip(torch.cat([ds.train, ds.test]), torch.cat([ds.train_labels, ds.test_labels])):
        k = int((flat - img).abs().sum(1).argmin())
        assert torch.equal(flat[k], img) and classes[int(lab)] == f"d{y[k]}"


def test_flat_folder_mixes_grey_rgb_and_alpha_into_rgb(tmp_path):
    g = np.random.RandomState(0)
    grey = g.randint(0, 256, (5, 6)).astype(np.uint8)
    rgb = g.randint(0, 256, (5, 6, 3)).astype(np.uint8)
    rgba = np.concatenate([rgb[::-1], np.full((5, 6, 1), 7, np.uint8)], 2)
    _png(tmp_path / "a.png", grey)
    _png(tmp_path / "b.png", rgb)
    _png(tmp_path / "c.png", rgba)
    _png(tmp_path / "d.png", grey.T.copy().reshape(5, 6))
    ds = load(str(tmp_path), seed=0)
    assert ds.image_shape == (3, 5, 6) and ds.train_labels is None
    got = {tuple(v.tolist()) for v in torch.cat([ds.train, ds.test])}
    want = [np.stack([grey] * 3), rgb.transpose(2, 0, 1), rgba[..., :3].transpose(2, 0, 1)]
    for w in want:
        assert tuple((torch.from_numpy(w.reshape(-1).copy()).float() / 127.5 - 1).tolist()) in got


def test_mixed_sizes_need_image_size_which_resizes_like_antialiased_bilinear(tmp_path):
    from gpflow_kernels.data.images import resize_center_crop

    g = np.random.RandomState(1)
    ims = [g.randint(0, 256, s).astype(np.uint8) for s in ((9, 12), (12, 9), (10, 10), (16, 20))]
    for i, im in enumerate(ims):
        _png(tmp_path / f"{i}.png", im)
    with pytest.raises(ValueError, match=r"different sizes \(0.png: 9×12, .*image_size=N"):
        load(str(tmp_path))
    ds = load(str(tmp_path), image_size=6)
    assert ds.image_shape == (6, 6) and ds.levels == 256
    got = {tuple(v.tolist()) for v in torch.cat([ds.train, ds.test])}
    # torchvision resizes the uint8 image and rounds; F.interpolate (checked against PIL in
    # test_data_images) on the float image agrees within one level.
    for im in ims:
        ref = resize_center_crop(torch.from_numpy(im).float()[None, None] / 127.5 - 1, 6).reshape(-1)
        best = min(got, key=lambda v: float((torch.tensor(v) - ref).abs().max()))
        assert float((torch.tensor(best) - ref).abs().max()) <= 2 / 255 + 1e-6


def test_workers_decode_the_same_images_and_name_a_corrupt_file(tmp_path, monkeypatch):
    _digit_folder(tmp_path / "set")
    serial = load(str(tmp_path / "set"), seed=3)
    monkeypatch.setattr(F, "WORKERS_FROM", 4)
    parallel = load(str(tmp_path / "set"), seed=3)
    assert torch.equal(serial.train, parallel.train) and torch.equal(serial.test_labels, parallel.test_labels)
    (tmp_path / "set" / "d0" / "zz.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=r"^\S*zz.png cannot be decoded as an image"):
        load(str(tmp_path / "set"))


@pytest.mark.parametrize("case,match", [
    ("empty", "holds no image files"),
    ("both", "both at its top level"),
    ("corrupt", "bad.png cannot be decoded as an image"),
    ("too_few", "holds 3 image files; at least 4"),
])
def test_bad_folders_stop_the_run_before_writing(tmp_path, case, match):
    root = tmp_path / "set"
    root.mkdir()
    if case == "both":
        _digit_folder(root, 4)
        _png(root / "top.png", np.zeros((8, 8), np.uint8))
    elif case == "corrupt":
        _digit_folder(root, 6)
        (root / "d1" / "bad.png").write_bytes(b"not a png at all")
    elif case == "too_few":
        _digit_folder(root, 3)
    else:
        (root / "sub").mkdir()
        (root / "notes.txt").write_text("x")
    with pytest.raises(RunError, match=match) as e:
        run_method("edm", str(root), tmp_path / "never", options={"steps": 1}, plots=False, progress=False, log=lambda s: None)
    assert str(root) in str(e.value)
    assert not (tmp_path / "never").exists()


def test_without_torchvision_the_folder_is_read_through_pillow(tmp_path, monkeypatch):
    def missing():
        raise ValueError("folders of image files need torchvision (simulated)")

    monkeypatch.setattr(F, "torchvision_modules", missing)
    assert F.image_ops() is F._PilOps
    x, _ = _digit_folder(tmp_path / "set", 6)
    ds = load(str(tmp_path / "set"), seed=0)
    flat = {tuple((torch.from_numpy(im.reshape(-1).copy()).float() / 127.5 - 1).tolist()) for im in x}
    assert {tuple(v.tolist()) for v in torch.cat([ds.train, ds.test])} <= flat


def test_without_pillow_or_torchvision_a_folder_is_one_clear_error(tmp_path):
    _digit_folder(tmp_path / "set", 4)
    code = ("import sys; sys.modules['torchvision'] = None; sys.modules['PIL'] = None\n"
            "from gpflow_kernels.cli import main\n"
            f"sys.exit(main(['run', 'edm', '--data', {str(tmp_path / 'set')!r}, '--out', {str(tmp_path / 'out')!r}, "
            "'--no-plots']))")  # (matplotlib needs Pillow too)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "need Pillow (pip install pillow), or torchvision" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "out").exists()


@needs_tv
def test_the_pillow_path_gives_torchvisions_tensors(tmp_path):
    from PIL import Image

    _, TF = F.torchvision_modules()
    g = np.random.RandomState(2)
    for shape in ((9, 12), (12, 9, 3), (10, 10), (16, 21, 3)):
        path = tmp_path / f"{len(shape)}-{shape[0]}.png"
        _png(path, g.randint(0, 256, shape).astype(np.uint8))
        with Image.open(path) as im:
            a, b = TF.pil_to_tensor(im), F._PilOps.pil_to_tensor(im)
        assert torch.equal(a, b)
        for n in (5, 8):
            assert torch.equal(TF.center_crop(TF.resize(a, n, antialias=True), [n, n]),
                               F._PilOps.center_crop(F._PilOps.resize(b, n), [n, n]))


def test_a_method_trains_on_a_16_image_folder(tmp_path, monkeypatch):
    # one method: every method's training on a 16-image set is test_data_images' (same images, IDX)
    monkeypatch.setenv("GPFLOW_CACHE", str(tmp_path / "cache"))
    _digit_folder(tmp_path / "set")
    for method in ["mmd-flow"]:  # training-free: the folder pipeline end to end, in a second
        res = run_method(method, str(tmp_path / "set"), tmp_path / method, options=TINY[method], n_samples=16,
                         plots=True, progress=False, log=lambda s: None)
        assert {"mmd2", "fd", "kid", "coverage"} <= set(res["final"]), method
    assert (tmp_path / "mmd-flow" / "samples.png").stat().st_size > 1000


def test_a_streamed_folder_gives_the_loaded_folders_images(tmp_path, monkeypatch):
    from gpflow_kernels.data import stream as S

    x, y = _digit_folder(tmp_path / "set", n=30)
    _png(tmp_path / "set" / "d9" / "rgb.png", np.zeros((8, 8, 3), np.uint8) + 40)  # one RGB image: all become RGB
    whole = load(str(tmp_path / "set"), seed=2, stream="off")
    st = load(str(tmp_path / "set"), seed=2, stream="on", stream_subset=5)
    assert st.stream is not None and isinstance(st.stream.rows, S.FolderRows)
    assert (st.image_shape, st.levels) == (whole.image_shape, whole.levels) == ((3, 8, 8), 256)
    assert torch.equal(st.test, whole.test) and torch.equal(st.test_labels, whole.test_labels)
    assert torch.equal(st.train, whole.train[:5]) and torch.equal(st.train_labels, whole.train_labels[:5])
    assert torch.equal(st.stream.rows[st.stream.indices.numpy()], whole.train)
    # resized as they are decoded, as the loaded folder is
    small_whole = load(str(tmp_path / "set"), seed=2, image_size=5)
    small = load(str(tmp_path / "set"), seed=2, stream="on", image_size=5)
    assert torch.equal(small.stream.rows[small.stream.indices.numpy()], small_whole.train)
    # auto: streamed when the folder (estimated from its first image) is past a quarter of the memory
    assert load(str(tmp_path / "set"), stream="auto").stream is None
    monkeypatch.setattr(S, "available_memory", lambda: 31 * 64 * 4 * 3)
    assert load(str(tmp_path / "set"), stream="auto").stream is not None
    # the start-up reads go through workers for many images, with the same result
    many = S.read_rows(st.stream.rows, torch.arange(31).repeat(20))
    assert torch.equal(many, st.stream.rows[np.tile(np.arange(31), 20)])
    # a file that stops decoding while training is named in one line
    bad = st.stream.rows.files[int(st.stream.indices[0])]
    bad.write_bytes(b"\x89PNG garbage")
    b = S.Batches(st.stream, st.stream.indices[:1], 2, seed=0, device="cpu")
    with pytest.raises(S.DataError, match=rf"^{bad} cannot be decoded as an image"):
        b.next()
    b.close()


def test_streamed_folder_headers_are_checked_at_the_start(tmp_path):
    _digit_folder(tmp_path / "set", n=8)
    _png(tmp_path / "set" / "d1" / "big.png", np.zeros((9, 8), np.uint8))
    with pytest.raises(ValueError, match=r"different sizes \(.*image_size=N"):
        load(str(tmp_path / "set"), stream="on")
    (tmp_path / "set" / "d1" / "big.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"big.png cannot be decoded as an image"):
        load(str(tmp_path / "set"), stream="on")

"""gpflow sample / methods.serve: a trained run loaded back, samples that depend only on (seed, i),
the files it writes, and the one-line refusals."""

import numpy as np
import pytest
import torch

from gpflow_kernels.cli import main
from gpflow_kernels.methods.parallel import Parallel
from gpflow_kernels.methods.runner import run_method
from gpflow_kernels.methods.serve import BLOCK, draw, load_run, sample_to_file


def _quiet(_):
    pass


@pytest.fixture(scope="module")
def edm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "edm"
    metrics = run_method("edm", "8gaussians", out, options={"steps": 20, "hidden": 16, "sample_steps": 4,
                                                             "nll_points": 0, "ema": 0.9},
                         n_samples=64, plots=False, progress=False, log=_quiet)
    return out, metrics


def cli(capsys, *argv):
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_sample_i_depends_only_on_the_seed_and_i(edm_run, tmp_path):
    run, _ = edm_run
    n = BLOCK + 37  # a partial second block
    a = sample_to_file(run, n, tmp_path / "a.npy", log=_quiet)
    b = sample_to_file(run, n, tmp_path / "b.npy", batch=1, log=_quiet)
    xa, xb = np.load(a), np.load(b)
    assert xa.shape == (n, 2) and np.isfinite(xa).all()
    np.testing.assert_array_equal(xa, xb)  # --batch changes nothing
    m = load_run(run)
    seed = 1  # the run's seed + 1, the default
    for i in (0, BLOCK - 1, BLOCK, n - 1):  # one sample regenerated alone
        np.testing.assert_array_equal(draw(m, 1, seed, start=i).numpy()[0], xa[i])
    # more samples: the first n unchanged
    np.testing.assert_array_equal(draw(m, 3 * BLOCK, seed).numpy()[:n], xa)
    # split over ranks (each rank's share, concatenated in rank order), any number of ranks
    for world in (2, 3):
        parts = [draw(m, n, seed, par=Parallel(None, r, world)) for r in range(world)]
        np.testing.assert_array_equal(torch.cat(parts).numpy(), xa)
    # another seed, other samples
    assert not np.allclose(draw(m, 10, 5).numpy(), xa[:10])


def test_loaded_run_samples_with_the_moving_average(edm_run):
    run, _ = edm_run
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    m = load_run(run)
    for name, t in m.net.state_dict().items():
        torch.testing.assert_close(t, ck["state"]["ema"]["denoiser"][name], rtol=0, atol=0)
    assert not all(torch.equal(t, ck["state"]["module.denoiser"][k]) for k, t in m.net.state_dict().items())


def test_pt_file_and_sampling_options(edm_run, tmp_path, capsys):
    run, _ = edm_run
    code, err = cli(capsys, "sample", run, "--n", "20", "--out", tmp_path / "s.pt", "--set", "sample_steps=8",
                    "--seed", "3")
    assert code == 0, err
    saved = torch.load(tmp_path / "s.pt", weights_only=True)
    assert saved["samples"].shape == (20, 2) and saved["method"] == "edm" and saved["seed"] == 3
    # the option reached the sampler: other steps, other samples from the same noise
    m = load_run(run, options={"sample_steps": 8})
    torch.testing.assert_close(saved["samples"], draw(m, 20, 3), rtol=0, atol=0)
    assert not torch.allclose(saved["samples"], draw(load_run(run), 20, 3))


def test_image_run_to_a_folder_of_pngs(tmp_path, capsys):
    from PIL import Image

    run = tmp_path / "digits"
    run_method("edm", "digits", run, options={"steps": 2, "image_size": 8, "sample_steps": 2, "nll_points": 0,
                                              "batch": 16}, n_samples=16, plots=False, progress=False, log=_quiet)
    code, err = cli(capsys, "sample", run, "--n", "5", "--out", tmp_path / "pngs")
    assert code == 0, err
    files = sorted((tmp_path / "pngs").iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
    x = draw(load_run(run), 5, 1)
    for f, row in zip(files, x):
        im = np.asarray(Image.open(f))
        assert im.shape == (8, 8) and im.dtype == np.uint8
        want = ((row.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).reshape(8, 8).numpy()
        np.testing.assert_array_equal(im, want)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.parametrize("case, match", [
    ("missing", "is not a folder"),
    ("empty", "holds no checkpoint.pt"),
    ("truncated", "cannot be read as a checkpoint: it is empty, truncated"),
    ("foreign", "is not a gpflow checkpoint (no format"),
    ("exists", "exists already; choose another path"),
    ("suffix", "write .npy, .pt or a folder of PNG files"),
    ("png_points", "a folder of PNG files is for image runs"),
    ("bad_set", "has no option 'nope'"),
])
def test_bad_runs_and_outputs_are_one_line_and_exit_2(edm_run, tmp_path, capsys, case, match):
    run, _ = edm_run
    out = tmp_path / "s.npy"
    if case == "missing":
        run = tmp_path / "nothing"
    elif case == "empty":
        run = tmp_path / "empty"
        run.mkdir()
    elif case in ("truncated", "foreign"):
        bad = tmp_path / "bad"
        bad.mkdir()
        if case == "truncated":
            (bad / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:300])
        else:
            torch.save({"weights": torch.zeros(2)}, bad / "checkpoint.pt")
        run = bad
    elif case == "exists":
        out.write_text("keep me")
    elif case == "suffix":
        out = tmp_path / "s.csv"
    elif case == "png_points":
        out = tmp_path / "pngs"
    extra = ["--set", "nope=1"] if case == "bad_set" else []
    code, err = cli(capsys, "sample", run, "--n", "4", "--out", out, *extra)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("gpflow: error: ") and match in lines[0], err
    if case == "exists":
        assert out.read_text() == "keep me"
    elif case != "png_points":
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_training_free_flow_is_refused(tmp_path, capsys):
    run = tmp_path / "flow"
    run_method("mmd-flow", "8gaussians", run, options={"sample_steps": 2}, n_samples=20, plots=False,
               progress=False, log=_quiet)
    code, err = cli(capsys, "sample", run, "--n", "4", "--out", tmp_path / "s.npy")
    assert code == 2 and "a training-free flow: it has no model to sample from" in err

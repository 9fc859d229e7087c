"""Points from the user's files (gpflow_kernels.data.files): every format, the split, every bad case."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gpflow_kernels.data import load
from gpflow_kernels.data.files import load_points

ROOT = Path(__file__).resolve().parents[1]
X = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)


def _write(tmp_path, kind):
    if kind == "npy":
        p = tmp_path / "p.npy"
        np.save(p, X)
    elif kind == "npz-single":
        p = tmp_path / "p.npz"
        np.savez(p, X)
    elif kind == "npz-keyed":
        p = tmp_path / "p.npz"
        np.savez(p, labels=np.arange(50), x=X)
    elif kind == "pt":
        p = tmp_path / "p.pt"
        torch.save(torch.from_numpy(X.astype(np.float64)), p)
    elif kind == "pt-dict":
        p = tmp_path / "p.pth"
        torch.save({"points": torch.from_numpy(X), "meta": torch.zeros(1)}, p)
    elif kind == "csv-header":
        p = tmp_path / "p.csv"
        np.savetxt(p, X, delimiter=",", header="a,b,c", comments="", fmt="%.9g")
    else:
        p = tmp_path / "p.csv"
        np.savetxt(p, X, delimiter=", ", fmt="%.9g")
    return p


@pytest.mark.parametrize("kind", ["npy", "npz-single", "npz-keyed", "pt", "pt-dict", "csv-header", "csv"])
def test_every_format_gives_the_same_points_split_by_the_seed(tmp_path, kind):
    ds = load(str(_write(tmp_path, kind)), seed=3)
    assert ds.train.dtype == torch.float32 and not ds.is_image
    assert (len(ds.train), len(ds.test)) == (40, 10)  # n_test = min(N // 5, 2000)
    both = torch.cat([ds.train, ds.test])
    # the same rows, shuffled by the seed: compare as sorted sets of rows
    order = lambda t: t[torch.argsort(t[:, 0])]
    torch.testing.assert_close(order(both), order(torch.from_numpy(X)), rtol=1e-6, atol=1e-6)
    again = load(str(_write(tmp_path, kind)), seed=3)
    assert torch.equal(again.train, ds.train)
    assert not torch.equal(load(str(_write(tmp_path, kind)), seed=4).train, ds.train)


def _bad(tmp_path, case):
    p = tmp_path / {"csv-empty": "e.csv", "csv-text": "t.csv", "csv-ragged": "r.csv", "garbage": "g.npy",
                    "pt-garbage": "g.pt", "pt-list": "l.pt", "npz-ambiguous": "a.npz"}.get(case, f"{case}.npy")
    if case == "nan":
        bad = X.copy()
        bad[7, 1] = np.nan
        np.save(p, bad)
    elif case == "inf":
        bad = X.copy()
        bad[3, 0] = np.inf
        np.save(p, bad)
    elif case == "rank1":
        np.save(p, X[:, 0])
    elif case == "rank3":
        np.save(p, X.reshape(50, 3, 1))
    elif case == "rank5":
        np.save(p, np.zeros((4, 1, 1, 8, 8), np.float32))
    elif case == "few":
        np.save(p, X[:3])
    elif case == "empty":
        np.save(p, np.zeros((0, 3), np.float32))
    elif case == "strings":
        np.save(p, np.array([["a", "b"]] * 5))
    elif case == "bool":
        np.save(p, np.ones((5, 2), bool))
    elif case == "csv-empty":
        p.write_text("\n\n")
    elif case == "csv-text":
        p.write_text("a,b\n1,2\n3,x\n")
    elif case == "csv-ragged":
        p.write_text("1,2\n3,4,5\n6,7\n8,9\n")
    elif case == "garbage":
        p.write_bytes(b"\x93NUMPY garbage")
    elif case == "pt-garbage":
        p.write_bytes(b"not a torch file")
    elif case == "pt-list":
        torch.save([1, 2, 3], p)
    elif case == "npz-ambiguous":
        np.savez(p, a=X, b=X)
    return p


BAD = {
    "nan": "NaN or infinite values (the first in row 7)", "inf": "NaN or infinite values (the first in row 3)",
    "rank1": "expected (N, D) points", "rank3": "holds images of 3×1 pixels; at least 2×2 are needed",
    "rank5": "expected (N, D) points or (N, H, W) / (N, C, H, W) images",
    "few": "at least 4 points", "empty": "at least 4 points", "strings": "expected real numbers", "bool": "expected real numbers",
    "csv-empty": "is empty", "csv-text": "line 3: not all numbers", "csv-ragged": "different numbers of columns",
    "garbage": "cannot be read as .npy", "pt-garbage": "cannot be read as .pt", "pt-list": "not a tensor of points",
    "npz-ambiguous": "holds several arrays ['a', 'b']",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_get_one_error_naming_the_file(tmp_path, case):
    p = _bad(tmp_path, case)
    with pytest.raises(ValueError) as e:
        load_points(p)
    assert str(p) in str(e.value) and BAD[case] in str(e.value), str(e.value)


def test_unusable_paths_are_named(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load(str(tmp_path / "missing.npy"))
    with pytest.raises(ValueError, match="holds no image files"):  # a folder is read for images
        load(str(tmp_path) + os.sep)
    (tmp_path / "x.txt").write_text("1,2")
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        load(str(tmp_path / "x.txt"))
    with pytest.raises(ValueError, match="unknown data set 'moon'"):
        load("moon")


def _cli(args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "gpflow_kernels", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def test_cli_trains_on_a_file_and_refuses_a_bad_one_without_writing(tmp_path):
    good = _write(tmp_path, "npy")
    r = _cli(["run", "edm", "--data", str(good), "--out", str(tmp_path / "run"), "--set", "steps=20",
              "--set", "sample_steps=4", "--samples", "20", "--no-plots", "--quiet"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "metrics.json").exists()
    bad = _bad(tmp_path, "nan")
    r = _cli(["run", "edm", "--data", str(bad), "--out", str(tmp_path / "never"), "--quiet"], tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("gpflow: error: ") and "NaN or infinite" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "never").exists()

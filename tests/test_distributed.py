"""Sharded ops (gpflow_kernels.distributed) on 2 gloo ranks against the single-process ops.

One torchrun job (tests/dist_cases.py) runs every case; each test reads its case's result from
both ranks: max |error| of the local rows and gradients (rows, then every input's gradient)
relative to the largest reference value, or the error message of the error cases.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# One xdist worker runs this file: the module fixture runs every sharded case in one torchrun job.
pytestmark = pytest.mark.xdist_group("torchrun")

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "tests" / "dist_cases.py"


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1"}


def _triton_env():
    """The environment for dist_cases.py: Triton interpreted on the CPU where it is installed."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return _env()
    return {**_env(), "TRITON_INTERPRET": "1"}


def torchrun(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *map(str, args)], capture_output=True, text=True, env=_triton_env(), timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    proc = torchrun(CASES, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


NUMERIC = {
    # case: relative tolerance (float64 cases: reduction order only)
    "integral_uneven": 1e-12, "integral_empty_y_shard": 1e-12, "integral_batch_float32": 2e-6,
    "mmd_field_weights_xref": 1e-12, "mmd_field_empty_x_shard": 1e-12, "mmd_field_median_subset": 1e-12,
    "mmd_field_highdim": 1e-12, "mmd2_biased_batch": 1e-12, "mmd2_unbiased_median": 1e-12,
    "kde_score_2d_small_sigma": 1e-11, "kde_score_12d_flash": 1e-12, "kde_denoiser_empty_x_shard": 1e-12,
    "kde_denoiser_empty_y_shard_16d": 1e-12, "svgd_median": 1e-12, "svgd_fixed_imq": 1e-12,
    "after_errors_still_works": 1e-12,
    # sharded particle systems: same seed, same particles as one process
    "flow_mmd": 1e-11, "flow_svgd": 1e-11, "flow_logratio": 1e-11, "flow_diffflow": 1e-11, "flow_langevin": 1e-12,
}


@pytest.mark.parametrize("case", sorted(NUMERIC))
def test_sharded_op_matches_single_process(results, case):
    for rank, res in enumerate(results):
        got = res[case]
        assert isinstance(got, list), f"rank {rank}: {got}"
        err, scale = got
        assert scale > 0
        assert err <= NUMERIC[case] * scale, f"rank {rank}: {case} error {err:.3g} (scale {scale:.3g})"


ERRORS = {
    "err_dimension": ["ValueError", "the point dimension D (rank 0 has 2, rank 1 has 3)"],
    "err_kernel": ["ValueError", "disagree on kernel"],
    "err_bandwidth": ["ValueError", "disagree on bandwidth"],
    "err_dtype": ["ValueError", "disagree on the dtype"],
    "err_all_empty_y": ["ValueError", "y has 0 points over all ranks"],
}


TRITON = {"triton_kde_score_3d": 1e-12, "triton_kde_denoiser_20d": 1e-12, "triton_mmd_field": 1e-12}


@pytest.mark.parametrize("case", sorted(TRITON))
def test_sharded_op_on_triton_blocks_matches_single_process(results, case):
    # float64 through the interpreter: the base-2 lse of the Triton kernels merges like the reference's
    if case not in results[0]:
        pytest.skip("triton is not installed")
    for rank, res in enumerate(results):
        got = res[case]
        assert isinstance(got, list), f"rank {rank}: {got}"
        assert got[0] <= TRITON[case] * got[1], f"rank {rank}: {case} error {got[0]:.3g} (scale {got[1]:.3g})"


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_disagreeing_ranks_all_get_a_clear_error(results, case):
    kind, text = ERRORS[case]
    for res in results:
        assert res[case].startswith(f"error: {kind}") and text in res[case], res[case]


def test_bad_input_on_one_rank_names_it_on_the_others(results):
    r0, r1 = results[0]["err_nan_on_rank1"], results[1]["err_nan_on_rank1"]
    assert r1.startswith("error: ValueError: x contains NaN"), r1
    assert r0.startswith("error: RuntimeError") and "rank(s) [1] rejected their input" in r0, r0


def test_a_rank_that_dies_does_not_hang_the_others(tmp_path):
    t0 = time.perf_counter()
    proc = torchrun(CASES, tmp_path, "crash", timeout=120)
    assert proc.returncode != 0
    assert "rank 1 fails on purpose" in proc.stderr
    assert time.perf_counter() - t0 < 90


# ----- the command line under torchrun -------------------------------------------------------

def _gpflow(args, nproc=None, plots=False):
    base = [sys.executable, "-m"] + (["torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m"]
                                     if nproc else [])
    return subprocess.run(base + ["gpflow_kernels", "run", *args, "--threads", "1", "--quiet"]
                          + ([] if plots else ["--no-plots"]),
                          capture_output=True, text=True, env=_env(), timeout=300, cwd=ROOT)


def test_torchrun_flow_gives_the_single_process_metrics(tmp_path):
    args = ["mmd-flow", "--data", "8gaussians", "--samples", "600", "--set", "sample_steps=40", "--set", "n_data=500"]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:  # side by side; the figures gather every rank's particles
        jobs = [pool.submit(_gpflow, args + ["--out", tmp_path / "one"]),
                pool.submit(_gpflow, args + ["--out", tmp_path / "two"], nproc=2, plots=True)]
        one, two = (j.result() for j in jobs)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    a = json.loads((tmp_path / "one" / "metrics.json").read_text())
    b = json.loads((tmp_path / "two" / "metrics.json").read_text())
    for key in ("init", "final"):
        for name, v in a[key].items():
            assert abs(b[key][name] - v) <= 1e-5 * max(1.0, abs(v)), (key, name, v, b[key][name])
    # only rank 0 printed its summary line and wrote the figures
    assert two.stdout.count("wrote") == 1, two.stdout
    assert (tmp_path / "two" / "samples.png").exists() and (tmp_path / "two" / "trajectory.png").exists()


def test_torchrun_trained_method_resumes_exactly(tmp_path):
    import torch

    from concurrent.futures import ThreadPoolExecutor

    args = ["gan", "--data", "8gaussians", "--samples", "200", "--ckpt-every", "5"]
    with ThreadPoolExecutor(2) as pool:  # the uninterrupted run and the first half side by side
        jobs = [pool.submit(_gpflow, args + ["--out", tmp_path / out, "--set", f"steps={n}"], nproc=2)
                for out, n in (("full", 12), ("cut", 6))]
        full, part = (j.result() for j in jobs)
    assert full.returncode == 0, full.stderr[-2000:]
    assert part.returncode == 0, part.stderr[-2000:]
    res = _gpflow(args + ["--out", tmp_path / "cut", "--set", "steps=12", "--resume"], nproc=2)
    assert res.returncode == 0, res.stderr[-2000:]
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert a["final"] == b["final"]
    ca = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    cb = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert ca["world"] == cb["world"] == 2 and len(cb["rng_ranks"]) == 2
    for key, params in ca["state"].items():
        if key.startswith("module."):
            for name, t in params.items():
                assert torch.equal(t, cb["state"][key][name]), (key, name)
    # a checkpoint of 2 ranks is not resumed by 1 process (in-process: the same check the command makes)
    from gpflow_kernels.methods.runner import RunError, run_method

    with pytest.raises(RunError, match=r"written by 2 rank\(s\), this run has 1"):
        run_method("gan", "8gaussians", tmp_path / "cut", options={"steps": 20}, resume=True, plots=False,
                   progress=False, n_samples=200, log=lambda _: None)


def test_torchrun_streams_a_file_each_rank_from_its_shard(tmp_path):
    import numpy as np
    import torch

    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(120, 2)).astype(np.float32))
    args = ["edm", "--data", str(tmp_path / "x.npy"), "--samples", "40", "--out", tmp_path / "run", "--set", "steps=4",
            "--set", "batch=8", "--set", "hidden=8", "--set", "sample_steps=2", "--set", "stream=on", "--set", "nll_points=0"]
    two = _gpflow(args, nproc=2)
    assert two.returncode == 0, two.stderr[-2000:]
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ck["world"] == 2 and ck["state"]["data.batches"] == 4

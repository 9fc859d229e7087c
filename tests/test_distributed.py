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


def _worker_pid(agent_pid, local_rank):
    """The pid of torchrun's worker LOCAL_RANK, a child of the agent process, or None yet."""
    for task in Path(f"/proc/{agent_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"LOCAL_RANK={local_rank}".encode() in env:
                return int(child)
    return None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds torchrun's workers through /proc")
def test_elastic_restart_after_a_killed_rank_resumes_by_itself_exactly(tmp_path):
    """torchrun --max-restarts 1, rank 1 killed (SIGKILL) once the first checkpoint is on disk: the
    agent restarts both workers with the same command (no --resume typed), they continue from the
    last checkpoint (TORCHELASTIC_RESTART_COUNT > 0 means --resume auto) and end bit-identical to an
    uninterrupted 2-rank run: weights, optimiser, random states, metrics and loss history. The
    uninterrupted run is itself a two-node job (two torchrun agents, one worker each, c10d
    rendezvous on 127.0.0.1), so the test also shows two nodes give the 2-rank result."""
    import signal
    import socket

    import torch

    args = ["gan", "--data", "8gaussians", "--samples", "200", "--set", "steps=60", "--ckpt-every", "5",
            "--threads", "1", "--quiet", "--no-plots"]
    gpflow = ["-m", "gpflow_kernels", "run", *map(str, args)]
    run = [sys.executable, "-m", "torch.distributed.run"]
    # The uninterrupted run, side by side: on two "nodes" (two torchrun agents, one worker each,
    # meeting through the c10d rendezvous on this machine), as the README's multi-node recipe does.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nodes = [subprocess.Popen(run + ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                                     "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "gpflow-test", *gpflow,
                                     "--out", str(tmp_path / "full")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
             for _ in range(2)]
    cmd = run + ["--standalone", "--nproc-per-node", "2", "--max-restarts", "1", "--monitor-interval", "0.1",
                 *gpflow, "--out", str(tmp_path / "cut"), "--overwrite"]
    agent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    killed = None
    t0 = time.perf_counter()
    while agent.poll() is None and time.perf_counter() - t0 < 120:
        if killed is None and (tmp_path / "cut" / "checkpoint.pt").exists():
            killed = _worker_pid(agent.pid, 1)
            if killed:
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.005)
    out, err = agent.communicate(timeout=120)
    node_runs = [p.communicate(timeout=180) for p in nodes]
    assert killed, "no checkpoint appeared before the run ended: nothing was killed"
    assert agent.returncode == 0, err[-3000:]
    # the agent saw rank 1 killed, and still ended well: its one restart ran the job to the end
    assert "exitcode: -9" in err and "local_rank: 1" in err, err[-2000:]
    for p, (_, node_err) in zip(nodes, node_runs):
        assert p.returncode == 0, node_err[-2000:]
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert a["final"] == b["final"]
    ca = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    cb = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert ca["world"] == cb["world"] == 2 and ca["step"] == cb["step"] == 60
    untimed = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]
    assert untimed(ca["history"]) == untimed(cb["history"]) and len(ca["history"]) == 60
    for key, params in ca["state"].items():
        if isinstance(params, dict):
            for name, t in params.items():
                if isinstance(t, torch.Tensor):
                    assert torch.equal(t, cb["state"][key][name]), (key, name)
    for ra, rb in zip(ca["rng_ranks"], cb["rng_ranks"]):
        assert torch.equal(ra["cpu"], rb["cpu"])
    # a checkpoint of 2 ranks is not resumed by 1 process (in-process: the same check the command makes)
    from gpflow_kernels.methods.runner import RunError, run_method

    with pytest.raises(RunError, match=r"written by 2 rank\(s\), this run has 1"):
        run_method("gan", "8gaussians", tmp_path / "cut", options={"steps": 80}, resume="auto", plots=False,
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


def test_torchrun_sample_gives_the_single_process_samples(tmp_path):
    """gpflow sample under torchrun: each rank draws its share of the blocks, rank 0 writes them all,
    and they are the samples one process draws."""
    import numpy as np

    from gpflow_kernels.methods.runner import run_method
    from gpflow_kernels.methods.serve import BLOCK, draw, load_run

    run = tmp_path / "edm"
    run_method("edm", "8gaussians", run, options={"steps": 5, "hidden": 16, "sample_steps": 3, "nll_points": 0},
               n_samples=32, plots=False, progress=False, log=lambda _: None)
    n = 2 * BLOCK + 5
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "gpflow_kernels", "sample", str(run), "--num-samples", str(n), "--out", str(tmp_path / "s.npy"),
                          "--threads", "1"], capture_output=True, text=True, env=_env(), timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("wrote") == 1  # rank 0 alone writes and says so
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), draw(load_run(run), n, 1).numpy())

"""Every way a ``gpflow`` call can go wrong ends in one line, the right exit code and nothing half-done.

Most cases call ``cli.main`` in this process (argument and folder checks need no torch, so they are
fast); the few that need a real process (signals, import cost) use ``python -m gpflow_kernels``.
"""

import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gpflow_kernels.cli import main
from gpflow_kernels.methods.options import OPTIONS, _merged
from gpflow_kernels.methods.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
FAST_GAN = ["--set", "steps=20", "--set", "batch=32", "--set", "hidden=16", "--samples", "100", "--no-plots", "--quiet"]


def gpflow(capsys, *argv):
    """(exit code, stderr) of ``gpflow argv`` run in this process."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    return code, capsys.readouterr().err


def one_error_line(code, err, expected_code=2):
    lines = err.strip().splitlines()
    assert code == expected_code, err
    assert len(lines) == 1 and lines[0].startswith("gpflow: error: "), err
    assert "Traceback" not in err
    return lines[0]


def listing(path):
    return sorted(p.name for p in Path(path).rglob("*")) if Path(path).exists() else None


# ----- the output folder -------------------------------------------------------------------------


def test_out_naming_an_existing_file(tmp_path, capsys):
    f = tmp_path / "f.txt"
    f.write_text("keep")
    line = one_error_line(*gpflow(capsys, "run", "gan", "--data", "moons", "--out", f, *FAST_GAN))
    assert "is a file, not a folder" in line and f.read_text() == "keep"


def test_out_under_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    line = one_error_line(*gpflow(capsys, "run", "gan", "--data", "moons", "--out", tmp_path / "f" / "run", *FAST_GAN))
    assert f"{tmp_path / 'f'} is a file" in line


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc (a folder no one may write, root included)")
@pytest.mark.parametrize("out", ["/proc/self/gpflow-run", "/proc/self"])
def test_unwritable_out_is_refused_before_any_work(capsys, out):
    line = one_error_line(*gpflow(capsys, "run", "gan", "--data", "moons", "--out", out, *FAST_GAN))
    assert "is not writable" in line and out in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_existing_read_only_folder_is_refused(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        line = one_error_line(*gpflow(capsys, "run", "gan", "--data", "moons", "--out", ro, *FAST_GAN))
    finally:
        ro.chmod(0o700)
    assert "is not writable" in line


# ----- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--samples", "0"], "--samples must be >= 2, got 0"),
    (["--set", "lr=0"], "option lr of 'gan' must be > 0, got 0.0"),
    (["--set", "lr=inf"], "option lr of 'gan' must be a finite number, got inf"),
    (["--ckpt-every", "0"], "--ckpt-every must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--device", "gpu"], "--device 'gpu'"),
    (["--resume", "--overwrite"], "pass one of them"),
])
def test_bad_run_options_are_named(tmp_path, capsys, argv, message):
    line = one_error_line(*gpflow(capsys, "run", "gan", "--data", "moons", "--out", tmp_path / "o", *argv))
    assert message in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("method, setting, message", [
    ("mmd-flow", "bandwidth=-1", "option bandwidth of 'mmd-flow' must be > 0, got -1.0"),
    ("mmd-flow", "bandwidth=0", "option bandwidth of 'mmd-flow' must be > 0, got 0.0"),
    ("mmd-flow", "step_size=nan", "option step_size of 'mmd-flow' must be a finite number, got nan"),
    ("svgd", "step_size=0", "option step_size of 'svgd' must be > 0"),
    ("score-gan", "score_steps=0", "option score_steps of 'score-gan' must be >= 1"),
    ("edm", "sigma_min=90", "need sigma_min < sigma_max"),
    ("diffflow", "mix=1.5", "option mix of 'diffflow' must be in [0, 1]"),
    ("langevin", "steps=3", "training-free flow"),
])
def test_rejected_options_write_nothing_and_the_corrected_command_runs(tmp_path, capsys, method, setting, message):
    out = tmp_path / "o"
    line = one_error_line(*gpflow(capsys, "run", method, "--data", "moons", "--out", out, "--set", setting))
    assert message in line and not out.exists()


def test_a_run_rejected_by_an_op_writes_nothing_and_the_fixed_command_works(tmp_path, capsys):
    """bandwidth=1e-30 passes the option check (> 0) but no float32 op can use it: exit 1, no files;
    the same folder then takes the corrected command (it used to say 'already holds a run')."""
    out = tmp_path / "o"
    base = ["run", "mmd-flow", "--data", "moons", "--out", out, "--set", "sample_steps=5", "--set", "n_data=200",
            "--samples", "100", "--no-plots", "--quiet"]
    line = one_error_line(*gpflow(capsys, *base, "--set", "bandwidth=1e-30"), expected_code=1)
    assert "bandwidth = 1e-30 is outside the range" in line and "float32" in line
    assert not out.exists()
    assert gpflow(capsys, *base)[0] == 0 and (out / "metrics.json").exists()


def test_argument_errors_do_not_import_torch():
    """Why they come back in a fraction of a second: torch (seconds to import) is not loaded."""
    code = ("import sys; from gpflow_kernels.cli import main; rc = main(['run', 'gan', '--data', 'mnist', '--out', 'x']); "
            "print(rc, 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.split() == ["2", "False"], res.stdout + res.stderr
    assert res.stderr.strip().startswith("gpflow: error: unknown data set 'mnist'")


# ----- failures while running --------------------------------------------------------------------


def test_a_diverging_run_fails_with_one_line_naming_the_step(tmp_path, capsys):
    out = tmp_path / "o"
    line = one_error_line(*gpflow(capsys, "run", "gan", "--data", "moons", "--out", out, *FAST_GAN, "--set", "lr=1e6"),
                          expected_code=1)
    assert "training diverged at step 2" in line and "nothing was written" in line
    assert not out.exists()


def test_a_run_diverging_after_a_checkpoint_keeps_it_and_says_how_to_go_on(tmp_path, capsys, monkeypatch):
    from gpflow_kernels.methods import get_method

    cls = get_method("gan")
    real = cls.train_step
    monkeypatch.setattr(cls, "train_step", lambda self, step: {"d_loss": float("nan")} if step == 12 else real(self, step))
    out = tmp_path / "o"
    line = one_error_line(*gpflow(capsys, "run", "gan", "--data", "moons", "--out", out, *FAST_GAN, "--ckpt-every", "5"),
                          expected_code=1)
    assert "training diverged at step 13: d_loss = nan" in line
    assert "last good checkpoint (step 10)" in line and "--resume" in line and "--overwrite" in line
    assert listing(out) == ["checkpoint.pt"]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 10


def test_particles_turning_non_finite_while_sampling_is_one_line_naming_the_step(tmp_path, capsys):
    """solvers.NonFiniteError used to escape as a raw traceback."""
    out = tmp_path / "o"
    line = one_error_line(*gpflow(capsys, "run", "langevin", "--data", "moons", "--out", out, "--set", "eps=1e9",
                                  "--samples", "50", "--no-plots", "--quiet"), expected_code=1)
    assert "sampling failed: particles became non-finite at step 3" in line and "nothing was written" in line
    assert not out.exists()


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(Exception, match="training diverged"):
        main(["run", "gan", "--data", "moons", "--out", str(tmp_path / "o"), *FAST_GAN, "--set", "lr=1e6", "--debug"])


# ----- resume ------------------------------------------------------------------------------------


def _finished_gan(tmp_path, capsys):
    out = tmp_path / "done"
    assert gpflow(capsys, "run", "gan", "--data", "moons", "--out", out, *FAST_GAN)[0] == 0
    return out


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated", "foreign-dict", "foreign-tensor"])
def test_resume_with_a_broken_checkpoint_is_one_line(tmp_path, capsys, damage):
    out = _finished_gan(tmp_path, capsys)
    ck = out / "checkpoint.pt"
    if damage == "garbage":
        ck.write_bytes(b"\x80\x04not a checkpoint at all")
    elif damage == "empty":
        ck.write_bytes(b"")
    elif damage == "truncated":
        _truncated(ck)
    elif damage == "foreign-dict":
        torch.save({"weights": torch.zeros(3)}, ck)
    else:
        torch.save(torch.zeros(3), ck)
    before = (out / "metrics.json").read_text()
    line = one_error_line(*gpflow(capsys, "run", "gan", "--data", "moons", "--out", out, *FAST_GAN, "--resume"))
    assert str(ck) in line and "--overwrite" in line
    assert (out / "metrics.json").read_text() == before


def test_resume_with_another_methods_checkpoint(tmp_path, capsys):
    out = _finished_gan(tmp_path, capsys)
    line = one_error_line(*gpflow(capsys, "run", "edm", "--data", "moons", "--out", out, "--resume", "--quiet"))
    assert "from another run" in line


def test_resume_without_a_checkpoint_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = one_error_line(*gpflow(capsys, "run", "gan", "--data", "moons", "--out", tmp_path / "empty", *FAST_GAN, "--resume"))
    assert "holds no checkpoint.pt" in line and listing(tmp_path / "empty") == []
    line = one_error_line(*gpflow(capsys, "run", "gan", "--data", "moons", "--out", tmp_path / "nope", *FAST_GAN, "--resume"))
    assert "does not exist" in line and not (tmp_path / "nope").exists()


def test_resume_with_fewer_steps_than_the_checkpoint_is_an_error(tmp_path, capsys):
    out = _finished_gan(tmp_path, capsys)
    before = (out / "metrics.json").read_text()
    line = one_error_line(*gpflow(capsys, "run", "gan", "--data", "moons", "--out", out, *FAST_GAN, "--resume",
                                  "--steps", "10"))
    assert "checkpoint is at step 20" in line and "10 training steps" in line
    assert (out / "metrics.json").read_text() == before
    # resuming the finished run as it was re-measures it, and metrics.json agrees with itself
    assert gpflow(capsys, "run", "gan", "--data", "moons", "--out", out, *FAST_GAN, "--resume")[0] == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["train_steps"] == m["options"]["steps"] == m["history"][-1]["step"] == 20


def test_overwrite_starts_over_and_replaces_the_old_run_only_when_the_new_one_writes(tmp_path, capsys):
    out = _finished_gan(tmp_path, capsys)
    (out / "notes.txt").write_text("mine")
    # a rejected --overwrite leaves the old run as it was
    assert gpflow(capsys, "run", "gan", "--data", "moons", "--out", out, *FAST_GAN, "--overwrite", "--set", "lr=1e6")[0] == 1
    assert json.loads((out / "metrics.json").read_text())["options"]["lr"] == 2e-4
    assert gpflow(capsys, "run", "gan", "--data", "moons", "--out", out, *FAST_GAN, "--overwrite", "--set", "lr=1e-3")[0] == 0
    assert json.loads((out / "metrics.json").read_text())["options"]["lr"] == 1e-3
    assert (out / "notes.txt").read_text() == "mine"


# ----- fuzz: bad option sets ---------------------------------------------------------------------

_NUMERIC = sorted({(m, k) for m, cls in OPTIONS.items() for k, t in cls.types().items() if t in (int, float)})
_STRINGS = sorted({(m, k) for m, cls in OPTIONS.items() for k, t in cls.types().items() if t is str})


@st.composite
def bad_argv(draw):
    method = draw(st.sampled_from(sorted(OPTIONS)))
    kind = draw(st.sampled_from(["key", "number", "nonfinite", "negative", "choice", "flag", "data", "method"]))
    extra = []
    if kind == "key":
        extra = ["--set", draw(st.from_regex(r"[a-z]{3,8}_x", fullmatch=True)) + "=1"]
    elif kind in ("number", "nonfinite", "negative"):
        m, key = draw(st.sampled_from(_NUMERIC))
        method = m
        value = {"number": draw(st.sampled_from(["fast", "1..2", "", "0x1g", "1e"])),
                 "nonfinite": draw(st.sampled_from(["nan", "inf", "-inf", "NaN"])),
                 "negative": draw(st.sampled_from(["-1", "-0.5", "-1e9"]))}[kind]
        if key == "p_mean" and kind == "negative":
            value = "nan"  # p_mean may be negative; make it bad another way
        if OPTIONS[m].types()[key] is int and kind == "nonfinite":
            value = "1.5"  # int options reject non-integers
        extra = ["--set", f"{key}={value}"]
    elif kind == "choice":
        m, key = draw(st.sampled_from(_STRINGS))
        method = m
        value = draw(st.sampled_from(["nope", "GAUSSIAN", "", "net,kde"]))
        cls = OPTIONS[m]
        allowed = ("",) + tuple(cls.PRESETS) if key == "preset" else _merged(cls, "CHOICES").get(key, ())
        assume(value not in allowed)  # "" is a valid preset (none)
        extra = ["--set", f"{key}={value}"]
    elif kind == "flag":
        extra = draw(st.sampled_from([["--samples", "1"], ["--samples", "-3"], ["--steps", "-1"], ["--ckpt-every", "0"],
                                      ["--seed", "-2"], ["--threads", "0"], ["--device", "tpu"], ["--samples", "x"],
                                      ["--set", "noequals"], ["--resume", "--overwrite"], ["--bogus"]]))
    elif kind == "data":
        return ["run", method, "--data", draw(st.sampled_from(["mnist", "", "8Gaussians", "moons.npy"]))], method
    else:
        method = draw(st.sampled_from(["vae", "EDM", "", "score_gan"]))
    return ["run", method, "--data", "moons"] + extra, method


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=bad_argv())
def test_fuzz_bad_option_sets_exit_2_with_one_line_and_write_nothing(capsys, case):
    argv, _ = case
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out"
        code, err = gpflow(capsys, *argv, "--out", out)
        one_error_line(code, err)
        assert not out.exists()


# ----- progress ----------------------------------------------------------------------------------


def test_progress_off_a_terminal_is_plain_lines():
    buf = io.StringIO()
    bar = Progress(100, "gan/moons", stream=buf)
    for i in range(1, 101):
        bar.update(i, {"loss": 0.5})
    text = buf.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10 and lines[0].startswith("gan/moons: step 10/100") and lines[-1].startswith("gan/moons: step 100/100")


def test_progress_on_a_terminal_redraws_one_line():
    buf = io.StringIO()
    bar = Progress(3, "x", stream=buf, tty=True)
    bar.update(1)
    bar.close()
    assert buf.getvalue().startswith("\rx |") and buf.getvalue().endswith("\n")


def test_threads_option_sets_torch_threads(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        assert gpflow(capsys, "run", "gan", "--data", "moons", "--out", tmp_path / "o", *FAST_GAN, "--threads", "1")[0] == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_failing_checkpoint_write_is_one_line_and_keeps_the_last_good_one(tmp_path, capsys, monkeypatch):
    """The disk fills up (or the folder turns read-only) mid-run: exit 1, the previous checkpoint intact."""
    import gpflow_kernels.methods.outdir as outdir

    real = outdir.OutDir.write
    calls = {"n": 0}

    def flaky(self, name, writer):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(self, name, writer)

    monkeypatch.setattr(outdir.OutDir, "write", flaky)
    out = tmp_path / "o"
    line = one_error_line(*gpflow(capsys, "run", "gan", "--data", "moons", "--out", out, *FAST_GAN, "--ckpt-every", "5"),
                          expected_code=1)
    assert "writing the checkpoint at step 10 failed (No space left on device)" in line
    assert "last good checkpoint (step 5)" in line
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 5


def test_a_checkpoint_write_killed_halfway_leaves_the_previous_one_readable(tmp_path, capsys, monkeypatch):
    """The second checkpoint's bytes stop halfway (the disk fills while torch.save writes): the file
    being written is a temporary one, so checkpoint.pt is still the first, whole and loadable, and
    no temporary file is left."""
    import gpflow_kernels.methods.runner as runner

    real = torch.save
    calls = {"n": 0}

    def half(obj, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
            raise OSError(28, "No space left on device")
        return real(obj, path, *a, **k)

    monkeypatch.setattr(runner.torch, "save", half)
    out = tmp_path / "o"
    line = one_error_line(*gpflow(capsys, "run", "gan", "--data", "moons", "--out", out, *FAST_GAN, "--ckpt-every", "5"),
                          expected_code=1)
    assert "writing the checkpoint at step 10 failed (No space left on device)" in line
    monkeypatch.setattr(runner.torch, "save", real)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 5
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]
    # and the run goes on from it
    assert gpflow(capsys, "run", "gan", "--data", "moons", "--out", out, *FAST_GAN, "--resume", "auto")[0] == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 20


def test_keep_k_keeps_the_last_k_checkpoints(tmp_path, capsys):
    out = tmp_path / "o"
    assert gpflow(capsys, "run", "gan", "--data", "moons", "--out", out, *FAST_GAN, "--ckpt-every", "5",
                  "--keep", "3")[0] == 0
    kept = sorted(p.name for p in out.glob("checkpoint-*.pt"))
    assert kept == ["checkpoint-000000010.pt", "checkpoint-000000015.pt", "checkpoint-000000020.pt"]
    for name in kept:
        assert torch.load(out / name, weights_only=True)["step"] == int(name[11:20])
    latest = torch.load(out / "checkpoint.pt", weights_only=True)
    assert latest["step"] == 20 and not list(out.glob(".*tmp"))
    # --overwrite starts over: the kept checkpoints of the old run go too
    assert gpflow(capsys, "run", "gan", "--data", "moons", "--out", out, *FAST_GAN, "--overwrite")[0] == 0
    assert not list(out.glob("checkpoint-*.pt"))


@pytest.mark.parametrize("argv, match", [
    (["--keep", "0"], "--keep must be >= 1, got 0"),
    (["--resume", "maybe"], "--resume takes no value or 'auto', got 'maybe'"),
    (["--resume", "auto", "--overwrite"], "--resume auto continues a run when there is one and --overwrite"),
])
def test_keep_and_resume_arguments_are_checked(tmp_path, capsys, argv, match):
    line = one_error_line(*gpflow(capsys, "run", "gan", "--data", "moons", "--out", tmp_path / "o", *FAST_GAN, *argv))
    assert match in line


def test_resume_auto_starts_then_continues_and_refuses_another_runs_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    args = ["run", "gan", "--data", "moons", "--out", out, *FAST_GAN, "--resume", "auto"]
    assert gpflow(capsys, *args)[0] == 0  # nothing there: starts
    first = torch.load(out / "checkpoint.pt", weights_only=True)
    assert gpflow(capsys, *args[:-2], "--set", "steps=30", "--resume", "auto")[0] == 0  # continues to 30
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 30 and first["step"] == 20
    # another run's checkpoint (another seed) is refused, not overwritten
    line = one_error_line(*gpflow(capsys, *args[:-2], "--set", "steps=30", "--seed", "3", "--resume", "auto"))
    assert "is from another run" in line
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 30
    # an elastic restart (TORCHELASTIC_RESTART_COUNT > 0) makes --overwrite mean --resume auto
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert gpflow(capsys, *args[:-2], "--set", "steps=40", "--overwrite")[0] == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 40

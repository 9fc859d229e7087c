"""``gpflow check``: the machine check (gpflow_kernels/check.py) and its command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpflow_kernels import _cpu, check, cli

ROOT = Path(__file__).resolve().parents[1]


def test_the_command_line_names_the_checks_ops():
    assert cli.CHECK_OPS == tuple(check.OPS) + ("contract",)


def test_quick_check_passes_on_this_cpu_prints_rows_and_writes_json(tmp_path):
    """As a user runs it: a fresh process, no Triton interpreter (so: torch and, where built, cpu)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out, live = tmp_path / "check.json", tmp_path / "check.jsonl"
    res = subprocess.run([sys.executable, "-m", "gpflow_kernels", "check", "--quick", "--json", str(out),
                          "--jsonl", str(live)],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[0].startswith("gpflow check: torch=") and "cpu_extension=" in lines[0]
    assert lines[-1].startswith("gpflow check: all ") and lines[-1].endswith(" cases passed")
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert data["failures"] == 0 and len(rows) == len(lines) - 4  # header, table head and rule, summary
    # the same rows, one JSON line each as measured, after the environment
    streamed = [json.loads(s) for s in live.read_text().splitlines()]
    assert streamed == [{"environment": data["environment"]}] + rows
    seen = {(r["op"], r["backend"], r["dtype"]) for r in rows}
    for op in check.OPS:
        for dt in ("float32", "float64"):
            assert (op, "torch", dt) in seen
            if _cpu.available():
                assert (op, "cpu", dt) in seen
    contract = [r for r in rows if r["op"].startswith("contract/")]
    rows = [r for r in rows if not r["op"].startswith("contract/")]
    assert {r["D"] for r in rows} == set(check.QUICK_DIMS)
    for r in rows:
        assert r["ok"] and 0 <= r["rel_err"] <= r["budget"] and r["median_ms"] > 0 and r["pairs_per_s"] > 0, r
    # the accuracy contract's hard cases, on both CPU backends
    assert {r["op"] for r in contract} == {"contract/self_pairs", "contract/close_pairs", "contract/two_clusters"}
    assert {r["backend"] for r in contract} == ({"torch", "cpu"} if _cpu.available() else {"torch"})
    assert all(r["ok"] and 0 <= r["rel_err"] <= 1 for r in contract)
    assert not list(tmp_path.glob("*.tmp-*"))  # the JSON is written whole


@pytest.fixture
def no_triton(monkeypatch):
    # Our Triton kernels are made (@triton.jit) on first import, in the mode TRITON_INTERPRET says
    # then: import them first, so that a later test in this process still gets the interpreter.
    from gpflow_kernels import ops

    ops._triton_module()
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # backends() reads it per call: triton is left out


@pytest.mark.skipif(not _cpu.available(), reason="the fused CPU extension is not built")
def test_a_wrong_backend_fails_the_check_and_is_named(no_triton, monkeypatch, tmp_path):
    good = _cpu.grad_sum
    monkeypatch.setattr(_cpu, "grad_sum", lambda *a: good(*a) * 1.001)  # 1e-3 off: above every budget
    lines = []
    rc = check.run_check("cpu", quick=True, json_path=str(tmp_path / "c.json"), ops_filter=["mmd_field", "mmd2"],
                         out=lines.append)
    assert rc == 1
    assert lines[-1].startswith("gpflow check: ") and "FAILED: mmd_field/cpu/float32, mmd_field/cpu/float64" in lines[-1]
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert all(r["ok"] for r in rows if r["backend"] == "torch" or r["op"] == "mmd2")  # mmd2 does not use grad_sum
    assert all(not r["ok"] for r in rows if r["backend"] == "cpu" and r["op"] == "mmd_field")


@pytest.mark.skipif(not _cpu.available(), reason="the fused CPU extension is not built")
def test_a_backend_outside_the_accuracy_contract_fails_the_check(no_triton, monkeypatch):
    """A soft assignment 1e-5 relative off passes the benign-data budget (1e-4 in float32) but not
    the contract on tight clusters: the check's contract rows name it."""
    good = _cpu.softmax_mean
    monkeypatch.setattr(_cpu, "softmax_mean", lambda x, y, s2: (lambda mu, lse: (mu * (1 + 1e-5), lse))(*good(x, y, s2)))
    lines = []
    assert check.run_check("cpu", quick=True, ops_filter=["contract"], out=lines.append) == 1
    assert "contract/two_clusters/cpu/float32" in lines[-1] and "/torch/" not in lines[-1]
    assert any(l.startswith("| contract/two_clusters | gaussian | 9 | float32 | cpu |") and "FAIL" in l for l in lines)


@pytest.mark.skipif(not _cpu.available(), reason="the fused CPU extension is not built")
def test_a_kernel_that_raises_is_a_failed_row_and_the_check_goes_on(no_triton, monkeypatch):
    def broken(*a):
        raise RuntimeError("launch failed: out of resources\nsecond line")

    monkeypatch.setattr(_cpu, "integral", broken)
    lines = []
    rc = check.run_check("cpu", quick=True, ops_filter=["kernel_integral", "kde_score"], out=lines.append)
    assert rc == 1
    failed = [ln for ln in lines if "| FAIL |" in ln]
    assert failed and all("kernel_integral" in ln and "| cpu |" in ln for ln in failed)
    assert all(ln.endswith("RuntimeError: launch failed: out of resources") for ln in failed)
    assert any("| kde_score |" in ln and "| cpu |" in ln and "| pass |" in ln for ln in lines)


@pytest.mark.parametrize("argv, match", [
    (["check", "--ops", "mmd_field,nope"], "--ops: unknown op(s) ['nope']"),
    (["check", "--device", "tpu"], "--device 'tpu' is not a device"),
    (["check", "--json", "/nonexistent-folder/c.json"], "--json /nonexistent-folder/c.json: the folder"),
    (["check", "--jsonl", "/nonexistent-folder/c.jsonl"], "--jsonl /nonexistent-folder/c.jsonl: the folder"),
    (["check", "--dims", "2,x"], "--dims '2,x': expected comma-separated integers >= 1"),
    (["check", "--dims", "0"], "--dims '0': expected comma-separated integers >= 1"),
])
def test_bad_arguments_are_one_line_and_exit_2(argv, match, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err, err


def test_a_cuda_device_that_is_not_there_is_refused(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert cli.main(["check", "--device", "cuda"]) == 1
    assert "torch sees no CUDA device here" in capsys.readouterr().err


# ----- backend="auto" degrades instead of crashing (issue "GPU readiness", item 2) -------------

def test_auto_falls_back_to_torch_when_a_kernel_fails_and_remembers(monkeypatch):
    """A Triton launch failure injected into the guarded module: "auto" gives the reference's
    numbers with one warning naming the primitive, dtype and D, and skips the kernel afterwards;
    the insisting backend still raises. (Exercised on the CPU: the guard does not look at devices.)"""
    pytest.importorskip("triton")
    from gpflow_kernels import _fallback, _library, _triton, ops
    import gpflow_kernels as gk

    calls = {"n": 0}

    def broken(*a):
        calls["n"] += 1
        raise RuntimeError("triton.runtime.errors.OutOfResources: out of resource: shared memory\nmore")

    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    want = gk.mmd_field(x, y, backend="torch")
    monkeypatch.setattr(_triton, "grad_sum", broken)
    monkeypatch.setattr(_fallback, "FAILED", {})
    guarded = _library.guarded("triton")
    real_impl = ops._impl
    monkeypatch.setattr(ops, "_impl", lambda backend, x, kernel=None: guarded)  # as "auto" on CUDA picks it
    with pytest.warns(RuntimeWarning, match=r"the triton kernel for grad_sum \(float64, D = 3, Gaussian\(\)\) failed "
                                            r"\(RuntimeError: triton.runtime.errors.OutOfResources"):
        got = gk.mmd_field(x, y, backend="auto")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert calls["n"] == 1
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, and the kernel is not tried again
        torch.testing.assert_close(gk.mmd_field(x, y, backend="auto"), want, rtol=0, atol=0)
    assert calls["n"] == 1
    monkeypatch.setattr(ops, "_impl", real_impl)
    if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available():
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        with pytest.raises(RuntimeError, match="OutOfResources"):  # backend="triton" insists
            gk.mmd_field(x.to(dev), y.to(dev), backend="triton")


@pytest.mark.interpreter
@pytest.mark.parametrize("broken_name", ["softmax_mean", "softmax_mean_backward"])
def test_auto_falls_back_for_the_soft_assignment_in_either_pass(monkeypatch, broken_name):
    """The soft assignment under "auto" with its Triton forward or backward failing: the other pass
    still runs on Triton, with the log-normaliser converted between Triton's unit (log2) and the
    reference's, so value and gradients equal the torch backend's."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("Triton runs here only through its interpreter")
    from gpflow_kernels import _fallback, _library, _triton, ops
    import gpflow_kernels as gk

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    x0, y0 = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    w = torch.randn(7, 3, generator=g, dtype=torch.float64)

    def value_and_grads(backend):
        x, y = x0.to(dev).requires_grad_(True), y0.to(dev).requires_grad_(True)
        out = gk.kde_score(x, y, bandwidth=0.7, backend=backend)
        return [out.detach(), *torch.autograd.grad((out * w.to(dev)).sum(), (x, y))]

    want = value_and_grads("torch")

    def broken(*a):
        raise RuntimeError("triton.compiler.errors.CompilationError: at 12:4")

    monkeypatch.setattr(_triton, broken_name, broken)
    monkeypatch.setattr(_fallback, "FAILED", {})
    guarded = _library.guarded("triton")
    monkeypatch.setattr(ops, "_impl", lambda backend, x, kernel=None: guarded)
    with pytest.warns(RuntimeWarning, match=rf"the triton kernel for {broken_name} \(float64, D = 3, gaussian\)"):
        got = value_and_grads("auto")
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_guard_passes_argument_errors_through(monkeypatch):
    from gpflow_kernels import _fallback

    class Mod:
        @staticmethod
        def integral(kernel, x, *rest):
            raise ValueError("x must be finite")

    monkeypatch.setattr(_fallback, "FAILED", {})
    with pytest.raises(ValueError, match="x must be finite"):
        _fallback.GuardedModule(Mod, "triton").integral(None, torch.zeros(1, 1, 2))
    assert _fallback.FAILED == {}

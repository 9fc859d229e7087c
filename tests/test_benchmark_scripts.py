"""The benchmark scripts. benchmarks/gpu_check.py runs only on a GPU machine, where device time is
scarce: its accuracy check and timing cases are exercised here on the CPU (Triton's interpreter,
tiny sizes) so that the script itself cannot be what fails there. benchmarks/report.py pairs
baselines with our implementations."""

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_accuracy_check_runs_and_passes(gpu_check, capsys):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu_check.check(n=11, m=9, dims=(2, 17), device=device)
    table = capsys.readouterr().out
    for op in ("mmd_field", "kernel_integral", "kde_score"):
        assert f"| {op} | 2 | triton |" in table and f"| {op} | 17 | triton |" in table
        assert f"| {op} | 17 | triton-tf32x3 |" in table and f"| {op} | 17 | triton-tf32 |" in table
        assert f"| {op} | 2 | triton-tf32" not in table  # exact differences there: no distance dots


def test_accuracy_check_fails_loudly_on_a_wrong_kernel(gpu_check, monkeypatch):
    wrong = dict(gpu_check.OPS)
    good = wrong["kde_score"]
    wrong["kde_score"] = lambda a, b, c, s, be: good(a, b, c, s, be) * (1.01 if be != "torch" else 1.0)
    monkeypatch.setattr(gpu_check, "OPS", wrong)
    with pytest.raises(SystemExit, match="accuracy check failed"):
        gpu_check.check(n=11, m=9, dims=(2,), device="cuda" if torch.cuda.is_available() else "cpu")


def test_every_timed_case_computes_its_op(gpu_check):
    # Each (op, implementation) closure the timing loop would call returns the torch backend's
    # numbers: no closure picks up another op's or another backend's arguments.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cases = list(gpu_check.timing_cases([(21, 2), (13, 17)], device=device))
    assert {(c[0], c[3]) for c in cases} >= {(op, be) for op in gpu_check.OPS for be in ("triton", "torch")}
    g = torch.Generator(device=device)
    for name, n, d, impl, fn, pairs in cases:
        g.manual_seed(n + d)
        x = torch.randn(n, d, device=device, generator=g)
        y = torch.randn(n, d, device=device, generator=g) + 0.5
        v = torch.randn(n, 4, device=device, generator=g)
        want = gpu_check.OPS[name](x, y, v, 0.5 * d**0.5, "torch")
        tol = gpu_check.BUDGET32.get(impl, 1e-4)  # TF32 dots on a GPU
        torch.testing.assert_close(fn(), want, rtol=tol, atol=tol / 10)
        assert pairs == (2 if name == "mmd_field" else 1) * n * n


def test_report_pairs_each_baseline_with_each_of_ours():
    spec = importlib.util.spec_from_file_location("report", SCRIPT.parent / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    bench = lambda group, impl, t: {"group": group, "params": {"impl": impl}, "stats": {"median": t}}
    data = {"benchmarks": [
        bench("cpu op", "tiled", 1.0), bench("cpu op", "naive", 4.0), bench("cpu op", "keops", 2.0),
        bench("gpu op", "triton", 0.1), bench("gpu op", "tiled", 1.0), bench("gpu op", "keops", 0.3),
        bench("sde", "ours", 1.0), bench("sde", "ours-compiled", 0.5), bench("sde", "torchsde", 3.0),
        bench("fused op", "fused", 0.2), bench("fused op", "tiled", 1.0), bench("fused op", "keops", 2.0),
        {"group": "yardstick", "params": None, "stats": {"median": 1e-5}},
    ]}
    assert report.rows(data) == [
        ("cpu op", "keops", 2.0, "tiled", 1.0), ("cpu op", "naive", 4.0, "tiled", 1.0),
        ("fused op", "keops", 2.0, "fused", 0.2), ("fused op", "tiled", 1.0, "fused", 0.2),
        ("gpu op", "keops", 0.3, "triton", 0.1), ("gpu op", "tiled", 1.0, "triton", 0.1),
        ("sde", "torchsde", 3.0, "ours", 1.0), ("sde", "torchsde", 3.0, "ours-compiled", 0.5),
    ]


def test_keops_rows_are_left_out_when_keops_cannot_run_and_stop_the_run_when_wrong(gpu_check, monkeypatch, capsys):
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def broken(name):
        def fn(*args):
            raise RuntimeError("no nvrtc")
        return fn

    monkeypatch.setattr(gpu_check, "keops_op", broken)
    cases = list(gpu_check.timing_cases([(21, 2)], device=device))
    assert cases and all(c[3] != "keops" for c in cases)
    assert "KeOps left out for kde_score N=21 D=2: RuntimeError: no nvrtc" in capsys.readouterr().out

    monkeypatch.setattr(gpu_check, "keops_op", lambda name: lambda a, b, c, s: gpu_check.OPS[name](a, b, c, s, "torch") * 1.01)
    with pytest.raises(AssertionError):
        list(gpu_check.timing_cases([(21, 2)], device=device))


def test_tf32_variants_run_triton_under_the_matching_matmul_precision(gpu_check):
    seen = []
    f = lambda a, be: seen.append((a, be, torch.get_float32_matmul_precision()))
    before = torch.get_float32_matmul_precision()
    for impl in ("triton", "triton-tf32x3", "triton-tf32", "cuda"):
        gpu_check.call(f, (1,), impl)
    assert seen == [(1, "triton", before), (1, "triton", "high"), (1, "triton", "medium"), (1, "cuda", before)]
    with pytest.raises(ZeroDivisionError):
        gpu_check.call(lambda a, be: 1 / 0, (1,), "triton-tf32")
    assert torch.get_float32_matmul_precision() == before


def test_dot_ceiling_fraction(gpu_check):
    assert gpu_check.dot_fraction("triton", 2, 1e12) is None and gpu_check.dot_fraction("cuda", 64, 1e12) is None
    assert gpu_check.dot_fraction("triton-tf32", 64, 495e12 / 256) == pytest.approx(1.0)
    assert gpu_check.dot_fraction("triton", 128, 67e12 / 512) == pytest.approx(1.0)


def test_small_d_forward_kernels_stay_under_16_float32_ops_per_pair():
    # Static sm_90 cost per pair (benchmarks/ptx_count.py): against one ex2 per pair, an H100 SM
    # issues 8 float32 ops, so ops per pair bound the fraction of the exp ceiling at 8 / ops.
    # Compiled in a fresh interpreter: under TRITON_INTERPRET the kernels are not compilable.
    import json
    import os
    import subprocess
    import sys

    code = ("import json, sys; sys.path.insert(0, 'benchmarks'); import ptx_count as p; "
            "print(json.dumps({op: {m: p.per_pair(2, m, (32, 32, 4, 2), op) for m in (0, 1, 2)} for op in ('mmd_field', 'kde_score')}))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=SCRIPT.parents[1])
    assert res.returncode == 0, res.stderr[-2000:]
    for op, cost in json.loads(res.stdout.strip().splitlines()[-1]).items():
        reduce, ones, defer = cost["0"], cost["1"], cost["2"]
        assert defer["ex2"] == 1.0 <= reduce["ex2"], op
        assert defer["fp32"] <= 16 < ones["fp32"], (op, cost)
        if op == "mmd_field":  # exact-difference range: both modes sum the differences (diff_sums)
            assert ones == reduce, cost
        else:
            assert ones["fp32"] < reduce["fp32"], (op, cost)
        assert defer["shfl"] == 0 < reduce["shfl"], op
        assert defer["stack"] == 0, op

"""The command line: `gpflow` / `python -m gpflow_kernels`, its errors, and the README's main command."""

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpflow_kernels.cli import main

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, timeout=300, cwd=None):
    return subprocess.run([sys.executable, "-m", "gpflow_kernels", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def test_methods_lists_every_method_with_its_kind():
    res = cli("methods")
    assert res.returncode == 0, res.stderr
    for name, kind in [("edm", "PM"), ("score-gan", "Int-PM"), ("disc-flow", "PM"), ("disc-flow-gen", "Int-PM"), ("gan", "Int-PM"),
                       ("diffflow", "PM"), ("mmd-guidance", "PM"), ("mmd-flow", "flow"), ("svgd", "flow"),
                       ("langevin", "flow")]:
        assert re.search(rf"^{re.escape(name)}\s+{re.escape(kind)}\s", res.stdout, re.M), name
    assert "digits" in res.stdout


@pytest.mark.parametrize("args, message", [
    (["run", "vae", "--data", "moons", "--out", "X"], "unknown method 'vae'"),
    (["run", "gan", "--data", "mnist", "--out", "X"], "unknown data set 'mnist'"),
    (["run", "gan", "--data", "moons", "--out", "X", "--set", "depthh=2"], "has no option 'depthh'"),
    (["run", "gan", "--data", "moons", "--out", "X", "--set", "lr=fast"], "option lr of 'gan' must be float"),
    (["run", "gan", "--data", "moons", "--out", "X", "--set", "lr"], "--set takes KEY=VALUE"),
    (["run", "gan", "--data", "moons", "--out", "X", "--steps", "-3"], "--steps must be >= 0"),
    (["run", "gan", "--data", "moons", "--out", "X", "--device", "cuda:0"], "cuda"),
    (["run", "gan", "--data", "moons", "--out", "X", "--device", "gpu"], "--device 'gpu'"),
    (["compare", "--data", "moons", "--out", "X", "--methods", "edm,foo"], "unknown method(s) ['foo']"),
    (["run", "gan", "--out", "X"], "--data"),
    (["fly"], "invalid choice"),
])
def test_bad_input_exits_non_zero_with_a_clear_message(tmp_path, args, message):
    if "--device" in args and "cuda" in args[-1]:
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
    res = cli(*[a.replace("X", str(tmp_path / "out")) for a in args], timeout=60)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_run_writes_its_outputs_and_resume_needs_the_flag(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "mmd-flow", "--data", "moons", "--out", str(out), "--quiet", "--set", "sample_steps=20",
            "--set", "n_data=300", "--samples", "200"]
    assert main(args) == 0
    for name in ("metrics.json", "samples.png", "trajectory.png", "checkpoint.pt"):
        assert (out / name).stat().st_size > 0, name
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "mmd-flow" and m["data"] == "moons" and m["final"]["mmd2"] < m["init"]["mmd2"]
    capsys.readouterr()
    assert main(args) == 2 and "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    assert main(args + ["--overwrite"]) == 0


def test_compare_writes_a_table(tmp_path):
    res = cli("compare", "--data", "8gaussians", "--out", str(tmp_path), "--methods", "gan,mmd-flow",
              "--steps", "50", "--quiet")
    assert res.returncode == 0, res.stderr
    table = (tmp_path / "compare.md").read_text()
    assert "| gan | Int-PM |" in table and "| mmd-flow | flow |" in table and "field evals / sample" in table
    rows = json.loads((tmp_path / "compare.json").read_text())
    assert [r["method"] for r in rows] == ["gan", "mmd-flow"] and rows[0]["nfe"] == 1


def readme_main_command():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    first = blocks[0].strip()
    assert first.startswith("pip install") and "&&" in first
    return first.split("&&", 1)[1].strip()


def test_readme_main_command_as_written(tmp_path):
    words = shlex.split(readme_main_command())
    assert words[:2] == ["gpflow", "run"]
    exe = shutil.which("gpflow")
    # Installed: the console script itself; from a source tree: the same entry point through -m.
    cmd = [exe] if exe else [sys.executable, "-m", "gpflow_kernels"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run(cmd + words[1:] + ["--quiet"], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    out = tmp_path / words[words.index("--out") + 1]
    m = json.loads((out / "metrics.json").read_text())
    assert m["final"]["mmd2"] < 0.1 * m["init"]["mmd2"]
    assert (out / "samples.png").exists() and (out / "trajectory.png").exists()


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_layers_import_downward_only():
    """Layer 1 (gpflow_kernels core) never imports solvers or the methods; solvers never imports layer 3."""
    core = [p for p in (ROOT / "gpflow_kernels").rglob("*.py")
            if "methods" not in p.parts and p.name not in ("cli.py", "__main__.py")]
    for p in core:
        bad = [m for m in _imports(p) if m.split(".")[0] == "solvers" or m.startswith("gpflow_kernels.methods")
               or m == "gpflow_kernels.cli"]
        assert not bad, (p, bad)
    for p in (ROOT / "solvers").rglob("*.py"):
        bad = [m for m in _imports(p) if m.startswith(("gpflow_kernels.methods", "gpflow_kernels.cli"))]
        assert not bad, (p, bad)
    probe = "import sys, gpflow_kernels; print(sorted(m for m in sys.modules if m == 'solvers' or m.startswith('gpflow_kernels.methods')))"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "[]", res.stdout + res.stderr


def test_compare_set_goes_to_the_methods_that_have_the_option(tmp_path):
    from gpflow_kernels.cli import compare_sets
    from gpflow_kernels.methods.outdir import RunError

    per = compare_sets(["gan", "mmd-flow"], ["batch=64", "n_data=300", "image_size=16"])
    assert per == {"gan": {"batch": 64, "image_size": 16}, "mmd-flow": {"n_data": 300, "image_size": 16}}
    with pytest.raises(RunError, match="none of the compared methods"):
        compare_sets(["gan"], ["guidance=3"])

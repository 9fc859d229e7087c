"""The README's API tour runs as written, and its set-up commands are the ones CI runs."""

import re

import torch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def run_block(marker):
    (code,) = [b for b in BLOCKS if marker in b]
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)
    return ns


def test_api_tour_runs():
    ns = run_block("ntk_smooth")
    assert float(ns["gk"].mmd2(ns["x"], ns["data"], bandwidth=0.5)) < 1e-2
    assert ns["moved"].shape == (256, 2)


def test_solvers_tour_runs():
    ns = run_block("DiffFlowSDE.from_samples")
    gk, data, x0 = ns["gk"], ns["data"], ns["x0"]
    start = float(gk.mmd2(x0, data))
    assert float(gk.mmd2(ns["x"], data)) < 0.1 * start
    assert float(gk.mmd2(ns["path"][-1], data)) < 0.1 * start
    assert float(torch.cdist(ns["y"], data).min(1).values.max()) < 0.05


def test_adaptive_tour_runs():
    ns = run_block("solvers.log_prob")
    assert ns["path"].shape == (11, 256, 2) and ns["stats"].nfe > 0
    assert ns["logp"].shape == (256,) and bool(torch.isfinite(ns["logp"]).all())
    assert all(p.grad is not None for p in ns["net"].parameters())


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    test_cmd = [c for c in commands if "pytest" in c and "benchmark" not in c]
    assert len(test_cmd) == 1
    assert test_cmd[0] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_main_jobs_output_folder_is_git_ignored():
    """runs/ (where the README's commands write) never shows up as untracked files."""
    ignore = (ROOT / ".gitignore").read_text().splitlines()
    assert "runs/" in ignore and "--out runs/edm" in README

"""The README's API tour runs as written, and its set-up commands are the ones CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_api_tour_runs():
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "import gpflow_kernels" in b]
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert float(ns["gk"].mmd2(ns["x"], ns["data"], bandwidth=0.5)) < 1e-2
    assert ns["moved"].shape == (256, 2)


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    test_cmd = [c for c in commands if "pytest" in c and "benchmark" not in c]
    assert len(test_cmd) == 1
    assert test_cmd[0] in (ROOT / ".ci" / "run").read_text().splitlines()

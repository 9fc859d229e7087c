"""benchmarks/gpu_session.sh, the one command of a GPU session, in its reduced CPU dry run (a few
cases per stage): every stage runs and leaves its output files, a stage out of time is cut off
while the next still runs, and a failing test's text is on disk while the run goes on (one run,
about a minute on 2 cores)."""

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"



def _session(tmp_path, *stages, **env):
    out = tmp_path / "out"
    e = {**os.environ, "OUT": str(out), "TMPDIR": str(tmp_path), "REDUCED": "1", **env}
    e.pop("PYTEST_XDIST_WORKER", None)
    p = subprocess.run(["bash", str(SCRIPT), *stages], cwd=ROOT, env=e, capture_output=True, text=True,
                       timeout=240)
    return p, out


def _rows(summary):
    """{stage: [(budget, took, exit, note), ...]} from summary.md's stage table."""
    rows = {}
    for line in summary.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1].isdigit():
            rows.setdefault(cells[0], []).append((int(cells[1]), int(cells[2]), int(cells[3]), cells[4]))
    return rows


def test_reduced_dry_run_of_every_stage_and_a_stage_cut_off(tmp_path):
    """One reduced dry run of every stage, its gputests stage given two planted tests (one fails at
    once, one hangs) and 12 s: that stage is cut off at its budget, with the failure's text already
    on disk; every other stage runs and passes, and every output file is there."""
    tests = tmp_path / "test_planted.py"
    tests.write_text("import time\n\n"
                     "def test_fails_at_once():\n    assert 1 + 1 == 3, 'planted failure'\n\n"
                     "def test_hangs():\n    time.sleep(600)\n")
    # through pytest-xdist, as on the GPU: the report reaches the file from the controller
    p, out = _session(tmp_path, "all", GPU_TESTS_REDUCED=str(tests), BUDGET_gputests="12", XDIST="2")
    assert p.returncode == 124, p.stdout[-3000:] + p.stderr[-3000:]  # the first failing stage's status
    files = sorted(f.name for f in out.iterdir())
    assert files == ["bench.json", "failures.txt", "gpflow-check.json", "gpflow-check.jsonl", "logs.tar.gz",
                     "summary.md"]  # at most 8 files come back from a device run
    summary = (out / "summary.md").read_text()
    rows = _rows(summary)
    assert set(rows) == {"build", "check", "gputests", "bench", "dist", "images"} and "dry run" in summary
    (budget, took, rc, note), = rows["gputests"]
    assert budget == 12 and rc == 124 and note == "cut off at the budget" and took < 12 + 20
    assert all(r[2] == 0 and not r[3] for s, rs in rows.items() if s != "gputests" for r in rs), rows
    text = (out / "failures.txt").read_text()
    assert "test_planted.py::test_fails_at_once" in text and "planted failure" in text
    assert text.count("==== ") == 1  # written once (by xdist's controller, not also by its worker)
    # the check's rows, line by line, and whole at the end
    lines = [json.loads(s) for s in (out / "gpflow-check.jsonl").read_text().splitlines()]
    assert "environment" in lines[0] and len(lines) > 1 and all(r["ok"] for r in lines[1:])
    assert len(json.loads((out / "gpflow-check.json").read_text())["rows"]) == len(lines) - 1
    assert {b["group"].split(" N=")[0] for b in json.loads((out / "bench.json").read_text())["benchmarks"]} \
        == {"sde euler"}
    with tarfile.open(out / "logs.tar.gz") as t:
        names = {Path(n).name for n in t.getnames()}
    assert {"build.log", "check.log", "gputests.log", "bench.log", "dist.log", "images.log",
            "junit-gputests.xml", "metrics.json"} <= names
    assert not list(tmp_path.glob("gpflow_session.*"))  # its working folder is removed


def test_unknown_stage_is_refused(tmp_path):
    p, out = _session(tmp_path, "bild")
    assert p.returncode == 2 and "unknown stage 'bild'" in p.stderr
    assert not out.exists() and not list(tmp_path.glob("gpflow_session.*"))  # nothing made

"""A pytest plugin: each failing test's full report, appended to a file the moment it fails.

    GPFLOW_FAILURES=PATH python -m pytest -p live_failures ...   (benchmarks/ on sys.path)

pytest-xdist prints failures only in its end-of-run summary, so a run cut off from outside (a
device session's time limit) used to return none of their text. Under xdist this hook runs in
the controller as each worker's report arrives, so one process writes the file; each write is
flushed and fsynced at once. Errors in set-up or tear-down count as failures too.
"""

from __future__ import annotations

import os
import time


_worker = False


def pytest_configure(config):
    global _worker
    _worker = hasattr(config, "workerinput")  # an xdist worker: its controller writes instead


def _path():
    return None if _worker else os.environ.get("GPFLOW_FAILURES")


def pytest_runtest_logreport(report):
    path = _path()
    if not path or not report.failed:
        return
    head = f"==== {report.nodeid} ({report.when}) FAILED at {time.strftime('%H:%M:%S')}, {report.duration:.1f} s"
    with open(path, "a") as f:
        f.write(f"{head}\n{report.longreprtext}\n")
        for name, text in report.sections:  # captured stdout/stderr/log of the failing test
            if text.strip():
                f.write(f"---- {name}\n{text[-4000:]}\n")
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def pytest_collectreport(report):
    path = _path()
    if path and report.failed:
        with open(path, "a") as f:
            f.write(f"==== collecting {report.nodeid} FAILED\n{report.longreprtext}\n\n")

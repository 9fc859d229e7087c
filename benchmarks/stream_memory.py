"""Memory and speed of a run on a file read whole (stream=off) and streamed (stream=on).

Writes an (N, 28, 28) uint8 .npy of random pixels to a temporary folder, then trains ``edm``
(a small U-Net) on it with each setting, ``rounds`` times interleaved, each run a fresh
``gpflow run`` process. While it runs, the anonymous resident memory (what cannot be dropped,
unlike the page cache a memory map fills) of the process and its DataLoader workers is summed
every 20 ms as Pss_Anon (a page a forked worker shares with its parent counts once); the table
gives its peak, the run's wall time and metrics.json's training images per second (medians over
the rounds). Modes: off (loaded whole), on/2 (2 reading workers), on/0 (read in the training
process, the default on the CPU).

Usage: OMP_NUM_THREADS=2 python benchmarks/stream_memory.py [N] [steps] [rounds]
       (default N = 400 000: a 314 MB file, 1.25 GB as float32)
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _anon_kb(pid: int) -> int:
    """Pss_Anon: anonymous memory with pages shared with forked workers counted once overall."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss_Anon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(root: int):
    """root and every process below it (the DataLoader workers)."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def run(data: Path, out: Path, mode: str, steps: int):
    mode, _, workers = mode.partition("/")
    cmd = [sys.executable, "-m", "gpflow_kernels", "run", "edm", "--data", str(data), "--out", str(out),
           "--steps", str(steps), "--samples", "16", "--no-plots", "--quiet", "--overwrite",
           "--threads", os.environ.get("OMP_NUM_THREADS", "2"),
           "--set", f"stream={mode}", "--set", f"workers={workers or 0}", "--set", "batch=64", "--set", "channels=8", "--set", "depth=2",
           "--set", "sample_steps=2", "--set", "nll_points=0", "--set", "ema=0"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, sum(_anon_kb(p) for p in _tree(proc.pid)))
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{mode}: exit {proc.returncode}: {err[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return peak / 1024, wall, metrics["train_images_per_second"]


def main(n=400_000, steps=300, rounds=2):
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "images.npy"
        arr = np.lib.format.open_memmap(data, mode="w+", dtype=np.uint8, shape=(n, 28, 28))
        rng = np.random.default_rng(0)
        for a in range(0, n, 50_000):
            arr[a:a + 50_000] = rng.integers(0, 256, size=(min(50_000, n - a), 28, 28), dtype=np.uint8)
        arr.flush()
        del arr
        size = data.stat().st_size / 2**20
        res = {"off": [], "on/2": [], "on/0": []}
        for _ in range(rounds):
            for mode in res:
                res[mode].append(run(data, Path(tmp) / "run", mode, steps))
        print(f"| stream (N = {n}, 28×28 uint8, {size:.0f} MB file; edm, {steps} steps of 64) | peak Pss_Anon (MB) "
              "| wall (s) | training images/s |")
        print("|---|---:|---:|---:|")
        for mode in res:
            med = [statistics.median(r[i] for r in res[mode]) for i in range(3)]
            print(f"| {mode} | {med[0]:.0f} | {med[1]:.1f} | {med[2]:.0f} |")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))

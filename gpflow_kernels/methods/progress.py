"""A minimal progress bar on stderr (k-diffusion style: the caller can switch it off)."""

from __future__ import annotations

import sys
import time
from typing import Dict, Optional


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool = True, stream=None, start: int = 0):
        self.total, self.desc, self.enabled = max(total, 0), desc, enabled and total > 0
        self.stream = stream or sys.stderr
        self.t0, self.last, self.start = time.perf_counter(), 0.0, start

    def update(self, done: int, stats: Optional[Dict[str, float]] = None) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if done < self.total and now - self.last < 0.2:
            return
        self.last = now
        elapsed = now - self.t0
        rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        width = 24
        fill = int(width * done / self.total)
        extra = " ".join(f"{k}={v:.4g}" for k, v in (stats or {}).items())
        self.stream.write(f"\r{self.desc} |{'#' * fill}{'.' * (width - fill)}| {done}/{self.total} "
                          f"{elapsed:5.1f}s<{eta:5.1f}s {extra}")
        if done >= self.total:
            self.stream.write("\n")
        self.stream.flush()

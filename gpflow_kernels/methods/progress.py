"""Progress on stderr (k-diffusion style: the caller can switch it off).

On a terminal, one bar redrawn in place (``\\r``) at most five times a second. Anywhere else (a
log file, CI, a pipe) ``\\r`` updates would pile up into one huge line, so it writes a plain line
at each tenth of the run instead.
"""

from __future__ import annotations

import sys
import time
from typing import Dict, Optional


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool = True, stream=None, start: int = 0,
                 tty: Optional[bool] = None):
        self.total, self.desc, self.enabled = max(total, 0), desc, enabled and total > start
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty()) if tty is None else tty
        self.t0, self.last, self.start = time.perf_counter(), 0.0, start
        self.next_line = start // max(1, self.total // 10) + 1  # the next tenth to report
        self.open = False  # a terminal bar drawn without its newline yet

    def _text(self, done: int, stats: Optional[Dict[str, float]]) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        extra = " ".join(f"{k}={v:.4g}" for k, v in (stats or {}).items())
        return f"{done}/{self.total} {elapsed:5.1f}s<{eta:5.1f}s {extra}".rstrip()

    def update(self, done: int, stats: Optional[Dict[str, float]] = None) -> None:
        if not self.enabled:
            return
        if not self.tty:
            tenth = max(1, self.total // 10)
            if done >= self.next_line * tenth or done >= self.total:
                self.next_line = done // tenth + 1
                self.stream.write(f"{self.desc}: step {self._text(done, stats)}\n")
                self.stream.flush()
            return
        now = time.perf_counter()
        if done < self.total and now - self.last < 0.2:
            return
        self.last = now
        width = 24
        fill = int(width * done / self.total)
        self.stream.write(f"\r{self.desc} |{'#' * fill}{'.' * (width - fill)}| {self._text(done, stats)}")
        self.open = done < self.total
        if not self.open:
            self.stream.write("\n")
        self.stream.flush()

    def close(self) -> None:
        """End a bar left open (the run stopped early), so that what follows starts a new line."""
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False

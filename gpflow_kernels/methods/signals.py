"""Deferred SIGINT/SIGTERM: a signal sets a flag that the run checks at its next safe point.

No torch here: the command line defers signals from before it imports torch. Python raises
KeyboardInterrupt wherever the main thread happens to be, and during start-up that was seen to go
wrong in three ways: the interrupt was lost and the run went on to finish (most likely a library's
bare ``except:``); our message was printed and the process still died by SIGINT at exit (we read
this as CPython's unhandled-interrupt flag, set when the interrupt passes through code run by
``PyRun_String``; not verified); and a C++ ``terminate`` in a nanobind extension (SIGABRT). So the first signal
only sets a flag; the run checks it between start-up stages, at each training step boundary and
before it writes its results. A second signal raises KeyboardInterrupt at once (the user insists).

Nesting shares one flag (the command line's and the runner's scopes), so a signal caught by the
outer scope is seen by the inner one; the flag is cleared when the outermost scope is entered.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Dict, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state: Dict[str, object] = {"signum": None, "at": 0.0, "depth": 0, "old": {}}


#: Under torchrun a Ctrl-C reaches each rank twice: from the terminal and forwarded by torchrun's
#: agent. A repeat within this many seconds is that echo, not the user insisting.
ECHO_S = 2.0


def _handle(signum, frame):
    now = time.monotonic()
    if _state["signum"] is not None:
        launched = os.environ.get("WORLD_SIZE", "1") not in ("", "1")
        if launched and now - _state["at"] < ECHO_S:
            return
        raise KeyboardInterrupt
    _state["signum"], _state["at"] = signum, now


class DeferredSignals:
    """Context manager (main thread only; elsewhere it does nothing): while active, SIGINT and
    SIGTERM set :attr:`signum` instead of interrupting; a second one raises KeyboardInterrupt."""

    def __enter__(self):
        self.active = threading.current_thread() is threading.main_thread()
        if self.active:
            if _state["depth"] == 0:
                _state["signum"] = None
                _state["old"] = {s: signal.signal(s, _handle) for s in SIGNALS}
            _state["depth"] += 1
        return self

    @property
    def signum(self) -> Optional[int]:
        """The first signal received in this scope (or an enclosing one), else None."""
        return _state["signum"] if self.active else None

    def __exit__(self, *exc):
        if self.active:
            _state["depth"] -= 1
            if _state["depth"] == 0:
                for s, h in _state["old"].items():
                    signal.signal(s, h)
                _state["old"] = {}
        return False

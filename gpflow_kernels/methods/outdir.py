"""The output folder of a run: checked before any work, created at its first write, written atomically.

No torch here: the command line checks ``--out`` before it imports torch. Rules:
- ``--out`` must be a folder, or a path where one can be made, that this process can write to (a
  probe file is created and removed, which also catches read-only mounts, as root too);
- a folder that holds a run (``checkpoint.pt``) is refused unless ``--resume`` (continue it) or
  ``--overwrite`` (start over); ``--resume`` without a checkpoint is refused; ``--resume auto``
  continues a run when the folder holds one and starts one otherwise, and is what a run restarted
  by torchrun's elastic agent does (``TORCHELASTIC_RESTART_COUNT`` > 0: see ``resolve_resume``);
- the folder is made, and an overwritten run's files removed, only when the new run writes its
  first file, so a run that fails before that leaves the file system as it found it;
- every file is written to a temporary name and renamed, so no reader sees half a file, and a write
  that fails (disk full, folder made read-only, process killed) leaves the previous file as it was;
- ``--keep K`` (K > 1) also keeps the last K checkpoints as ``checkpoint-STEP.pt`` (hard links to
  each checkpoint as written, so the newest costs no space twice).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

CHECKPOINT = "checkpoint.pt"
#: the files a run writes (what --overwrite removes; nothing else in the folder is touched)
RUN_FILES = (CHECKPOINT, "metrics.json", "samples.png", "trajectory.png", "compare.json", "compare.md")
#: the kept checkpoints (--keep), which --overwrite removes too
KEPT = "checkpoint-*.pt"


class RunError(ValueError):
    """A run cannot start as asked (an option, the output folder or the checkpoint): exit code 2."""


class RunFailed(RuntimeError):
    """A run failed while it ran (diverged, a write failed): exit code 1. The message says what is left."""


class Interrupted(Exception):
    """Ctrl-C (SIGINT) or SIGTERM stopped the run; the message says what was saved: exit code 130."""


def _probe(folder: Path, out: Path) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".gpflow-probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        where = "" if folder == out else f" (its nearest existing folder {folder} is not writable)"
        raise RunError(f"--out {out} is not writable{where}: {e.strerror or e}; choose another --out") from None


def resolve_resume(out, resume, overwrite: bool, environ=os.environ):
    """(resume, overwrite) as booleans, from the flags as given: ``resume`` is False, True or "auto".

    "auto": resume when ``out`` holds a checkpoint, else start (a checkpoint of another run is then
    refused by the runner, never overwritten). Under torchrun's elastic agent a restarted worker
    group (``TORCHELASTIC_RESTART_COUNT`` > 0) runs the same command again: then no flag and
    ``--overwrite`` also mean "auto", since the first attempt already started the run over and its
    checkpoints are what the restart must continue from.
    """
    if resume not in (False, True, "auto"):
        raise RunError(f"--resume takes no value or 'auto', got {resume!r}")
    if resume == "auto" and overwrite:
        raise RunError("--resume auto continues a run when there is one and --overwrite starts it over: pass one of them")
    try:
        restarted = int(environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
    except ValueError:
        restarted = False
    if restarted and resume is not True:
        resume, overwrite = "auto", False
    if resume == "auto":
        return (Path(out) / CHECKPOINT).exists(), False
    return bool(resume), overwrite


def check(out, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Check ``out`` for a run with these flags; returns it as a Path. Creates nothing."""
    if resume and overwrite:
        raise RunError("--resume continues the run in --out and --overwrite starts it over: pass one of them")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file, not a folder; choose another --out")
    if not out.exists():
        parent = out.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise RunError(f"--out {out} cannot be made: {parent} is a file, not a folder; choose another --out")
        if resume:
            raise RunError(f"--resume: {out} does not exist, so there is no run to continue; drop --resume to start one")
        _probe(parent, out)
        return out
    _probe(out, out)
    has_run = (out / CHECKPOINT).exists()
    if resume and not has_run:
        raise RunError(f"--resume: {out} holds no {CHECKPOINT}, so there is no run to continue; drop --resume to start one")
    if has_run and not (resume or overwrite):
        raise RunError(f"{out} already holds a run ({CHECKPOINT}): --resume continues it, --overwrite starts over, "
                       "or choose another --out")
    return out


class OutDir:
    """Writes a run's files into ``path``; the folder appears with the first file."""

    def __init__(self, path: Path, overwrite: bool = False):
        self.path, self.overwrite, self.ready = Path(path), overwrite, False

    def _prepare(self) -> None:
        if self.ready:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if self.overwrite:
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
            for kept in self.path.glob(KEPT):
                kept.unlink(missing_ok=True)
        self.ready = True

    def write(self, name: str, writer: Callable[[Path], None]) -> Path:
        """``writer(tmp_path)`` writes the file's content; it then replaces ``name`` in one rename."""
        self._prepare()
        final = self.path / name
        tmp = final.with_name(f".{name}.tmp")
        try:
            writer(tmp)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    def write_text(self, name: str, text: str) -> Path:
        return self.write(name, lambda p: p.write_text(text))

    def keep_last(self, step: int, keep: int) -> None:
        """With keep > 1: checkpoint.pt as just written also as checkpoint-STEP.pt (a hard link where
        the file system has them, else a copy), and only the newest ``keep`` of those stay."""
        if keep <= 1:
            return
        final = self.path / f"checkpoint-{step:09d}.pt"
        tmp = final.with_name(f".{final.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(self.path / CHECKPOINT, tmp)
        except OSError:
            import shutil

            shutil.copyfile(self.path / CHECKPOINT, tmp)
        os.replace(tmp, final)
        for old in sorted(self.path.glob(KEPT))[:-keep]:
            old.unlink(missing_ok=True)

    def exists(self, name: str) -> bool:
        return (self.path / name).exists() and (self.ready or not self.overwrite)

    def describe_checkpoint(self, step: Optional[int]) -> str:
        """What a failed run leaves, and how to go on, for its error message."""
        if step is None or not self.exists(CHECKPOINT):
            return f"nothing was written to {self.path}"
        return (f"its last good checkpoint (step {step}) is in {self.path / CHECKPOINT}: --resume continues from it, "
                "--overwrite starts over")


class NoWrites(OutDir):
    """The output folder as seen by torchrun ranks other than 0: only rank 0 writes."""

    def write(self, name: str, writer: Callable[[Path], None]) -> Path:
        return self.path / name

    def keep_last(self, step: int, keep: int) -> None:
        pass

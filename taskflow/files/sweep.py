"""What crashed writers left behind: ``.tmp-*`` files in the user areas.

A writer that dies between creating its hidden temporary file and moving it
into place (a killed worker, an API restarted mid-upload) leaves the file
there, hidden from its owner but counted by the disk. The scheduler sweeps
them a slice at a time (``taskflow.scheduler``): a base with a million user
areas, or one area with a million files, must not make one tick take
minutes, so a sweep remembers where it stopped and the next run goes on
from there.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from taskflow.files import TEMPORARY_PREFIX


@dataclass(frozen=True)
class SweepResult:
    removed: int
    examined: int
    # The pass reached its end; the next run starts a new one.
    finished: bool


class TemporaryFileSweep:
    """Passes over ``base/<user_id>/``, removing temporary files older than
    ``older_than_seconds``. Safe on a live system as long as no write goes
    that long without writing (an upload in progress touches its file with
    every chunk, and is given up long before).

    Not thread-safe: one ``run`` at a time (each may be in a different thread).
    """

    def __init__(self, base: Path, *, older_than_seconds: float) -> None:
        self.base = Path(base)
        self.older_than_seconds = older_than_seconds
        self._walk: Iterator[Path | None] | None = None

    def run(
        self, *, max_entries: int | None = None, budget_seconds: float | None = None
    ) -> SweepResult:
        """Go on with the current pass (or start one) for at most
        ``max_entries`` directory entries or ``budget_seconds``, whichever
        ends first; at least one entry, so every run makes progress."""
        deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
        cutoff = time.time() - self.older_than_seconds
        if self._walk is None:
            self._walk = _entries(self.base)
        removed = examined = 0
        for candidate in self._walk:
            examined += 1
            if candidate is not None and _remove_if_older(candidate, cutoff):
                removed += 1
            if (max_entries is not None and examined >= max_entries) or (
                deadline is not None and time.monotonic() >= deadline
            ):
                return SweepResult(removed, examined, finished=False)
        self._walk = None
        return SweepResult(removed, examined, finished=True)


def _entries(base: Path) -> Iterator[Path | None]:
    """Each user area and each entry in it, as they are read: the path of a
    temporary file, None for anything else (it was looked at all the same)."""
    try:
        areas = os.scandir(base)
    except (FileNotFoundError, NotADirectoryError):
        return
    with areas:
        for area in areas:
            yield None
            # Areas are named by user id; anything else here is not ours.
            is_area = area.name.isascii() and area.name.isdigit()
            if not is_area or not area.is_dir(follow_symlinks=False):
                continue
            try:
                entries = os.scandir(area.path)
            except (FileNotFoundError, NotADirectoryError):
                continue  # deleted since it was listed
            with entries:
                for entry in entries:
                    yield Path(entry.path) if entry.name.startswith(TEMPORARY_PREFIX) else None


def _remove_if_older(path: Path, cutoff: float) -> bool:
    try:
        info = path.lstat()
        if stat.S_ISDIR(info.st_mode) or info.st_mtime >= cutoff:
            return False
        path.unlink()
    except FileNotFoundError:  # committed, discarded or swept meanwhile
        return False
    return True

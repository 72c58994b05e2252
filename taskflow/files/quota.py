"""A file area's quota (``user_files_max_bytes``, SPEC §8): what the area
holds, and the lock under which one write at a time checks it and lands.

The use is the sum of the sizes of the area's visible regular files, found by
scanning the directory when a file is about to land: areas are small, and a
count kept anywhere else would drift from the disk with every crash between
a write and its bookkeeping. Hidden files are TaskFlow's own writes in
progress, not the user's yet (a crashed writer's are swept).

Writers run on threads of the API and of every worker process, so the check
and the move into place that follows hold an exclusive ``flock`` on the
area's lock file, ``<base>/.locks/<user_id>.lock``: beside the areas rather
than in one, where it would be a file the user does not own. flock excludes
every other open of the file, whichever thread or process made it, and the
kernel drops it with the file descriptor, so a writer killed while holding
it blocks nobody. The lock is a file, not the area's directory, because
over NFS an exclusive lock needs a descriptor open for writing.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from taskflow.errors import QuotaExceeded

QUOTA_KEY = "user_files_max_bytes"
LOCK_DIRECTORY = ".locks"
_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB")


def effective_quota(override: int | None, default: int) -> int | None:
    """A user's quota in bytes, None for no limit: their own
    (``user_limits.files_max_bytes``) where an operator set one, else the
    default (the settings file); 0 in either means no limit."""
    quota = default if override is None else override
    return quota or None


def format_bytes(size: int) -> str:
    """``1073741824`` -> ``"1.0 GiB"``; below a KiB, exact."""
    value = float(size)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable: the last unit returns")


def quota_exceeded(quota_bytes: int, used_bytes: int, *, at_least: bool = False) -> QuotaExceeded:
    quota, used = format_bytes(quota_bytes), format_bytes(used_bytes)
    if quota == used:  # rounded alike: only the exact counts tell them apart
        quota, used = f"{quota_bytes} bytes", f"{used_bytes} bytes"
    would_use = f"at least {used}" if at_least else used
    return QuotaExceeded(
        f"the file area is over its quota ({QUOTA_KEY}: {quota}; {would_use} would be used)",
        quota_bytes=quota_bytes,
        used_bytes=used_bytes,
        limit=QUOTA_KEY,
    )


def area_use(root: Path) -> int:
    """The bytes of the visible regular files in ``root``; 0 if it is absent."""
    total = 0
    try:
        entries = os.scandir(root)
    except FileNotFoundError:
        return 0
    with entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # deleted while scanning
                continue
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total


def _regular_size(path: Path) -> int:
    try:
        info = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


@contextmanager
def area_lock(root: Path) -> Iterator[None]:
    """Hold the lock of the area at ``root`` for the block (waiting for it).
    Lock files are never removed: one removed while a writer waits on it
    would let the next writer lock a new file, and both would pass."""
    directory = root.parent / LOCK_DIRECTORY
    directory.mkdir(mode=0o700, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(directory / f"{root.name}.lock", flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class AreaQuota:
    """One write's quota: ``quota_bytes`` for the area at ``root``, where the
    write lands as ``replaces`` (a file it overwrites, whose bytes it frees)
    or under a new name (None)."""

    def __init__(self, root: Path, quota_bytes: int, *, replaces: str | None) -> None:
        self.root = root
        self.quota_bytes = quota_bytes
        self._replaces = replaces
        # The room the area had when last measured; measured at the first
        # byte, and again whenever the write outgrows it.
        self._room: int | None = None

    def _use(self) -> int:
        use = area_use(self.root)
        if self._replaces is not None:
            use -= _regular_size(self.root / self._replaces)
        return use

    def check_growth(self, size_bytes: int) -> None:
        """Refuse a write as soon as its ``size_bytes`` so far cannot fit,
        rather than when it ends. A file deleted meanwhile makes room again,
        so the room is measured anew before refusing."""
        if self._room is not None and size_bytes <= self._room:
            return
        self._room = self.quota_bytes - self._use()
        if size_bytes > self._room:
            raise quota_exceeded(
                self.quota_bytes, self.quota_bytes - self._room + size_bytes, at_least=True
            )

    @contextmanager
    def admitting(self, size_bytes: int) -> Iterator[None]:
        """Check that ``size_bytes`` fit and hold the area's lock for the
        block, which moves the file into place: no other write can land
        between the check and the move."""
        with area_lock(self.root):
            used = self._use() + size_bytes
            if used > self.quota_bytes:
                raise quota_exceeded(self.quota_bytes, used)
            yield

"""The two disk operations that make a write atomic and durable: moving a
complete file under a name only if that name is free, and making the move
survive a crash."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Make a rename durable. Some filesystems cannot fsync a directory; the
    rename has still happened there, only its durability is up to the OS."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def link_without_clobber(source: Path, target: Path) -> bool:
    """Give ``source`` the name ``target`` unless that name exists; False if it
    does. A hard link is the portable atomic "create if absent" for a complete
    file: two writers racing for one name cannot both win."""
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # No hard links on this filesystem (FAT, some FUSE mounts): fall back to
        # check-then-rename, which is atomic per file but can lose a race.
        if os.path.lexists(target):
            return False
        os.replace(source, target)
    return True

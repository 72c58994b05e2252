"""The per-user file area: ``<base_file_path>/<user_id>/<name>``.

This is the only module that turns a user-supplied file name into a filesystem
path. Every access goes through :meth:`UserFiles.path_for`, which accepts only
plain names (``taskflow.models.check_file_name``: no separators, no leading dot,
no control characters) and refuses symbolic links, so nothing a user names can
reach outside their own directory.

Writes are atomic: data goes to a hidden ``.tmp-*`` file in the same directory
and is moved under its real name only once complete and flushed to disk, so a
crash never leaves a half-written file under a real name. Hidden names never
show in :meth:`UserFiles.list` and cannot be asked for by name.

An area may have a quota (``user_files_max_bytes``): a write that would take
the area past it is refused with ``QuotaExceeded`` when it lands, and one
whose bytes so far already cannot fit, as soon as they arrive; nothing of a
refused write is left (:mod:`taskflow.files.quota`).

All methods are synchronous and do blocking disk I/O, each call short (one
chunk, one directory, one fsync), so async callers run them in a thread a
call at a time. Writers that crashed leave ``.tmp-*`` files behind;
:mod:`taskflow.files.sweep` removes them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from taskflow.errors import Conflict, FileNotFound, PayloadTooLarge, ValidationFailed
from taskflow.files.disk import fsync_directory, link_without_clobber
from taskflow.files.quota import AreaQuota, area_use
from taskflow.models import check_file_name

ConflictPolicy = Literal["replace", "error", "rename"]
"""What a write does when its name is taken: overwrite it, raise ``Conflict``,
or pick the next free ``stem-2.ext``, ``stem-3.ext``, ... name."""

TEMPORARY_PREFIX = ".tmp-"
CHUNK_BYTES = 1024 * 1024
# Linux (ext4, xfs, tmpfs) caps a single path component at 255 bytes.
MAX_NAME_BYTES = 255
_MAX_NUMBERED_NAMES = 10_000
_SUFFIX_PATTERN = re.compile(r"^\.[A-Za-z0-9]{1,16}$")


@dataclass(frozen=True)
class FileInfo:
    name: str
    size: int
    # Files are written once and moved into place atomically, so their
    # modification time is when they appeared under this name.
    created_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
        }


def safe_stem(text: str, *, default: str = "file", max_chars: int = 100) -> str:
    """Turn arbitrary text (a URL segment, a title) into a harmless file stem.

    Keeps letters, digits, ``_``, ``-`` and ``.``; anything else becomes ``_``.
    Leading dots and underscores go, so the result is never hidden.
    """
    normalised = unicodedata.normalize("NFKC", text)
    cleaned = re.sub(r"[^\w.-]+", "_", normalised, flags=re.UNICODE)
    cleaned = re.sub(r"_{2,}", "_", cleaned).strip("._-")[:max_chars].rstrip("._-")
    return cleaned or default


def split_name(name: str) -> tuple[str, str]:
    """``"photo.png"`` -> ``("photo", ".png")``; a name without a sane suffix
    keeps it all in the stem."""
    dot = name.rfind(".")
    if dot > 0 and _SUFFIX_PATTERN.match(name[dot:]):
        return name[:dot], name[dot:]
    return name, ""


def _validate_name(name: str) -> str:
    # One rule for every way a name arrives: payloads check it at creation with
    # the same function, so a name refused here was already refused there.
    try:
        check_file_name(name)
        name.encode("utf-8")
    except (ValueError, TypeError) as exc:  # UnicodeEncodeError is a ValueError
        raise ValidationFailed(f"invalid file name {name[:40]!r}: {exc}") from None
    return name


def _numbered_names(stem: str, suffix: str) -> Iterator[str]:
    """``stem.suffix``, ``stem-2.suffix``, ``stem-3.suffix``, ... each fitting
    MAX_NAME_BYTES (the stem is shortened, never the suffix or the number).
    Raises ``ValidationFailed`` if the stem makes an invalid name."""
    for number in range(1, _MAX_NUMBERED_NAMES + 1):
        tail = (f"-{number}" if number > 1 else "") + suffix
        room = MAX_NAME_BYTES - len(tail.encode("utf-8"))
        shortened = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip()
        yield _validate_name(shortened + tail)


class AtomicWriter:
    """A file being written under a hidden temporary name.

    ``commit()`` moves it under its real name (applying the conflict policy)
    and returns that name; ``discard()`` removes it. Used as a context manager
    it commits on a clean exit and discards on an exception. A write that
    would take it past ``max_bytes`` raises ``PayloadTooLarge``; one that
    cannot fit the area's quota, ``QuotaExceeded`` (bytes written to ``file``
    directly are only counted at commit).
    """

    def __init__(
        self,
        files: UserFiles,
        name: str,
        on_conflict: ConflictPolicy,
        max_bytes: int | None = None,
    ) -> None:
        self._files = files
        self.name = _validate_name(name)
        self._on_conflict = on_conflict
        self.max_bytes = max_bytes
        self.size = 0
        directory = files.ensure_root()
        replaces = self.name if on_conflict == "replace" else None
        quota = files.quota_bytes
        self._quota = None if quota is None else AreaQuota(directory, quota, replaces=replaces)
        fd, temporary = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, dir=directory)
        self._temporary = Path(temporary)
        self.file: IO[bytes] = os.fdopen(fd, "wb")
        self._done = False

    def write(self, data: bytes) -> int:
        if self.max_bytes is not None and self.size + len(data) > self.max_bytes:
            raise PayloadTooLarge(f"the file is larger than {self.max_bytes} bytes")
        if self._quota is not None and data:
            self._quota.check_growth(self.size + len(data))
        written = self.file.write(data)
        self.size += written
        return written

    def check_room(self) -> None:
        """Measure the room the area has left (a directory scan), refusing at
        once if there is none; the writes that follow check against it and
        scan again only if they outgrow it. Callers that write on an event
        loop call this in a thread first."""
        if self._quota is not None:
            self._quota.check_growth(self.size)

    def commit(self) -> str:
        """Flush to disk and move into place; return the name it got."""
        if self._done:
            raise RuntimeError("this writer is already committed or discarded")
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.size = os.fstat(self.file.fileno()).st_size
            self.file.close()
            with self._quota.admitting(self.size) if self._quota else contextlib.nullcontext():
                self.name = self._place()
            fsync_directory(self._temporary.parent)
        finally:
            self.discard()
        return self.name

    def discard(self) -> None:
        """Drop the temporary file; harmless after commit or a second call."""
        self._done = True
        if not self.file.closed:
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            self._temporary.unlink()

    def _place(self) -> str:
        root = self._temporary.parent
        if self._on_conflict == "replace":
            self._files.path_for(self.name)  # refuses if a symlink was planted there
            os.replace(self._temporary, root / self.name)
            return self.name
        if self._on_conflict == "error":
            if not link_without_clobber(self._temporary, root / self.name):
                raise Conflict(f"a file named {self.name!r} already exists")
            return self.name
        stem, suffix = split_name(self.name)
        for candidate in _numbered_names(stem, suffix):
            if link_without_clobber(self._temporary, root / candidate):
                return candidate
        raise Conflict(f"no free name left for {self.name!r}")

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


class UserFiles:
    """One user's file area, ``base/<user_id>/``, created on first write,
    holding at most ``quota_bytes`` (None: no limit; see
    :func:`taskflow.files.quota.effective_quota`)."""

    def __init__(self, base: Path, user_id: int, *, quota_bytes: int | None = None) -> None:
        if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id < 0:
            raise ValueError(f"user_id must be a non-negative int, got {user_id!r}")
        if quota_bytes is not None and (isinstance(quota_bytes, bool) or quota_bytes < 0):
            raise ValueError(f"quota_bytes must be None or a non-negative int, got {quota_bytes!r}")
        # Made for every attempt: a Path given is kept, not parsed again (~2 µs).
        self.base = base if isinstance(base, Path) else Path(base)
        self.user_id = user_id
        self.quota_bytes = quota_bytes

    def __repr__(self) -> str:
        return (
            f"UserFiles(base={str(self.base)!r}, user_id={self.user_id}, "
            f"quota_bytes={self.quota_bytes})"
        )

    @property
    def root(self) -> Path:
        """The area's directory, with the base's own symlinks resolved."""
        return self.base.resolve() / str(self.user_id)

    def ensure_root(self) -> Path:
        root = self.root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._check_root(root)
        return root

    def _check_root(self, root: Path) -> None:
        # A symlinked user directory could point at another user's area.
        if root.is_symlink() or root.resolve().parent != root.parent:
            raise ValidationFailed("this user's file area is not a plain directory")

    def path_for(self, name: str) -> Path:
        """The path of ``name`` in this area, which may not exist yet.

        Raises ``ValidationFailed`` for anything but a plain file name and for a
        symbolic link (TaskFlow never creates one, so one there was planted).
        """
        _validate_name(name)
        root = self.root
        if root.exists():
            self._check_root(root)
        path = root / name
        if path.is_symlink():
            raise ValidationFailed(f"{name!r} is a symbolic link")
        if path.resolve().parent != root:
            raise ValidationFailed(f"{name!r} is outside the file area")
        return path

    def exists(self, name: str) -> bool:
        return self.path_for(name).is_file()

    def stat(self, name: str) -> FileInfo:
        path = self.path_for(name)
        try:
            info = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise FileNotFound(f"no file named {name!r}") from None
        if not stat.S_ISREG(info.st_mode):
            raise FileNotFound(f"no file named {name!r}")
        return FileInfo(name, info.st_size, datetime.fromtimestamp(info.st_mtime, UTC))

    def list(self) -> list[FileInfo]:
        """Regular files with valid names, sorted by name; hidden ones are skipped."""
        root = self.root
        if not root.is_dir():
            return []
        self._check_root(root)
        found: list[FileInfo] = []
        with os.scandir(root) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    _validate_name(entry.name)
                    info = entry.stat(follow_symlinks=False)
                except (ValidationFailed, FileNotFoundError):
                    continue  # a name we would refuse, or deleted while listing
                found.append(
                    FileInfo(entry.name, info.st_size, datetime.fromtimestamp(info.st_mtime, UTC))
                )
        return sorted(found, key=lambda item: item.name)

    def used_bytes(self) -> int:
        """What the area's files take, counted by scanning it: for writes and
        reports, not for every read."""
        root = self.root
        if root.exists():
            self._check_root(root)
        return area_use(root)

    def open_read(self, name: str) -> IO[bytes]:
        """An open binary file; the caller closes it."""
        path = self.path_for(name)
        # O_NOFOLLOW: a symlink swapped in after path_for's check still fails.
        # O_NONBLOCK: opening a planted FIFO must not hang; no effect on files.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags)
        except (FileNotFoundError, NotADirectoryError):
            raise FileNotFound(f"no file named {name!r}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ValidationFailed(f"{name!r} is a symbolic link") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FileNotFound(f"no file named {name!r}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def read_bytes(self, name: str, *, max_bytes: int | None = None) -> bytes:
        with self.open_read(name) as handle:
            size = os.fstat(handle.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise PayloadTooLarge(f"{name!r} is larger than {max_bytes} bytes")
            return handle.read()

    def delete(self, name: str) -> None:
        """Remove a regular file; anything else there is not the user's file."""
        path = self.path_for(name)
        try:
            if not stat.S_ISREG(path.lstat().st_mode):
                raise FileNotFound(f"no file named {name!r}")
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            raise FileNotFound(f"no file named {name!r}") from None

    def unique_name(self, stem: str, suffix: str = "") -> str:
        """A valid name not in use yet: ``stem.suffix``, else ``stem-2.suffix``, ...
        A stem too long for the filesystem is shortened; an invalid one raises.

        Only a hint under concurrency: write with ``on_conflict="rename"`` so a
        racing writer that took the name first cannot be overwritten.
        """
        if suffix and not _SUFFIX_PATTERN.match(suffix):
            raise ValidationFailed(f"invalid file suffix {suffix!r}")
        try:
            stem.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationFailed(f"invalid file name {stem!r}: not valid Unicode") from None
        root = self.root
        for candidate in _numbered_names(stem, suffix):
            if not os.path.lexists(root / candidate):
                return candidate
        raise Conflict(f"no free name left for {stem + suffix!r}")

    def atomic_writer(self, name: str, *, on_conflict: ConflictPolicy = "replace") -> AtomicWriter:
        """Start writing ``name`` atomically; see :class:`AtomicWriter`."""
        self.path_for(name)
        return AtomicWriter(self, name, on_conflict)

    def write_atomic(
        self,
        name: str,
        data: bytes | Iterable[bytes],
        *,
        on_conflict: ConflictPolicy = "replace",
    ) -> str:
        """Write the whole file at once; return the name it was saved under."""
        with self.atomic_writer(name, on_conflict=on_conflict) as writer:
            if isinstance(data, bytes | bytearray | memoryview):
                writer.write(bytes(data))
            else:
                for chunk in data:
                    writer.write(chunk)
        return writer.name

    def begin_upload(
        self, name: str, *, max_bytes: int, on_conflict: ConflictPolicy = "error"
    ) -> AtomicWriter:
        """Start writing an upload of at most ``max_bytes``. ``Conflict`` at
        once when the name exists and ``on_conflict="error"``, before any of
        the body is read (and again, atomically, at commit)."""
        self.path_for(name)
        if on_conflict == "error" and os.path.lexists(self.root / name):
            raise Conflict(f"a file named {name!r} already exists")
        return AtomicWriter(self, name, on_conflict, max_bytes)

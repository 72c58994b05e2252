"""The per-user file area on a real filesystem: names, containment, atomicity."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from taskflow.errors import Conflict, FileNotFound, PayloadTooLarge, ValidationFailed
from taskflow.files import TEMPORARY_PREFIX, ConflictPolicy, UserFiles, safe_stem, split_name
from taskflow.files.sweep import TemporaryFileSweep

HOSTILE_NAMES = [
    "../x",
    "../../etc/passwd",
    "/etc/passwd",
    "a/b",
    "a\\b",
    ".hidden",
    ".",
    "..",
    "",
    "x\x00y",
    "line\nbreak",
    " padded ",
    "x" * 256,
    "é" * 128,  # 128 characters but 256 bytes in UTF-8
    "\udc80surrogate",
]


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "files"


@pytest.fixture
def files(base: Path) -> UserFiles:
    return UserFiles(base, 7)


def temporaries(directory: Path) -> list[str]:
    if not directory.exists():
        return []
    return [name for name in os.listdir(directory) if name.startswith(TEMPORARY_PREFIX)]


def test_write_then_read_list_and_delete(files: UserFiles, base: Path) -> None:
    assert files.list() == []
    assert files.write_atomic("report.pdf", b"%PDF-1.4") == "report.pdf"
    assert files.write_atomic("фото.txt", [b"chunk one,", b" chunk two"]) == "фото.txt"

    assert (base / "7" / "report.pdf").read_bytes() == b"%PDF-1.4"
    assert files.exists("report.pdf")
    assert files.read_bytes("фото.txt") == b"chunk one, chunk two"
    with files.open_read("report.pdf") as handle:
        assert handle.read() == b"%PDF-1.4"
    listed = files.list()
    assert [(info.name, info.size) for info in listed] == [("report.pdf", 8), ("фото.txt", 20)]
    assert listed[0].created_at.tzinfo is not None
    assert listed[0].as_json()["created_at"].endswith("Z")

    files.delete("report.pdf")
    assert not files.exists("report.pdf")
    assert not (base / "7" / "report.pdf").exists()
    with pytest.raises(FileNotFound):
        files.delete("report.pdf")
    with pytest.raises(FileNotFound):
        files.open_read("report.pdf")
    with pytest.raises(FileNotFound):
        files.stat("report.pdf")


def test_users_do_not_see_each_other(base: Path) -> None:
    alice, bob = UserFiles(base, 1), UserFiles(base, 2)
    alice.write_atomic("secret.txt", b"alice only")
    assert not bob.exists("secret.txt")
    assert bob.list() == []
    with pytest.raises(FileNotFound):
        bob.read_bytes("secret.txt")
    with pytest.raises(ValidationFailed):
        bob.read_bytes("../1/secret.txt")


def test_a_base_given_as_text_is_the_same_area(base: Path) -> None:
    # A Path is kept as given (made for every attempt); text is made one.
    assert UserFiles(base, 7).base is base
    UserFiles(str(base), 7).write_atomic("note.txt", b"from text")
    assert UserFiles(base, 7).read_bytes("note.txt") == b"from text"
    assert (base / "7" / "note.txt").read_bytes() == b"from text"


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_refused_everywhere(files: UserFiles, base: Path, name: str) -> None:
    (base / "7").mkdir(parents=True)
    (base / "outside.txt").write_bytes(b"not yours")
    operations: list[Callable[[], object]] = [
        lambda: files.path_for(name),
        lambda: files.exists(name),
        lambda: files.stat(name),
        lambda: files.open_read(name),
        lambda: files.read_bytes(name),
        lambda: files.delete(name),
        lambda: files.write_atomic(name, b"x"),
        lambda: files.atomic_writer(name),
        lambda: files.begin_upload(name, max_bytes=10),
    ]
    if len(name.encode("utf-8", "surrogatepass")) <= 255:  # longer stems are shortened
        operations.append(lambda: files.unique_name(name, ".png"))
    for operation in operations:
        with pytest.raises(ValidationFailed):
            operation()
    assert os.listdir(base / "7") == []
    assert (base / "outside.txt").read_bytes() == b"not yours"


def test_symlink_pointing_out_of_the_area_is_refused(files: UserFiles, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"top secret")
    root = files.ensure_root()
    (root / "escape.txt").symlink_to(secret)
    (root / "inner.txt").write_bytes(b"mine")
    (root / "alias.txt").symlink_to(root / "inner.txt")

    for name in ("escape.txt", "alias.txt"):
        with pytest.raises(ValidationFailed, match="symbolic link"):
            files.path_for(name)
        with pytest.raises(ValidationFailed):
            files.open_read(name)
        with pytest.raises(ValidationFailed):
            files.delete(name)
        with pytest.raises(ValidationFailed):
            files.write_atomic(name, b"overwritten?")
    assert [info.name for info in files.list()] == ["inner.txt"]
    assert secret.read_bytes() == b"top secret"
    assert files.read_bytes("inner.txt") == b"mine"


def test_symlinked_user_directory_is_refused(base: Path) -> None:
    victim = UserFiles(base, 1)
    victim.write_atomic("diary.txt", b"private")
    (base / "2").symlink_to(base / "1")
    attacker = UserFiles(base, 2)
    with pytest.raises(ValidationFailed):
        attacker.read_bytes("diary.txt")
    with pytest.raises(ValidationFailed):
        attacker.list()
    with pytest.raises(ValidationFailed):
        attacker.write_atomic("planted.txt", b"x")
    assert [info.name for info in victim.list()] == ["diary.txt"]


def test_a_fifo_or_directory_is_not_a_file(files: UserFiles) -> None:
    root = files.ensure_root()
    os.mkfifo(root / "pipe")
    (root / "folder").mkdir()
    started = time.monotonic()
    for name in ("pipe", "folder"):
        with pytest.raises(FileNotFound):
            files.open_read(name)
        with pytest.raises(FileNotFound):
            files.delete(name)
        assert not files.exists(name)
    assert time.monotonic() - started < 2, "opening a FIFO must not block"
    assert files.list() == []


def test_unique_name_counts_up(files: UserFiles) -> None:
    assert files.unique_name("photo.processed", ".png") == "photo.processed.png"
    files.write_atomic("photo.processed.png", b"1")
    assert files.unique_name("photo.processed", ".png") == "photo.processed-2.png"
    files.write_atomic("photo.processed-2.png", b"2")
    assert files.unique_name("photo.processed", ".png") == "photo.processed-3.png"
    assert files.unique_name("noext") == "noext"
    long_name = files.unique_name("a" * 400, ".png")
    assert len(long_name.encode()) <= 255
    assert long_name.endswith(".png")
    with pytest.raises(ValidationFailed):
        files.unique_name("photo", "/../x")


def test_failed_write_leaves_nothing(files: UserFiles) -> None:
    files.write_atomic("keep.txt", b"original")

    class Boom(Exception):
        pass

    def crash_while_writing(name: str) -> None:
        with files.atomic_writer(name) as writer:
            writer.write(b"half of the new")
            raise Boom

    with pytest.raises(Boom):
        crash_while_writing("keep.txt")
    with pytest.raises(Boom):
        crash_while_writing("new.txt")
    assert files.read_bytes("keep.txt") == b"original"
    assert not files.exists("new.txt")
    assert temporaries(files.root) == []


def test_a_file_in_progress_is_hidden_until_committed(files: UserFiles) -> None:
    writer = files.atomic_writer("big.bin")
    writer.write(b"x" * 1000)
    assert files.list() == []
    assert not files.exists("big.bin")
    assert len(temporaries(files.root)) == 1
    assert writer.commit() == "big.bin"
    assert [(info.name, info.size) for info in files.list()] == [("big.bin", 1000)]
    assert temporaries(files.root) == []


def test_conflict_policies(files: UserFiles) -> None:
    files.write_atomic("a.txt", b"first")
    assert files.write_atomic("a.txt", b"second") == "a.txt"
    assert files.read_bytes("a.txt") == b"second"
    with pytest.raises(Conflict):
        files.write_atomic("a.txt", b"third", on_conflict="error")
    assert files.read_bytes("a.txt") == b"second"
    assert files.write_atomic("a.txt", b"fourth", on_conflict="rename") == "a-2.txt"
    assert files.read_bytes("a-2.txt") == b"fourth"
    assert temporaries(files.root) == []


def test_racing_writers_never_overwrite_each_other(files: UserFiles) -> None:
    barrier = threading.Barrier(8)
    names: list[str] = []

    def write(number: int) -> None:
        writer = files.atomic_writer("same.txt", on_conflict="rename")
        writer.write(str(number).encode())
        barrier.wait()
        names.append(writer.commit())

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(names)) == 8
    contents = {files.read_bytes(name) for name in names}
    assert contents == {str(n).encode() for n in range(8)}


def save(
    files: UserFiles,
    name: str,
    chunks: list[bytes],
    *,
    max_bytes: int,
    on_conflict: ConflictPolicy = "error",
) -> str:
    """An upload as the API stores it, a chunk at a time."""
    with files.begin_upload(name, max_bytes=max_bytes, on_conflict=on_conflict) as writer:
        for chunk in chunks:
            writer.write(chunk)
    return writer.name


def test_begin_upload(files: UserFiles) -> None:
    assert save(files, "up.bin", [b"a" * 10, b"b" * 10], max_bytes=20) == "up.bin"
    assert files.read_bytes("up.bin") == b"a" * 10 + b"b" * 10

    # A taken name is refused before a byte of the body is needed.
    with pytest.raises(Conflict):
        files.begin_upload("up.bin", max_bytes=20)
    assert files.read_bytes("up.bin") == b"a" * 10 + b"b" * 10

    assert save(files, "up.bin", [b"new"], max_bytes=20, on_conflict="rename") == "up-2.bin"

    with pytest.raises(PayloadTooLarge):
        save(files, "big.bin", [b"x" * 15, b"x" * 15], max_bytes=20)
    assert not files.exists("big.bin")
    with pytest.raises(PayloadTooLarge):
        save(files, "up.bin", [b"x" * 30], max_bytes=20, on_conflict="replace")
    assert files.read_bytes("up.bin") == b"a" * 10 + b"b" * 10
    assert temporaries(files.root) == []
    assert [info.name for info in files.list()] == ["up-2.bin", "up.bin"]


def test_stale_temporaries_are_cleaned(files: UserFiles, base: Path) -> None:
    writer = files.atomic_writer("crashed.bin")
    writer.write(b"partial")
    writer.file.close()  # as if the process died here
    leftover = files.root / temporaries(files.root)[0]
    old = time.time() - 7200
    os.utime(leftover, (old, old))
    fresh = files.atomic_writer("in-progress.bin")
    assert TemporaryFileSweep(base, older_than_seconds=3600).run().removed == 1
    assert not leftover.exists()
    assert len(temporaries(files.root)) == 1
    fresh.discard()


def plant_stale_temporaries(base: Path, areas: int) -> list[Path]:
    old = time.time() - 7200
    planted = []
    for user_id in range(areas):
        area = base / str(user_id)
        area.mkdir(parents=True)
        (area / "kept.bin").write_bytes(b"a user's file")
        leftover = area / f"{TEMPORARY_PREFIX}crashed"
        leftover.write_bytes(b"partial")
        os.utime(leftover, (old, old))
        planted.append(leftover)
    return planted


def test_a_sweep_works_in_bounded_slices_and_resumes(base: Path) -> None:
    planted = plant_stale_temporaries(base, 30)
    sweep = TemporaryFileSweep(base, older_than_seconds=3600)
    slices = []
    while not (result := sweep.run(max_entries=10)).finished:
        assert result.examined == 10
        slices.append(result)
    slices.append(result)
    # 30 areas of two entries each, plus the 30 areas themselves.
    assert sum(item.examined for item in slices) == 90
    assert sum(item.removed for item in slices) == 30
    assert not any(path.exists() for path in planted)
    assert all((path.parent / "kept.bin").exists() for path in planted)
    # The next run starts a new pass and finds what was left since.
    planted[0].write_bytes(b"partial")
    os.utime(planted[0], (0, 0))
    assert sweep.run().removed == 1


def test_a_sweep_with_no_time_left_still_makes_progress(base: Path) -> None:
    planted = plant_stale_temporaries(base, 5)
    sweep = TemporaryFileSweep(base, older_than_seconds=3600)
    runs = 0
    while not sweep.run(budget_seconds=0).finished:
        runs += 1
        assert runs < 100
    assert runs >= 5
    assert not any(path.exists() for path in planted)


def test_a_sweep_of_a_missing_base_is_finished_at_once(tmp_path: Path) -> None:
    result = TemporaryFileSweep(tmp_path / "nowhere", older_than_seconds=60).run()
    assert (result.removed, result.finished) == (0, True)


def test_name_helpers() -> None:
    assert safe_stem("../../etc/passwd") == "etc_passwd"
    assert safe_stem(".hidden") == "hidden"
    assert safe_stem("a\x00b") == "a_b"
    assert safe_stem("") == "file"
    assert safe_stem("Ünïcode ok") == "Ünïcode_ok"
    assert split_name("photo.png") == ("photo", ".png")
    assert split_name("archive.tar.gz") == ("archive.tar", ".gz")
    assert split_name("noext") == ("noext", "")
    assert split_name("weird.ext with space") == ("weird.ext with space", "")


def test_user_id_must_be_an_int(base: Path) -> None:
    for bad in ("1", -1, True, 1.5):
        with pytest.raises(ValueError, match="user_id"):
            UserFiles(base, bad)  # type: ignore[arg-type]

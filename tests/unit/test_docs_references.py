"""Every path the docs and the code name exists in the repository.

Docs: README.md, ops/README.md and ops/bench/README.md. A markdown link's
target is read as markdown reads it, from the document's own directory; any
other path in the text (prose, `code spans`, code blocks) is read from the
repository root, or else from the document's directory.

Code: the Python package, the dashboard's static files and ops/ (bench, chaos,
tools). A path there is read from the repository root, or else from the
file's directory or one of its parents inside the repository (``store/dispatch.py`` in
``taskflow/store/engine.py`` names ``taskflow/store/dispatch.py``).

A path is a run of name segments joined by "/" that ends in a file extension
or in "/", and does not follow a "/" or ":" (so URLs and API routes such as
``/api/tasks/`` are not paths). ``*`` is a glob that must match something.
Not checked: what git ignores (``.venv/``, ``.state/``, ``test-artifacts/``:
made at run time) and paths that leave the checkout (``../shared/...``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "ops/README.md", "ops/bench/README.md")
CODE_ROOTS = ("taskflow", "ops")
CODE_SUFFIXES = {".py", ".js", ".html", ".css", ".svg"}

# Segments of letters, digits, "_", "-", "." and "*", at least one "/", and an
# extension or a trailing "/"; not glued to a word, a "/" or a ":" before it, nor
# followed by more of a path or by a placeholder ("base/<user_id>/", f"{x}/{y}").
PATH = re.compile(
    r"(?<![\w/:.@$~-])"
    r"((?:\.\.?/)*(?:[\w*-][\w.*-]*/)+(?:[\w*-][\w.*-]*\.[A-Za-z][A-Za-z0-9]{0,4})?)"
    r"(?![\w/<{$-])"
)
LINK = re.compile(r"\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)
# Placeholders that stand for any name: db/migrations/NNNN_*.sql.
PLACEHOLDERS = {"NNNN": "[0-9]" * 4}


def ignored_patterns(root: Path) -> list[str]:
    """The top-level names git ignores (``.gitignore`` lines such as ``.venv/``)."""
    gitignore = root / ".gitignore"
    if not gitignore.is_file():
        return []
    lines = (line.strip() for line in gitignore.read_text(encoding="utf-8").splitlines())
    return [line.strip("/") for line in lines if line and not line.startswith(("#", "!"))]


def paths_in_text(text: str) -> Iterator[str]:
    for match in PATH.finditer(text):
        path = match.group(1)
        named = re.search(r"[A-Za-z0-9]", path) is not None  # not a bare "*/"
        if named and (path.endswith("/") or "." in path.rsplit("/", 1)[-1]):
            yield path


def links_in_markdown(text: str) -> Iterator[str]:
    for match in LINK.finditer(text):
        target = match.group(1).split("#", 1)[0]
        if target and not EXTERNAL.match(target) and not target.startswith("/"):
            yield target


def exists(root: Path, bases: list[Path], path: str) -> bool | None:
    """Whether ``path`` names something under one of ``bases``; None when it
    is not the repository's to hold (ignored by git, or outside the checkout)."""
    root = root.resolve()
    pattern = path.rstrip("/")
    for placeholder, glob in PLACEHOLDERS.items():
        pattern = pattern.replace(placeholder, glob)
    ignored = ignored_patterns(root)
    verdict: bool | None = None
    for base in bases:
        candidate = (base / pattern).resolve()
        try:
            relative = candidate.relative_to(root).as_posix()
        except ValueError:
            if base == root:
                return None  # ../shared/...: outside the checkout
            continue
        first = relative.split("/", 1)[0]
        if any(fnmatch.fnmatch(first, ignore) for ignore in ignored):
            continue
        if any(char in pattern for char in "*["):
            found = any(root.glob(relative))
        else:
            found = candidate.is_dir() if path.endswith("/") else candidate.exists()
        if found:
            return True
        verdict = False
    return verdict


def dangling_in_doc(root: Path, doc: Path) -> list[str]:
    text = doc.read_text(encoding="utf-8")
    missing = [
        f"link {target}"
        for target in links_in_markdown(text)
        if exists(root, [doc.parent], target) is False
    ]
    missing += [
        path for path in paths_in_text(text) if exists(root, [root, doc.parent], path) is False
    ]
    return missing


def dangling_in_code(root: Path, source: Path) -> list[str]:
    bases = [root, *[parent for parent in source.parents if parent.is_relative_to(root)]]
    text = source.read_text(encoding="utf-8")
    return [path for path in paths_in_text(text) if exists(root, bases, path) is False]


def code_files(root: Path) -> list[Path]:
    return sorted(
        path
        for code_root in CODE_ROOTS
        for path in (root / code_root).rglob("*")
        if path.suffix in CODE_SUFFIXES and "__pycache__" not in path.parts
    )


@pytest.mark.parametrize("doc", DOCS)
def test_every_path_a_doc_names_exists(doc: str) -> None:
    missing = dangling_in_doc(REPO_ROOT, REPO_ROOT / doc)
    assert not missing, f"{doc} names paths that are not in the repository: {missing}"


def test_every_path_the_code_names_exists() -> None:
    sources = code_files(REPO_ROOT)
    assert any(source.suffix == ".js" for source in sources)
    missing = {
        source.relative_to(REPO_ROOT).as_posix(): found
        for source in sources
        if (found := dangling_in_code(REPO_ROOT, source))
    }
    assert not missing, f"code names paths that are not in the repository: {missing}"


def test_a_dangling_reference_is_found(tmp_path: Path) -> None:
    """The check itself: on a small repository, what exists passes and what
    does not is reported, whichever way it is named."""
    (tmp_path / ".gitignore").write_text(".state/\n")
    (tmp_path / "ops" / "sql").mkdir(parents=True)
    (tmp_path / "ops" / "sql" / "11_why.sql").write_text("")
    (tmp_path / "ops" / "bench").mkdir()
    (tmp_path / "ops" / "bench" / "README.md").write_text("")
    (tmp_path / "pkg" / "store").mkdir(parents=True)
    (tmp_path / "pkg" / "store" / "dispatch.py").write_text("")
    doc = tmp_path / "ops" / "README.md"
    doc.write_text(
        "See `ops/sql/11_why.sql`, `ops/sql/*.sql`, [bench](bench/README.md), "
        "`.state/pg/`, GET /api/tasks/ and https://example.com/a/b.html.\n"
        "Gone: `ops/sql/99_gone.sql`, [old](../README-dashboard.md), ops/nothing/\n"
    )
    assert dangling_in_doc(tmp_path, doc) == [
        "link ../README-dashboard.md",
        "ops/sql/99_gone.sql",
        "ops/nothing/",
    ]
    source = tmp_path / "pkg" / "store" / "engine.py"
    source.write_text('"""See store/dispatch.py and ops/sql/11_why.sql, not pkg/status.py."""\n')
    assert dangling_in_code(tmp_path, source) == ["pkg/status.py"]

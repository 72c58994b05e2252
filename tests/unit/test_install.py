"""Installs are reproducible: every package the code imports is declared in
pyproject.toml, every declared package (linters included) is pinned in
requirements/constraints.txt, the venv the tests run in holds the pinned
versions, and ops/lib.sh re-installs exactly when what it installs from changes."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
CONSTRAINTS = REPO_ROOT / "requirements" / "constraints.txt"
# Importable names that are this repository's own: the package, the tests, and
# the benchmark harness that ops/bench/peers_adapter.py runs inside.
FIRST_PARTY = {"taskflow", "tests", "ops", "peers"}
# Installed only into pip's isolated build environment, never into the venv.
BUILD_ONLY = {"hatchling", "tomlkit", "trove-classifiers"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return normalize(match.group())


def declared(*extras: str) -> set[str]:
    project = PYPROJECT["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return {requirement_name(requirement) for requirement in requirements}


def pins() -> dict[str, str]:
    found = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line!r}"
            found[normalize(name)] = version
    return found


def imported_distributions(*roots: str) -> dict[str, set[str]]:
    """Distribution name → the files importing it, for every third-party import."""
    distributions = importlib.metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for root in roots:
        for path in sorted((REPO_ROOT / root).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.partition(".")[0]
                    if top in sys.stdlib_module_names or top in FIRST_PARTY | {"__future__"}:
                        continue
                    where = str(path.relative_to(REPO_ROOT))
                    names = distributions.get(top, [f"<{top}: not installed>"])
                    for name in names:
                        found.setdefault(normalize(name), set()).add(where)
    return found


@pytest.mark.parametrize(
    ("roots", "extras"),
    [(("taskflow",), ()), (("tests", "ops"), ("test", "embedded"))],
    ids=["taskflow-runtime", "tests-and-ops"],
)
def test_every_imported_package_is_declared(
    roots: tuple[str, ...], extras: tuple[str, ...]
) -> None:
    allowed = declared(*extras)
    undeclared = {
        name: sorted(files)
        for name, files in imported_distributions(*roots).items()
        if name not in allowed
    }
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_every_declared_package_and_the_build_backend_are_pinned_exactly() -> None:
    pinned = pins()
    wanted = declared("test", "embedded") | {
        requirement_name(requirement) for requirement in PYPROJECT["build-system"]["requires"]
    }
    assert wanted - pinned.keys() == set()
    # The tools whose new releases would change a CI verdict on their own.
    assert {"ruff", "mypy", "import-linter", "pytest", "pip"} <= pinned.keys()


def test_the_venv_holds_the_pinned_versions() -> None:
    drift = {}
    for name, version in pins().items():
        if name in BUILD_ONLY:
            continue
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != version:
            drift[name] = f"{installed} installed, {version} pinned"
    assert not drift, f"re-install with ./ops/test or ./ops/up: {drift}"


# ----- ops/lib.sh: when the venv is re-installed


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of what ops/lib.sh reads, and a venv directory whose python is ours."""
    root = tmp_path / "checkout"
    for relative in ("ops/lib.sh", "pyproject.toml", "requirements/constraints.txt"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / relative, root / relative)
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").symlink_to(sys.executable)
    return root


def install_plan(checkout: Path, extras: str, stamp: str | None) -> str:
    """What ensure_venv would install ("<digest> <extras>"), or "" for nothing."""
    venv = checkout.parent / "venv"
    stamp_path = venv / ".taskflow-install"
    if stamp is None:
        stamp_path.unlink(missing_ok=True)
    else:
        stamp_path.write_text(stamp + "\n")
    result = subprocess.run(
        ["bash", "-c", 'source "$1/ops/lib.sh" && install_plan "$2"', "-", str(checkout), extras],
        capture_output=True,
        text=True,
        env={**os.environ, "TASKFLOW_VENV": str(venv)},
        timeout=30,
        check=True,
    )
    return result.stdout.strip()


def test_a_venv_is_installed_once_and_then_reused(checkout: Path) -> None:
    plan = install_plan(checkout, "embedded", None)
    digest, extras = plan.split()
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    assert extras == "embedded"
    assert install_plan(checkout, "embedded", plan) == ""


def test_a_venv_with_more_extras_serves_ops_up_as_it_is(checkout: Path) -> None:
    # ./ops/test installs test and embedded; ./ops/up afterwards needs only embedded.
    digest = install_plan(checkout, "test,embedded", None).split()[0]
    assert install_plan(checkout, "embedded", f"{digest} embedded,test") == ""
    # The other way round, the missing extra is added and the installed one kept.
    assert install_plan(checkout, "test,embedded", f"{digest} embedded") == (
        f"{digest} embedded,test"
    )


def test_new_pins_or_dependencies_re_install_keeping_the_extras(checkout: Path) -> None:
    digest = install_plan(checkout, "embedded", None).split()[0]
    stamp = f"{digest} embedded,test"
    constraints = checkout / "requirements" / "constraints.txt"
    constraints.write_text(constraints.read_text().replace("ruff==", "ruff==0.0.1+"))
    new_digest = install_plan(checkout, "embedded", stamp).split()[0]
    assert install_plan(checkout, "embedded", stamp) == f"{new_digest} embedded,test"

    pyproject = checkout / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace('"quart>=0.20",', '"quart>=0.21",'))
    newer_digest = install_plan(checkout, "embedded", None).split()[0]
    assert len({digest, new_digest, newer_digest}) == 3


def test_tool_settings_do_not_re_install(checkout: Path) -> None:
    # The lint, test and import-contract sections change often and install nothing.
    digest = install_plan(checkout, "embedded", None).split()[0]
    pyproject = checkout / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace("line-length = 100", "line-length = 99")
        + '\n[[tool.importlinter.contracts]]\nname = "another"\ntype = "layers"\nlayers = []\n'
    )
    assert install_plan(checkout, "embedded", f"{digest} embedded") == ""

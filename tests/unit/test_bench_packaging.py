"""The bench lives in the source checkout (``ops/bench``), not in the product:
the wheel holds no bench code, and ``taskflow bench`` from an installed
package says where the bench is instead of failing on an import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# The keys of hatch's wheel target that the file list below models; any other
# file-selecting key would make the model incomplete, so the test refuses it.
MODELLED_WHEEL_KEYS = {"packages", "force-include"}
FILE_SELECTING_KEYS = {"include", "only-include", "sources", "shared-data", "artifacts"}


def wheel_files() -> list[str]:
    """The paths inside the wheel, as hatch's ``packages`` and ``force-include``
    put them there (building a wheel takes too long for a unit test)."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert not (set(wheel) & FILE_SELECTING_KEYS), set(wheel) & FILE_SELECTING_KEYS
    assert set(wheel) <= MODELLED_WHEEL_KEYS, set(wheel)
    sources: dict[Path, str] = {REPO_ROOT / package: package for package in wheel["packages"]}
    sources.update(
        {REPO_ROOT / source: target for source, target in wheel.get("force-include", {}).items()}
    )
    files: list[str] = []
    for source, target in sources.items():
        if source.is_file():
            files.append(target)
            continue
        for path in source.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                files.append(f"{target}/{path.relative_to(source).as_posix()}")
    return sorted(files)


def test_the_wheel_holds_no_bench() -> None:
    assert not (REPO_ROOT / "taskflow" / "bench").exists()
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    force_include = project["tool"]["hatch"]["build"]["targets"]["wheel"].get("force-include", {})
    assert not [source for source in force_include if "ops/bench".startswith(source.rstrip("/"))]
    files = wheel_files()
    assert "taskflow/cli/__init__.py" in files  # the model does see the package
    assert [name for name in files if "bench" in name.split("/")[1:-1]] == []
    assert [name for name in files if name.rsplit("/", 1)[-1] == "plugin.py"] == []


def test_bench_outside_a_checkout_says_where_the_bench_is(tmp_path: Path) -> None:
    """The package alone, as a wheel installs it: no ``ops/`` beside it."""
    shutil.copytree(
        REPO_ROOT / "taskflow", tmp_path / "taskflow", ignore=shutil.ignore_patterns("__pycache__")
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TASKFLOW_", "AMQP_", "POSTGRES_", "DATABASE_URL", "BENCH_"))
    }
    env.update(
        PYTHONPATH=str(tmp_path),
        TASKFLOW_ENV_FILE="/nonexistent/.env",
        # Nothing listens there: should the bench start after all, it fails at once.
        DATABASE_URL="postgresql://root@127.0.0.1:9/nowhere",
        AMQP_URL="amqp://guest:guest@127.0.0.1:9/%2F",
    )
    result = subprocess.run(
        [sys.executable, "-m", "taskflow", "bench", "--quick"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "source checkout" in lines[0]
    assert "ops/bench/README.md" in lines[0]

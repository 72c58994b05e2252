# Shared by ops/up, ops/test, ops/lock and ops/bench/run: a local virtualenv
# with TaskFlow installed at the versions pinned in requirements/constraints.txt.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TASKFLOW_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
CONSTRAINTS="$ROOT/requirements/constraints.txt"
# Records what the venv was installed from: "<inputs digest> <extras>".
STAMP="$VENV/.taskflow-install"

# Prints the stamp to write after installing, with the extras to install, or
# nothing when the venv is current. The digest covers the constraints and the
# parts of pyproject.toml that shape an install, not the tool sections (lint,
# test and import-contract settings install nothing). A venv that has more
# extras than asked for is current: ./ops/up after ./ops/test installs nothing.
# Extras already installed are kept in a re-install so that they move to the
# new pins too.
install_plan() {
  "$PY" - "$1" "$ROOT/pyproject.toml" "$CONSTRAINTS" "$STAMP" <<'EOF'
import hashlib
import json
import sys
import tomllib
from pathlib import Path

wanted, pyproject_path, constraints_path, stamp_path = sys.argv[1:]
pyproject = tomllib.loads(Path(pyproject_path).read_text())
inputs = [
    pyproject.get("build-system"),
    pyproject.get("project"),
    pyproject.get("tool", {}).get("hatch"),
    Path(constraints_path).read_text(),
]
digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
stamp = Path(stamp_path)
recorded_digest, _, recorded = (stamp.read_text().strip() if stamp.is_file() else "").partition(" ")
wanted_extras = {extra for extra in wanted.split(",") if extra}
recorded_extras = {extra for extra in recorded.split(",") if extra}
if recorded_digest != digest or not wanted_extras <= recorded_extras:
    print(digest, ",".join(sorted(wanted_extras | recorded_extras)))
EOF
}

# pip, quiet, without this machine's warnings about absent local index paths,
# and failing when it fails.
pip_install() {
  "$PY" -m pip install --quiet --disable-pip-version-check "$@" \
    2> >(grep -v "^WARNING: Location" >&2)
}

ensure_venv() {
  local plan extras
  if [ ! -x "$PY" ]; then
    echo "==> creating $VENV"
    python3 -m venv "$VENV"
  fi
  plan="$(install_plan "$1")"
  [ -n "$plan" ] || return 0
  extras="${plan#* }"
  echo "==> installing TaskFlow [$extras] into $VENV (versions: requirements/constraints.txt)"
  # pip first, so the install below runs on the pinned pip (which knows --build-constraint).
  pip_install -c "$CONSTRAINTS" pip
  pip_install -c "$CONSTRAINTS" --build-constraint "$CONSTRAINTS" -e "$ROOT[$extras]"
  "$PY" -c "import taskflow, quart, asyncpg, aio_pika" || { echo "install failed" >&2; exit 1; }
  echo "$plan" > "$STAMP"
}

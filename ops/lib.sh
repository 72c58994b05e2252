# Shared by ops/up and ops/test: a local virtualenv with TaskFlow installed.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TASKFLOW_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

ensure_venv() {
  local extras="$1"
  local stamp="$VENV/.taskflow-installed"
  local want
  want="$extras $(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
  if [ ! -x "$PY" ]; then
    echo "==> creating $VENV"
    python3 -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "==> installing TaskFlow and its dependencies into $VENV"
    "$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    "$PY" -m pip install --quiet --disable-pip-version-check -e "$ROOT[$extras]" 2>&1 \
      | grep -v "^WARNING: Location" || true
    "$PY" -c "import taskflow, quart, asyncpg, aio_pika" || { echo "install failed" >&2; exit 1; }
    echo "$want" > "$stamp"
  fi
}

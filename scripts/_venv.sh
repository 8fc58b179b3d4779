# Sourced by scripts/demo and scripts/test: create .venv and install the project into it.
# Reinstalls only when pyproject.toml changed (a stamp holds its hash), so reruns are fast.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TURNGRAPH_VENV:-$ROOT/.venv}"
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "turngraph needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
    exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating virtualenv $VENV" >&2
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.turngraph-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) extras=$EXTRAS"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "installing turngraph${EXTRAS:+[$EXTRAS]} into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT${EXTRAS:+[$EXTRAS]}" >&2
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"

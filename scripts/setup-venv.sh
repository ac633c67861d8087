#!/usr/bin/env bash
# Creates the project venv (.venv, or $KINFER_VENV) with the Python packages the tests use
# (tests/python/requirements.txt). Idempotent: it reinstalls only when the requirements change.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# Another venv from another requirements file: KINFER_VENV=DIR KINFER_REQUIREMENTS=FILE (the bench's).
venv="${KINFER_VENV:-$root/.venv}"
req="${KINFER_REQUIREMENTS:-$root/tests/python/requirements.txt}"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# pip's own cache (~/.cache/pip) keeps the wheels between runs and between clones.
"$venv/bin/python" -m pip install --quiet -r "$req"
echo "$want" > "$stamp"

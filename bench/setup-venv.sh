#!/usr/bin/env bash
# Creates .venv-bench (or $KINFER_BENCH_VENV) with the anchors' Python packages
# (bench/requirements.txt). Apart from the project's .venv: KServe pulls in a large dependency tree
# that the tests do not need. Idempotent: it reinstalls only when the requirements change.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${KINFER_BENCH_VENV:-$root/.venv-bench}"
req="$root/bench/requirements.txt"
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

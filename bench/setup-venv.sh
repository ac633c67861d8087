#!/usr/bin/env bash
# Creates .venv-bench (or $KINFER_BENCH_VENV) with the anchors' Python packages
# (bench/requirements.txt). Apart from the project's .venv: KServe pulls in a large dependency tree
# that the tests do not need. Idempotent, through scripts/setup-venv.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
KINFER_VENV="${KINFER_BENCH_VENV:-$root/.venv-bench}" KINFER_REQUIREMENTS="$root/bench/requirements.txt" \
  exec "$root/scripts/setup-venv.sh"

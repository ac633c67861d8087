#!/usr/bin/env bash
# Writes the chart's PrometheusRule as a Prometheus rules file (its spec's `groups`), rendered for
# release "kinfer" in "kinfer-system" (what scripts/e2e-setup.sh installs), so the rules' default
# `job`/`namespace` selectors match the local cluster's operator.
#   render_rules.sh OUT [--set key=value]...
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
# shellcheck source=../cluster/lib.sh
source "$REPO/tests/e2e/cluster/lib.sh"
out=$1; shift
PY="${KINFER_VENV:-$REPO/.venv}/bin/python"
[[ -x "$PY" ]] || PY="$(command -v python3)"
tmp="$(mktemp)"; trap 'rm -f "$tmp"' EXIT
"${HELM:-$HELM_BIN/helm}" template kinfer "$REPO/charts/kinfer-operator" -n kinfer-system --kube-version "$K8S_VERSION" \
  --set prometheusRule.enabled=true "$@" --show-only templates/prometheusrule.yaml >"$tmp"
"$PY" - "$tmp" "$out" <<'PYEOF'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
assert doc["kind"] == "PrometheusRule", doc["kind"]
yaml.safe_dump({"groups": doc["spec"]["groups"]}, open(sys.argv[2], "w"), sort_keys=False)
PYEOF

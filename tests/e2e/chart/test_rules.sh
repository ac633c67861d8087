#!/usr/bin/env bash
# The chart's PrometheusRule, evaluated by the real promtool (tests/e2e/cluster/build.sh
# prometheus): the chart is rendered with the rule on (release "kinfer" in "kinfer-system", a
# runbook base URL), its rule groups are written as a Prometheus rules file, `promtool check
# rules` parses every expression and template, and `promtool test rules` runs
# charts/kinfer-operator/tests/rules-test.yaml: every alert fires on synthetic series with its
# labels and annotations, and does not fire where it must not. A renamed metric, a typo in an
# expression or a broken annotation template fails here. No cluster needed.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
# shellcheck source=../cluster/lib.sh
source "$REPO/tests/e2e/cluster/lib.sh"
CHART="$REPO/charts/kinfer-operator"
PROMTOOL="${PROMTOOL:-$PROMETHEUS_BIN/promtool}"
[[ -x "$PROMTOOL" ]] || die "$PROMTOOL is missing: bash tests/e2e/cluster/build.sh prometheus"
PY="${KINFER_VENV:-$REPO/.venv}/bin/python"
[[ -x "$PY" ]] || PY="$(command -v python3)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

"$HERE/render_rules.sh" "$WORK/rules.yaml" --set prometheusRule.runbookBaseUrl=https://runbooks.example/kinfer
cp "$CHART/tests/rules-test.yaml" "$WORK/"
"$PROMTOOL" check rules "$WORK/rules.yaml"
# Every alert of the rule has at least one test (a new alert without one fails here).
alerts=$("$PY" -c 'import sys,yaml; print(" ".join(r["alert"] for g in yaml.safe_load(open(sys.argv[1]))["groups"] for r in g["rules"] if "alert" in r))' "$WORK/rules.yaml")
for a in $alerts; do
  grep -q "alertname: $a\$" "$WORK/rules-test.yaml" || die "alert $a has no test in charts/kinfer-operator/tests/rules-test.yaml"
done
"$PROMTOOL" test rules "$WORK/rules-test.yaml"
echo "rules: $(wc -w <<<"$alerts") alerts checked and tested"

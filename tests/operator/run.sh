#!/usr/bin/env bash
# The operator's integration tier (make test-operator): starts a throwaway etcd + kube-apiserver
# (tests/operator/apiserver.sh), runs the ignored integration tests of crates/operator against
# it, and tears it down whatever happens. Extra arguments go to the test binary (a filter).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
D="$(mktemp -d /tmp/kinfer-operator-test.XXXXXX)"
trap '"$REPO/tests/operator/apiserver.sh" down "$D"' EXIT
"$REPO/tests/operator/apiserver.sh" up "$D"
# shellcheck disable=SC1091
source "$D/env"
cd "$REPO"
# kstatus (cli-utils' status.Compute) for the conditions' checks: built by cluster-build.
KINFER_KSTATUS="$(source "$REPO/tests/e2e/cluster/lib.sh" && echo "$GITOPS_BIN")/kstatus"
[[ -x "$KINFER_KSTATUS" ]] || bash "$REPO/tests/e2e/cluster/build.sh" gitops
export KINFER_KSTATUS
cargo test -p kinfer-operator --test apiserver --test apiserver_security -- --ignored --test-threads 2 "$@"

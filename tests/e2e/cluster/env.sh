#!/usr/bin/env bash
# Print shell exports for using the local cluster:  eval "$(tests/e2e/cluster/env.sh)"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
echo "export KUBECONFIG=$KUBECONFIG_PATH"
echo "export PATH=$K8S_BIN:$HELM_BIN:\$PATH"
echo "export KINFER_CONTAINERD_ADDRESS=$CONTAINERD_SOCK"
if [[ -f $S3_CREDS_PATH ]]; then
  grep -E '^[A-Z_0-9]+=' "$S3_CREDS_PATH" | sed 's/^/export /'
fi

#!/usr/bin/env bash
# A throwaway control plane for the operator's integration tier: etcd + kube-apiserver on
# loopback, random ports, a temporary directory, no node. Uses the binaries that
# tests/e2e/cluster/build.sh caches (~/.cache/kinfer/bin); builds nothing.
#
#   tests/operator/apiserver.sh up DIR     start; writes DIR/kubeconfig and DIR/env; applies crds/
#   tests/operator/apiserver.sh down DIR   stop and remove DIR
#
# Authentication: a static token of a `system:masters` user. Admission: the ServiceAccount
# plugin is off (no controller-manager creates the `default` ServiceAccount in the tests'
# namespaces), so tests can create Pods that stand for the Deployment's pods.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=../e2e/cluster/versions.env
source "$REPO/tests/e2e/cluster/versions.env"
BIN_ROOT="${KINFER_BIN_ROOT:-$HOME/.cache/kinfer/bin}"
K8S_BIN="$BIN_ROOT/kubernetes-$K8S_VERSION"
ETCD_BIN="$BIN_ROOT/etcd-$ETCD_VERSION"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

up() {
  local D="$1"
  for b in "$ETCD_BIN/etcd" "$K8S_BIN/kube-apiserver" "$K8S_BIN/kubectl"; do
    [[ -x "$b" ]] || { echo "missing $b: run tests/e2e/cluster/build.sh all (make cluster-build)" >&2; exit 2; }
  done
  mkdir -p "$D"/{pki,etcd,logs}
  local P="$D/pki"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$P/ca.key" -out "$P/ca.crt" -days 2 \
    -subj "/CN=kinfer-operator-test-ca" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout "$P/apiserver.key" -out "$P/apiserver.csr" \
    -subj "/CN=kube-apiserver" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > "$P/ext"
  openssl x509 -req -in "$P/apiserver.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial \
    -out "$P/apiserver.crt" -days 2 -extfile "$P/ext" 2>/dev/null
  openssl genrsa -out "$P/sa.key" 2048 2>/dev/null
  openssl rsa -in "$P/sa.key" -pubout -out "$P/sa.pub" 2>/dev/null
  local token; token="$(openssl rand -hex 16)"
  echo "$token,kinfer-test-admin,kinfer-test-admin,\"system:masters\"" > "$P/tokens.csv"

  local etcd_port peer_port api_port
  etcd_port="$(free_port)"; peer_port="$(free_port)"; api_port="$(free_port)"
  "$ETCD_BIN/etcd" --name t --data-dir "$D/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "t=http://127.0.0.1:$peer_port" --listen-metrics-urls "" \
    --unsafe-no-fsync --log-level warn >"$D/logs/etcd.log" 2>&1 &
  echo $! > "$D/etcd.pid"
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$etcd_port/health" >/dev/null && break; sleep 0.2; done

  "$K8S_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --service-cluster-ip-range 10.97.0.0/16 \
    --tls-cert-file "$P/apiserver.crt" --tls-private-key-file "$P/apiserver.key" \
    --client-ca-file "$P/ca.crt" --token-auth-file "$P/tokens.csv" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$P/sa.pub" --service-account-signing-key-file "$P/sa.key" \
    --authorization-mode RBAC --disable-admission-plugins ServiceAccount \
    --profiling=false --endpoint-reconciler-type none --v 0 >"$D/logs/kube-apiserver.log" 2>&1 &
  echo $! > "$D/apiserver.pid"

  cat > "$D/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: t
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $P/ca.crt
users:
- name: admin
  user:
    token: $token
contexts:
- name: t
  context: {cluster: t, user: admin}
current-context: t
KC
  local ok=""
  for _ in $(seq 300); do
    if curl -sf --cacert "$P/ca.crt" -H "Authorization: Bearer $token" "https://127.0.0.1:$api_port/readyz" >/dev/null; then ok=1; break; fi
    kill -0 "$(cat "$D/apiserver.pid")" 2>/dev/null || break
    sleep 0.2
  done
  [[ -n "$ok" ]] || { echo "kube-apiserver did not become ready; log:" >&2; tail -30 "$D/logs/kube-apiserver.log" >&2; down "$D"; exit 1; }
  KUBECONFIG="$D/kubeconfig" "$K8S_BIN/kubectl" apply -f "$REPO/crds/" >/dev/null
  KUBECONFIG="$D/kubeconfig" "$K8S_BIN/kubectl" wait --for condition=established --timeout 60s \
    crd/inferenceservices.kinfer.dev crd/modelversions.kinfer.dev crd/modeltrustpolicies.kinfer.dev >/dev/null
  printf 'export KUBECONFIG=%q\nexport KINFER_TEST_KUBECTL=%q\n' "$D/kubeconfig" "$K8S_BIN/kubectl" > "$D/env"
  echo "kube-apiserver ready on https://127.0.0.1:$api_port (KUBECONFIG=$D/kubeconfig)"
}

down() {
  local D="$1"
  for p in apiserver etcd; do
    if [[ -f "$D/$p.pid" ]]; then
      local pid; pid="$(cat "$D/$p.pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$D"
}

case "${1:-}" in
  up) up "${2:?usage: $0 up DIR}" ;;
  down) down "${2:?usage: $0 down DIR}" ;;
  *) echo "usage: $0 up|down DIR" >&2; exit 2 ;;
esac

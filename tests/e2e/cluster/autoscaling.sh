#!/usr/bin/env bash
# Autoscaling for the local cluster, when asked: metrics-server (the resource metrics API,
# metrics.k8s.io: `kubectl top`, HorizontalPodAutoscalers on cpu/memory) and KEDA (ScaledObjects,
# and the external metrics API, external.metrics.k8s.io, that the HPAs KEDA makes read), built from
# their Go modules by build.sh (cached under ~/.cache/kinfer/bin/{metrics-server,keda}-<v>/) and
# run as host processes, recorded in $KINFER_CLUSTER_DIR/pids like the cluster's so cluster-down
# stops them too. State (certificates) under $KINFER_CLUSTER_DIR/autoscaling/.
#   autoscaling.sh up     start all three and register both APIs (idempotent)
#   autoscaling.sh down   unregister both APIs and stop the processes (KEDA's CRDs and the keda
#                         namespace stay with the cluster, as Flux's do)
#
# Every process uses the cluster's admin kubeconfig (system:masters). That is fine for this local
# test cluster; a real one gives each its RBAC role and service account.
#
# How the API server reaches them: each aggregated API is an APIService whose Service has no
# selector and one EndpointSlice pointing at $NODE_IP:<port>; the API server dials the Service's
# ClusterIP, which kube-proxy translates to the host process. The serving certificates name the
# Service (<svc>.<ns>.svc), so the APIService verifies them with a caBundle (no insecure TLS).
#
#   metrics-server   https://$NODE_IP:9500  v1beta1.metrics.k8s.io (Service kube-system/metrics-server);
#                    scrapes the kubelet's /metrics/resource at $NODE_IP:10250 every 10 s, verifying
#                    its serving certificate with the cluster CA
#   keda-adapter     https://$NODE_IP:9501  v1beta1.external.metrics.k8s.io (Service keda/keda-metrics-apiserver);
#                    its own /metrics on :9502 (every interface: KEDA has no flag for the address)
#   keda-operator    gRPC metrics service 127.0.0.1:9503 (the adapter asks it for every metric value,
#                    mutual TLS with the certificates in autoscaling/keda-certs: ca.crt, tls.crt,
#                    tls.key, generated here, as KEDA's own cert rotation would put in its Secret);
#                    metrics 127.0.0.1:9504, health 127.0.0.1:9505
# KEDA's admission webhooks (a third binary, cmd/webhooks) are not run: they only validate
# ScaledObjects on admission (e.g. two ScaledObjects on one Deployment) and nothing here needs that.
# KEDA's scalers run in the operator, on the host: a `prometheus` trigger reaches the local
# Prometheus (monitoring.sh) at http://127.0.0.1:9490.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
D="$KINFER_CLUSTER_DIR"
A="$D/autoscaling"
P="$D/pki"
KEDA_NS=keda
MS_PORT=9500
KEDA_ADAPTER_PORT=9501
KEDA_ADAPTER_METRICS_PORT=9502
KEDA_GRPC_ADDR=127.0.0.1:9503
KEDA_METRICS_ADDR=127.0.0.1:9504
KEDA_HEALTH_ADDR=127.0.0.1:9505
PROCS=(metrics-server keda-operator keda-adapter)

wait_until() { # name seconds what cmd...: until cmd succeeds; fail with name's log otherwise
  local name=$1 t=$2 what=$3; shift 3
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    running "$name" || fail_with_log "$name" "$name exited (log: $D/logs/$name.log)"
    ((SECONDS < end)) || fail_with_log "$name" "$name: no $what after ${t}s (log: $D/logs/$name.log)"
    sleep 1
  done
}

cert() { # dir ca-cert ca-key CN SANs: dir/tls.crt + dir/tls.key signed by the CA, server and client use
  local dir=$1 cacrt=$2 cakey=$3 cn=$4 sans=$5
  OPENSSL_CONF=/dev/null openssl req -newkey rsa:2048 -nodes -keyout "$dir/tls.key" -out "$dir/tls.csr" \
    -subj "/CN=$cn" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=$sans" >"$dir/tls.ext"
  OPENSSL_CONF=/dev/null openssl x509 -req -in "$dir/tls.csr" -CA "$cacrt" -CAkey "$cakey" -CAcreateserial \
    -out "$dir/tls.crt" -days 3650 -extfile "$dir/tls.ext" 2>/dev/null
  rm -f "$dir/tls.csr" "$dir/tls.ext"
  chmod 600 "$dir/tls.key"
}

certs() {
  # metrics-server: signed by the cluster CA (its caBundle is pki/ca.crt).
  if [[ ! -f "$A/metrics-server/tls.crt" ]]; then
    mkdir -p "$A/metrics-server"
    cert "$A/metrics-server" "$P/ca.crt" "$P/ca.key" metrics-server \
      "DNS:metrics-server.kube-system.svc,DNS:metrics-server.kube-system.svc.cluster.local,IP:$NODE_IP,IP:127.0.0.1"
  fi
  # KEDA: a CA of its own, as KEDA's cert rotation makes, and one certificate that the operator's
  # gRPC server, the adapter's gRPC client (mutual TLS: both read ca.crt, tls.crt, tls.key from the
  # same directory) and the adapter's HTTPS server all use. The adapter dials 127.0.0.1.
  if [[ ! -f "$A/keda-certs/tls.crt" ]]; then
    mkdir -p "$A/keda-certs" "$A/keda-ca"
    OPENSSL_CONF=/dev/null openssl req -x509 -newkey rsa:2048 -nodes -keyout "$A/keda-ca/ca.key" \
      -out "$A/keda-certs/ca.crt" -days 3650 -subj "/O=KEDAORG/CN=KEDA" 2>/dev/null
    chmod 600 "$A/keda-ca/ca.key"
    cert "$A/keda-certs" "$A/keda-certs/ca.crt" "$A/keda-ca/ca.key" keda \
      "DNS:keda-metrics-apiserver.$KEDA_NS.svc,DNS:keda-metrics-apiserver.$KEDA_NS.svc.cluster.local,DNS:keda-operator.$KEDA_NS.svc,DNS:keda-operator.$KEDA_NS.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP"
    rm -f "$A/keda-certs/ca.srl"
  fi
  mkdir -p "$A/keda-custom-ca"   # --ca-dir (extra CAs for scalers' TLS): empty
}

register() { # group ns svc port caFile: APIService v1beta1.<group> -> Service ns/svc -> $NODE_IP:port
  local group=$1 ns=$2 svc=$3 port=$4 ca=$5
  kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata: {name: $svc, namespace: $ns, labels: {app.kubernetes.io/managed-by: kinfer-autoscaling-sh}}
spec:
  ports: [{name: https, port: 443, targetPort: $port, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: $svc-host
  namespace: $ns
  labels:
    kubernetes.io/service-name: $svc
    endpointslice.kubernetes.io/managed-by: kinfer-autoscaling-sh
addressType: IPv4
endpoints: [{addresses: ["$NODE_IP"], conditions: {ready: true}}]
ports: [{name: https, port: $port, protocol: TCP}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.$group, labels: {app.kubernetes.io/managed-by: kinfer-autoscaling-sh}}
spec:
  group: $group
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  service: {name: $svc, namespace: $ns, port: 443}
  caBundle: $(base64 -w0 "$ca")
EOF
}

api_available() { # apiservice
  [[ $(kc get apiservice "$1" -o jsonpath='{.status.conditions[?(@.type=="Available")].status}' 2>/dev/null) == True ]]
}
node_metrics() { kc get --raw /apis/metrics.k8s.io/v1beta1/nodes | grep -q '"usage"'; }
external_api() { kc get --raw /apis/external.metrics.k8s.io/v1beta1 | grep -q '"groupVersion"'; }
grpc_mtls() { # the operator's gRPC port accepts the adapter's client certificate and presents one it
  # trusts for 127.0.0.1 (TLS 1.2: there a refused client certificate fails the handshake itself)
  local out
  out=$(openssl s_client -tls1_2 -connect "$KEDA_GRPC_ADDR" -CAfile "$A/keda-certs/ca.crt" \
    -cert "$A/keda-certs/tls.crt" -key "$A/keda-certs/tls.key" -verify_return_error -verify_ip 127.0.0.1 \
    -alpn h2 </dev/null 2>&1) && grep -q 'Verify return code: 0 (ok)' <<<"$out"
}

up() {
  [[ $EUID == 0 ]] || die "autoscaling.sh needs root (the cluster's files are root's)"
  [[ -f "$KUBECONFIG_PATH" ]] || die "the cluster is not up (make cluster-up)"
  [[ -x "$METRICS_SERVER_BIN/metrics-server" ]] || "$HERE/build.sh" metrics-server
  [[ -x "$KEDA_BIN/keda-operator" && -x "$KEDA_BIN/keda-adapter" ]] || "$HERE/build.sh" keda
  mkdir -p "$A" "$D/pids" "$D/logs"
  certs

  # ---- metrics-server
  start metrics-server "$METRICS_SERVER_BIN/metrics-server" \
    --kubeconfig="$KUBECONFIG_PATH" \
    --authentication-kubeconfig="$KUBECONFIG_PATH" --authorization-kubeconfig="$KUBECONFIG_PATH" \
    --bind-address="$NODE_IP" --secure-port="$MS_PORT" --cert-dir="$A/metrics-server" \
    --tls-cert-file="$A/metrics-server/tls.crt" --tls-private-key-file="$A/metrics-server/tls.key" \
    --kubelet-certificate-authority="$P/ca.crt" --kubelet-preferred-address-types=InternalIP \
    --kubelet-port=10250 --metric-resolution=10s --kubelet-request-timeout=5s --profiling=false --v=1

  # ---- KEDA: CRDs, namespace, operator, adapter
  kc apply --server-side --force-conflicts -f "$KEDA_BIN/crds/" >/dev/null
  kc wait --for=condition=Established --timeout=60s -f "$KEDA_BIN/crds/" >/dev/null
  kc get namespace "$KEDA_NS" >/dev/null 2>&1 || kc create namespace "$KEDA_NS" >/dev/null
  # WATCH_NAMESPACE empty = all namespaces; POD_NAMESPACE and KEDA_CLUSTER_OBJECT_NAMESPACE are what
  # a pod would learn from its service account (ClusterTriggerAuthentication secrets live there).
  local env=(env KUBECONFIG="$KUBECONFIG_PATH" WATCH_NAMESPACE= POD_NAMESPACE="$KEDA_NS"
    KEDA_CLUSTER_OBJECT_NAMESPACE="$KEDA_NS")
  start keda-operator "${env[@]}" "$KEDA_BIN/keda-operator" \
    --leader-elect=false --zap-log-level=info --zap-encoder=console --zap-time-encoding=rfc3339 \
    --cert-dir="$A/keda-certs" --enable-cert-rotation=false --ca-dir="$A/keda-custom-ca" \
    --metrics-service-bind-address="$KEDA_GRPC_ADDR" --metrics-bind-address="$KEDA_METRICS_ADDR" \
    --health-probe-bind-address="$KEDA_HEALTH_ADDR"
  start keda-adapter "${env[@]}" "$KEDA_BIN/keda-adapter" \
    --lister-kubeconfig="$KUBECONFIG_PATH" \
    --authentication-kubeconfig="$KUBECONFIG_PATH" --authorization-kubeconfig="$KUBECONFIG_PATH" \
    --bind-address="$NODE_IP" --secure-port="$KEDA_ADAPTER_PORT" --cert-dir="$A/keda-certs" \
    --tls-cert-file="$A/keda-certs/tls.crt" --tls-private-key-file="$A/keda-certs/tls.key" \
    --metrics-service-address="$KEDA_GRPC_ADDR" --port="$KEDA_ADAPTER_METRICS_PORT" \
    --zap-log-level=info --zap-encoder=console --zap-time-encoding=rfc3339 --profiling=false

  # ---- register the two APIs
  register metrics.k8s.io kube-system metrics-server "$MS_PORT" "$P/ca.crt"
  register external.metrics.k8s.io "$KEDA_NS" keda-metrics-apiserver "$KEDA_ADAPTER_PORT" "$A/keda-certs/ca.crt"

  # ---- wait until each really works
  wait_until metrics-server 90 "v1beta1.metrics.k8s.io Available" api_available v1beta1.metrics.k8s.io
  wait_until metrics-server 90 "node metrics (first scrape)" node_metrics
  wait_until keda-operator 90 "readyz on $KEDA_HEALTH_ADDR" curl -fsS "http://$KEDA_HEALTH_ADDR/readyz"
  wait_until keda-operator 30 "mutual TLS on $KEDA_GRPC_ADDR" grpc_mtls
  wait_until keda-adapter 90 "v1beta1.external.metrics.k8s.io Available" api_available v1beta1.external.metrics.k8s.io
  wait_until keda-adapter 30 "external metrics API discovery" external_api
  log "autoscaling up: metrics-server $METRICS_SERVER_VERSION (metrics.k8s.io), KEDA $KEDA_VERSION (external.metrics.k8s.io) (logs: $D/logs/)"
}

down() {
  # Unregister first: an APIService whose server is gone makes every discovery (kubectl) slow.
  if [[ -f "$KUBECONFIG_PATH" ]] && kc get --raw /readyz >/dev/null 2>&1; then
    kc delete apiservice v1beta1.metrics.k8s.io v1beta1.external.metrics.k8s.io --ignore-not-found >/dev/null
    kc -n kube-system delete service metrics-server --ignore-not-found >/dev/null
    kc -n kube-system delete endpointslice metrics-server-host --ignore-not-found >/dev/null
    if kc get namespace "$KEDA_NS" >/dev/null 2>&1; then
      kc -n "$KEDA_NS" delete service keda-metrics-apiserver --ignore-not-found >/dev/null
      kc -n "$KEDA_NS" delete endpointslice keda-metrics-apiserver-host --ignore-not-found >/dev/null
    fi
  fi
  local p
  for p in "${PROCS[@]}"; do stop_process "$p"; done
  log "autoscaling down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) die "usage: autoscaling.sh up|down" ;;
esac

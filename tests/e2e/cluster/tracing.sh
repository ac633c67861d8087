#!/usr/bin/env bash
# Tracing for the local cluster, when asked: Jaeger v2 (cmd/jaeger, an OpenTelemetry Collector
# distribution with Jaeger's storage and query extensions), built from its Go module by build.sh
# (cached under ~/.cache/kinfer/bin/jaeger-<v>/) and run as a host process, recorded in
# $KINFER_CLUSTER_DIR/pids like the cluster's so cluster-down stops it too. Traces are kept in
# memory only (the last 100000 traces; gone when it stops). Its config file, written here, is
# $KINFER_CLUSTER_DIR/tracing/jaeger.yaml.
#   tracing.sh up     start it (idempotent)
#   tracing.sh down   stop it
#
#   OTLP gRPC   $NODE_IP:4317   (pods export here: OTEL_EXPORTER_OTLP_ENDPOINT=http://10.250.0.1:4317)
#   OTLP HTTP   $NODE_IP:4318   (/v1/traces)
#   query API   http://127.0.0.1:16686  (/api/services, /api/traces?service=NAME, /api/traces/<id>;
#               no web UI: the module carries no UI assets, so / is a placeholder page)
#   query gRPC  127.0.0.1:16685 (api_v2 / api_v3)
# Nothing else listens: the collector's own telemetry metrics and the query service's tracing of
# itself are off, and the sampling, zpages, expvar and health extensions of Jaeger's default
# config are not configured.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
D="$KINFER_CLUSTER_DIR"
T="$D/tracing"
OTLP_GRPC_ADDR="$NODE_IP:4317"
OTLP_HTTP_ADDR="$NODE_IP:4318"
QUERY_HTTP_ADDR=127.0.0.1:16686
QUERY_GRPC_ADDR=127.0.0.1:16685

fail() { fail_with_log jaeger "$1"; }

jaeger_config() {
  cat <<EOF
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    resource:
      service.name: jaeger
    metrics:
      level: none
    logs:
      level: info

extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    enable_tracing: false   # on by default: it would trace its own queries to localhost:4317
    http:
      endpoint: $QUERY_HTTP_ADDR
    grpc:
      endpoint: $QUERY_GRPC_ADDR

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: $OTLP_GRPC_ADDR
      http:
        endpoint: $OTLP_HTTP_ADDR

processors:
  batch:
    timeout: 200ms

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
EOF
}

listening() { # host:port
  local port=${1##*:}
  ss -Hltn "sport = :$port" | grep -qF " $1 "
}

up() {
  [[ -f "$KUBECONFIG_PATH" ]] || die "the cluster is not up (make cluster-up): Jaeger listens on $NODE_IP"
  ip -4 addr show | grep -qF " $NODE_IP/" || die "$NODE_IP is not on this machine (the cluster is not up)"
  [[ -x "$JAEGER_BIN/jaeger" ]] || "$HERE/build.sh" jaeger
  mkdir -p "$T" "$D/pids" "$D/logs"
  jaeger_config >"$T/jaeger.next.yaml"
  if ! cmp -s "$T/jaeger.next.yaml" "$T/jaeger.yaml" 2>/dev/null; then
    stop_process jaeger
    mv "$T/jaeger.next.yaml" "$T/jaeger.yaml"
  else
    rm -f "$T/jaeger.next.yaml"
  fi
  start jaeger "$JAEGER_BIN/jaeger" --config "$T/jaeger.yaml"
  local end=$((SECONDS + 60))
  until curl -fsS -o /dev/null "http://$QUERY_HTTP_ADDR/api/services" 2>/dev/null &&
    listening "$OTLP_GRPC_ADDR" && listening "$OTLP_HTTP_ADDR"; do
    running jaeger || fail "jaeger exited (log: $D/logs/jaeger.log)"
    ((SECONDS < end)) || fail "jaeger not ready after 60s (log: $D/logs/jaeger.log)"
    sleep 0.5
  done
  log "tracing up: Jaeger $JAEGER_VERSION, OTLP grpc $OTLP_GRPC_ADDR http $OTLP_HTTP_ADDR, query http://$QUERY_HTTP_ADDR (log: $D/logs/jaeger.log)"
}

case "${1:-}" in
  up) up ;;
  down) stop_process jaeger; log "tracing down" ;;
  *) die "usage: tracing.sh up|down" ;;
esac

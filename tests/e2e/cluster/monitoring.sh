#!/usr/bin/env bash
# Prometheus and Alertmanager for the local cluster, when asked (the e2e suite does, for its
# alerting checks): both built from their Go modules by build.sh (cached under
# ~/.cache/kinfer/bin/{prometheus,alertmanager}-<v>/) and run as host processes, recorded in
# $KINFER_CLUSTER_DIR/pids like the cluster's so cluster-down stops them too. They listen on
# 127.0.0.1 only.
#
# Prometheus discovers its targets through the cluster's API (Kubernetes service discovery with the
# cluster's kubeconfig) exactly as the chart's monitoring objects would have the Prometheus Operator
# configure it: the operator's metrics Service as the ServiceMonitor does (job = the Service's
# name, kinfer-operator-metrics) and every serving pod's `metrics` and `watcher-metrics` ports as
# the PodMonitor does (job = the pod's app.kubernetes.io/name, kinfer). Its rules are the chart's PrometheusRule
# (tests/e2e/chart/render_rules.sh); its alerts go to the Alertmanager, which routes every alert to
# one webhook.
#   monitoring.sh up WEBHOOK_URL   start both (idempotent; a new URL restarts the Alertmanager)
#   monitoring.sh url              print Prometheus's URL
#   monitoring.sh down             stop both
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
D="$KINFER_CLUSTER_DIR"
M="$D/monitoring"
PROM_ADDR=127.0.0.1:9490
AM_ADDR=127.0.0.1:9493
INTERVAL=5s

wait_ready() { # name url
  local end=$((SECONDS + 60))
  until curl -fsS -o /dev/null "$2" 2>/dev/null; do
    running "$1" || { tail -n 30 "$D/logs/$1.log" >&2; die "$1 exited (log: $D/logs/$1.log)"; }
    ((SECONDS < end)) || { tail -n 30 "$D/logs/$1.log" >&2; die "$1 not ready at $2 after 60s"; }
    sleep 0.5
  done
}

prometheus_config() {
  cat <<EOF
global:
  scrape_interval: $INTERVAL
  scrape_timeout: 4s
  evaluation_interval: $INTERVAL
rule_files: [rules.yaml]
alerting:
  alertmanagers:
    - static_configs: [{targets: ["$AM_ADDR"]}]
scrape_configs:
  # What the chart's ServiceMonitor asks for: the operator's metrics Service, job = its name.
  - job_name: kinfer-operator-metrics
    kubernetes_sd_configs:
      - role: endpointslice
        kubeconfig_file: $KUBECONFIG_PATH
        namespaces: {names: [kinfer-system]}
    relabel_configs:
      - source_labels: [__meta_kubernetes_service_name, __meta_kubernetes_endpointslice_port_name]
        regex: kinfer-operator-metrics;metrics
        action: keep
      - {source_labels: [__meta_kubernetes_namespace], target_label: namespace}
      - {source_labels: [__meta_kubernetes_pod_name], target_label: pod}
  # What the chart's PodMonitor asks for: ports "metrics" (the runtime) and "watcher-metrics" (the
  # model-watcher) of every serving pod, job = the pod's app.kubernetes.io/name, with its
  # kinfer.dev/inferenceservice and kinfer.dev/model labels.
  - job_name: kinfer-serving-pods
    kubernetes_sd_configs:
      - role: pod
        kubeconfig_file: $KUBECONFIG_PATH
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_name, __meta_kubernetes_pod_label_app_kubernetes_io_managed_by, __meta_kubernetes_pod_container_port_name]
        regex: kinfer;kinfer-operator;(metrics|watcher-metrics)
        action: keep
      - {source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_name], target_label: job}
      - {source_labels: [__meta_kubernetes_namespace], target_label: namespace}
      - {source_labels: [__meta_kubernetes_pod_name], target_label: pod}
      - {source_labels: [__meta_kubernetes_pod_label_kinfer_dev_inferenceservice], target_label: kinfer_dev_inferenceservice}
      - {source_labels: [__meta_kubernetes_pod_label_kinfer_dev_model], target_label: kinfer_dev_model}
EOF
}

alertmanager_config() { # webhook
  cat <<EOF
route:
  receiver: webhook
  group_by: [alertname]
  group_wait: 1s
  group_interval: 5s
  repeat_interval: 1h
receivers:
  - name: webhook
    webhook_configs:
      - url: "$1"
        send_resolved: true
EOF
}

up() { # webhook
  local webhook=${1:?usage: monitoring.sh up WEBHOOK_URL}
  [[ -f "$KUBECONFIG_PATH" ]] || die "the cluster is not up (make cluster-up)"
  [[ -x "$PROMETHEUS_BIN/prometheus" ]] || "$HERE/build.sh" prometheus
  [[ -x "$ALERTMANAGER_BIN/alertmanager" ]] || "$HERE/build.sh" alertmanager
  # A fresh start forgets an earlier run's series and notifications (an alert the old Alertmanager
  # already sent would otherwise be deduplicated for repeat_interval, and old series would fire).
  running prometheus || rm -rf "$M/prometheus-data"
  mkdir -p "$M/prometheus-data" "$D/pids" "$D/logs"
  "$REPO/tests/e2e/chart/render_rules.sh" "$M/rules.yaml"
  prometheus_config >"$M/prometheus.yml"
  "$PROMETHEUS_BIN/promtool" check config "$M/prometheus.yml" >/dev/null
  alertmanager_config "$webhook" >"$M/alertmanager.next.yml"
  if ! cmp -s "$M/alertmanager.next.yml" "$M/alertmanager.yml" 2>/dev/null; then
    stop_process alertmanager
    mv "$M/alertmanager.next.yml" "$M/alertmanager.yml"
  fi
  running alertmanager || rm -rf "$M/alertmanager-data"
  mkdir -p "$M/alertmanager-data"
  start alertmanager "$ALERTMANAGER_BIN/alertmanager" --config.file="$M/alertmanager.yml" \
    --storage.path="$M/alertmanager-data" --web.listen-address="$AM_ADDR" --cluster.listen-address=
  start prometheus "$PROMETHEUS_BIN/prometheus" --config.file="$M/prometheus.yml" \
    --storage.tsdb.path="$M/prometheus-data" --storage.tsdb.retention.time=6h \
    --web.listen-address="$PROM_ADDR"
  wait_ready alertmanager "http://$AM_ADDR/-/ready"
  wait_ready prometheus "http://$PROM_ADDR/-/ready"
  log "monitoring up: Prometheus http://$PROM_ADDR, Alertmanager http://$AM_ADDR -> $webhook (logs: $D/logs/)"
}

case "${1:-}" in
  up) up "${2:-}" ;;
  url) echo "http://$PROM_ADDR" ;;
  down) stop_process prometheus; stop_process alertmanager; log "monitoring down" ;;
  *) die "usage: monitoring.sh up WEBHOOK_URL | url | down" ;;
esac

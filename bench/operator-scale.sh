#!/usr/bin/env bash
# Operator scale benchmark (a target in docs/benchmarks.md): 1,000 InferenceServices on a real kube-apiserver.
#
#   bench/operator-scale.sh [N]        (default N=1000; KINFER_BENCH_SAMPLES=100 spec changes;
#                                       KINFER_BENCH_CONCURRENCY: the operator's --concurrency, else its default;
#                                       KINFER_BENCH_OPERATOR: an operator binary to measure instead of a fresh build;
#                                       KINFER_BENCH_LOG: the operator's RUST_LOG, default warn; its log goes to
#                                       bench-results/operator-scale.log)
#
# Starts a throwaway etcd + kube-apiserver (tests/operator/apiserver.sh), creates one verified
# ModelVersion and N InferenceServices (3 replicas each), then starts kinfer-operator (release
# build) and measures:
#   cold_start_s   operator start → every InferenceService has status.observedGeneration = 1
#                  (all owned objects applied and status written); cold_reconciles and
#                  cold_mv_reconciles: InferenceService and ModelVersion reconciles finished by then
#   change_p50/p99 spec change (a PATCH of spec.replicas) → status.observedGeneration catches up,
#                  over KINFER_BENCH_SAMPLES changes, one at a time, polled every 2 ms
#   rss_mb         operator VmRSS after the changes; rss_peak_mb its VmHWM
#   restart_s      the operator stopped, every InferenceService's spec changed meanwhile, a new
#                  operator started → every one has caught up (observedGeneration); a relist of
#                  N services that each need work; restart_reconciles: reconciles by then
# Completion is polled with one list of the InferenceServices a second (a faster poll loads the
# API server the operator is measured against).
# and appends one JSON line to bench-results/operator-scale.jsonl. No node: pods are never
# created, so this measures the control plane only.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${1:-1000}"
SAMPLES="${KINFER_BENCH_SAMPLES:-100}"
CONCURRENCY="${KINFER_BENCH_CONCURRENCY:-}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kinfer/target}"
if [[ -n "${KINFER_BENCH_OPERATOR:-}" ]]; then
  BIN="$KINFER_BENCH_OPERATOR"   # another build, e.g. the one before a change
else
  cargo build --release -p kinfer-operator --bin kinfer-operator >&2
  BIN="$CARGO_TARGET_DIR/release/kinfer-operator"
fi
D="$(mktemp -d /tmp/kinfer-operator-bench.XXXXXX)"
trap '"$REPO/tests/operator/apiserver.sh" down "$D"' EXIT
"$REPO/tests/operator/apiserver.sh" up "$D" >&2
mkdir -p "$REPO/bench-results"
python3 - "$D" "$BIN" "$N" "$SAMPLES" "$REPO/bench-results/operator-scale.jsonl" "$CONCURRENCY" <<'PY'
import json, os, re, ssl, subprocess, sys, time, urllib.request, socket

d, binary, n, samples, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
concurrency = sys.argv[6]
kc = open(os.path.join(d, "kubeconfig")).read()
server = re.search(r"server: (\S+)", kc).group(1)
token = re.search(r"token: (\S+)", kc).group(1)
ctx = ssl.create_default_context(cafile=os.path.join(d, "pki", "ca.crt"))
NS = "bench"

def call(method, path, body=None, ctype="application/json"):
    req = urllib.request.Request(server + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": ctype})
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        return json.loads(r.read() or b"{}")

call("POST", "/api/v1/namespaces", {"metadata": {"name": NS}})
mv = "/apis/kinfer.dev/v1alpha1/namespaces/%s/modelversions" % NS
call("POST", mv, {"apiVersion": "kinfer.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": "m-v1"},
     "spec": {"model": "m", "version": "v1", "source": {"uri": "s3://models/m/v1/"}}})
c = lambda t: {"type": t, "status": "True", "reason": "Bench", "message": "bench", "observedGeneration": 1,
               "lastTransitionTime": "2026-01-01T00:00:00Z"}
call("PATCH", mv + "/m-v1/status", {"status": {"observedGeneration": 1, "conditions": [c("Verified"), c("Validated")]}},
     "application/merge-patch+json")
isvcs = "/apis/kinfer.dev/v1alpha1/namespaces/%s/inferenceservices" % NS
t0 = time.time()
for i in range(n):
    call("POST", isvcs, {"apiVersion": "kinfer.dev/v1alpha1", "kind": "InferenceService",
         "metadata": {"name": "svc-%04d" % i}, "spec": {"modelVersion": "m-v1", "replicas": 3}})
print("created %d InferenceServices in %.1fs" % (n, time.time() - t0), file=sys.stderr)

def reconciled():
    items = call("GET", isvcs)["items"]
    return sum(1 for x in items if (x.get("status") or {}).get("observedGeneration") == x["metadata"]["generation"])

port = socket.socket(); port.bind(("127.0.0.1", 0)); mport = port.getsockname()[1]; port.close()
log = open(os.path.join(os.path.dirname(out), "operator-scale.log"), "w")
env = dict(os.environ, KUBECONFIG=os.path.join(d, "kubeconfig"), RUST_LOG=os.environ.get("KINFER_BENCH_LOG", "warn"))

def start_operator():
    return subprocess.Popen([binary, "--leader-elect=false", "--metrics-addr", "127.0.0.1:%d" % mport,
                             "--watch-namespace", NS] + (["--concurrency", concurrency] if concurrency else []),
                            stdout=log, stderr=log, env=env)

def stop_operator(op):
    op.terminate()
    try:
        op.wait(10)
    except subprocess.TimeoutExpired:
        op.kill()
        op.wait()

def until_all_reconciled(op, what):
    start = time.time()
    while reconciled() < n:
        if op.poll() is not None:
            sys.exit("operator exited: see " + log.name)
        time.sleep(1.0)
    took = time.time() - start
    print("%s: all %d reconciled in %.2fs" % (what, n, took), file=sys.stderr)
    return took

def metric_sum(name, having=""):
    """The sum of the operator's series `name` whose labels contain `having`."""
    scrape = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in scrape.splitlines() if l.startswith(name + "{") and having in l)

def reconciles():
    return (metric_sum("kinfer_reconcile_total", 'kind="InferenceService"'),
            metric_sum("kinfer_reconcile_total", 'kind="ModelVersion"'))

op = start_operator()
try:
    cold = until_all_reconciled(op, "cold start")
    cold_reconciles, cold_mv_reconciles = reconciles()
    lat = []
    for k in range(samples):
        name = "svc-%04d" % ((k * 7919) % n)
        obj = call("GET", isvcs + "/" + name)
        replicas = 2 if obj["spec"].get("replicas", 3) != 2 else 3
        t = time.time()
        res = call("PATCH", isvcs + "/" + name, {"spec": {"replicas": replicas}}, "application/merge-patch+json")
        gen = res["metadata"]["generation"]
        while True:
            st = call("GET", isvcs + "/" + name).get("status") or {}
            if st.get("observedGeneration") == gen:
                break
            if time.time() - t > 30:
                sys.exit("spec change not reconciled within 30s")
            time.sleep(0.002)
        lat.append(time.time() - t)
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(round(p * (len(lat) - 1))))]
    status = open("/proc/%d/status" % op.pid).read()
    kb = lambda key: int(re.search(key + r":\s+(\d+) kB", status).group(1))
    errors = metric_sum("kinfer_reconcile_errors_total")
    # A restart: every service changes while no operator runs; the new one relists them all.
    stop_operator(op)
    for i in range(n):
        name = "svc-%04d" % i
        call("PATCH", isvcs + "/" + name, {"spec": {"replicas": 1}}, "application/merge-patch+json")
    op = start_operator()
    restart = until_all_reconciled(op, "restart")
    restart_reconciles, _ = reconciles()
    row = {"bench": "operator-scale", "inference_services": n, "cold_start_s": round(cold, 2),
           "cold_reconciles": cold_reconciles, "cold_mv_reconciles": cold_mv_reconciles,
           "change_samples": samples, "change_p50_ms": round(q(0.5) * 1e3, 1), "change_p99_ms": round(q(0.99) * 1e3, 1),
           "change_max_ms": round(lat[-1] * 1e3, 1),
           "rss_mb": round(kb("VmRSS") / 1024, 1), "rss_peak_mb": round(kb("VmHWM") / 1024, 1),
           "restart_s": round(restart, 2), "restart_reconciles": restart_reconciles,
           "reconcile_errors": errors, "concurrency": int(concurrency or 8), "cpus": os.cpu_count(), "binary": binary,
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps(row))
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
finally:
    stop_operator(op)
PY

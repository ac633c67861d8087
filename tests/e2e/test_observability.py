"""Observability with the real stack on the local cluster (tests/e2e/cluster): Prometheus scraping
the serving pods' runtime and model-watcher metrics, Jaeger receiving OTLP spans from the runtime,
the watcher and the operator, KEDA scaling a service on its p99 read from that Prometheus, and
metrics-server feeding a CPU HorizontalPodAutoscaler. The chart is installed as
scripts/e2e-setup.sh does with the values of kinfer_e2e.CHART_VALUES (KEDA's Prometheus, the
collector). The steps build on each other in one namespace, in file order."""
import json
import os
import random
import string
import subprocess
import time
import urllib.request

import numpy as np
import pytest

import kinfer_e2e as k
import jaeger as tracing  # tests/runtime/jaeger.py

ROOT = k.ROOT
NS = "kinfer-obs-" + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
CLUSTER_SCRIPTS = ROOT / "tests" / "e2e" / "cluster"
JAEGER = "http://127.0.0.1:16686"  # tests/e2e/cluster/tracing.sh
P99_TARGET_MS = 5
TIMINGS = {}


def script(name, *args, timeout=1800):
    subprocess.run(["bash", str(CLUSTER_SCRIPTS / name), *args], check=True, env=k.env(), timeout=timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The chart (with KEDA's Prometheus and the collector set), Prometheus + Alertmanager,
    metrics-server + KEDA, and Jaeger; a namespace with signed versions v1 and v2."""
    subprocess.run(["bash", str(ROOT / "scripts" / "e2e-setup.sh"), *k.CHART_VALUES], check=True, env=k.env(),
                   timeout=1800)
    receiver = k.WebhookReceiver()
    script("monitoring.sh", "up", receiver.url + "/alertmanager", timeout=1200)
    script("autoscaling.sh", "up")
    script("tracing.sh", "up")
    work = tmp_path_factory.mktemp("obs")
    priv, pub = k.make_keys(work)
    k.kubectl("create", "namespace", NS)
    uris = {v: k.upload(k.make_artifact(work, v, priv), f"e2e/{NS}/{v}") for v in ("v1", "v2")}
    k.apply(k.base_objects(NS, pub) + [k.model_version(NS, v, u) for v, u in uris.items()])
    yield work
    print("\nobservability timings:", json.dumps(TIMINGS, indent=1))
    receiver.close()
    if os.environ.get("KINFER_KEEP_E2E") != "1":
        k.kubectl("delete", "namespace", NS, "--wait=false", check=False)
        for name in ("autoscaling.sh", "tracing.sh", "monitoring.sh"):
            subprocess.run(["bash", str(CLUSTER_SCRIPTS / name), "down"], check=False, env=k.env(), timeout=120)


def scaler_service(version, **extra):
    """The service KEDA scales on p99: one pod at rest, up to three; traced (the operator's
    default collector); no analysis window, so a promotion is kept as soon as it serves."""
    return k.inference_service(
        NS, version, replicas=1,
        analysis={"window": "0s", "minRequests": 0},
        autoscaling={"minReplicas": 1, "maxReplicas": 3, "metric": "p99", "target": P99_TARGET_MS,
                     "scaleDownStabilization": "30s"},
        tracing={"sampleRatio": 1.0},
        **extra)


def ready_replicas(name="fraud"):
    return [p for p in k.pods(NS, name) if not p["metadata"].get("deletionTimestamp")
            and (k.condition(p, "Ready") or {}).get("status") == "True"]


def jaeger(path, **params):
    return tracing.query(JAEGER, path, **params)


def http_infer(ip, header):
    body = json.dumps({"id": "traced-1", "inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32",
                                                     "data": np.random.default_rng(1).normal(size=8).tolist()}]})
    req = urllib.request.Request(f"http://{ip}:8080/v2/models/fraud/infer", data=body.encode(), method="POST",
                                 headers={"content-type": "application/json", "traceparent": header})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def grpc_infer(ip, header):
    import tritonclient.grpc as tc

    c = tc.InferenceServerClient(f"{ip}:8081")
    inp = tc.InferInput("x", [1, 8], "FP32")
    inp.set_data_from_numpy(np.ones((1, 8), np.float32))
    return c.infer("fraud", [inp], headers={"traceparent": header}).get_response().model_version


def test_1_a_traced_request_continues_the_clients_trace_into_the_runtime_and_the_shadow(stack):
    k.apply([scaler_service("v1")])
    k.wait_for("fraud-v1 serving", lambda: [p for p in ready_replicas()
                                           if p["metadata"]["annotations"].get("kinfer.dev/serving-version") == "fraud-v1"],
               timeout=300)
    ip = k.service_ip(NS)
    digest = k.kget("modelversion", "fraud-v1", NS)["status"]["digest"]
    # HTTP and gRPC requests that carry a client's traceparent.
    sent = {}
    for proto, call in (("http", http_infer), ("grpc", grpc_infer)):
        trace_id, span_id, header = tracing.traceparent()
        call(ip, header)
        sent[proto] = (trace_id, span_id)
    for proto, (trace_id, span_id) in sent.items():
        trace = k.wait_for(f"the {proto} request's trace in Jaeger", lambda t=trace_id: jaeger(f"/api/traces/{t}"),
                           timeout=60)[0]
        spans = tracing.spans_of(trace)
        infer = [s for s in spans.values() if s[1] == "infer"]
        assert len(infer) == 1, spans
        service, _, parent, tags = infer[0]
        assert service == "kinfer-runtime"
        # The client's span is the parent: the runtime continued the trace it was handed.
        assert parent == span_id, (parent, span_id)
        assert tags["kinfer.model"] == "fraud" and tags["kinfer.version"] == "fraud-v1", tags
        assert tags["kinfer.digest"] == digest, (tags, digest)
        assert tags["rpc.system"] == proto
        run_id = next(i for i, s in spans.items() if s[1] == "model.run")
        infer_id = next(i for i, s in spans.items() if s[1] == "infer")
        assert spans[run_id][2] == infer_id
        assert int(spans[run_id][3]["compute_us"]) > 0
    # A malformed traceparent is ignored, never refused.
    assert http_infer(ip, "00-not-a-trace-01")["model_version"] == "fraud-v1"

    # Promote v2 with a shadow: requests during the shadow carry their trace into the copy.
    k.apply([scaler_service("v2", rollout={"canary": {"replicas": 1}, "analysis": {"window": "0s", "minRequests": 0},
                                           "shadow": {"sampleRate": 1.0, "duration": "20s", "minAgreement": 0.5},
                                           "autoRollback": True})])

    def shadowing():
        return [p for p in k.pods(NS) if (k.analysis(p) or {}).get("phase") == "Shadowing"]

    k.wait_for("the pod shadowing fraud-v2", shadowing, timeout=240)
    shadowed = []
    for _ in range(20):
        trace_id, span_id, header = tracing.traceparent()
        try:
            http_infer(ip, header)
            shadowed.append(trace_id)
        except OSError:
            pass
        time.sleep(0.2)

    def shadow_child():
        for t in shadowed:
            data = jaeger(f"/api/traces/{t}")
            spans = tracing.spans_of(data[0]) if data else {}
            infer = [i for i, s in spans.items() if s[1] == "infer"]
            copies = [s for s in spans.values() if s[1] == "shadow"]
            if infer and copies and copies[0][2] == infer[0]:
                return copies[0]
        return None

    copy = k.wait_for("a shadow span under a request's span", shadow_child, timeout=90)
    assert copy[0] == "kinfer-runtime" and copy[3]["kinfer.version"] == "fraud-v2", copy
    k.wait_for("fraud-v2 serving", lambda: [p for p in ready_replicas()
                                           if p["metadata"]["annotations"].get("kinfer.dev/serving-version") == "fraud-v2"],
               timeout=300)


def test_2_the_watcher_makes_each_rollout_one_trace_and_the_operator_traces_reconciles(stack):
    def rollout_trace():
        for t in jaeger("/api/traces", service="kinfer-watcher", operation="rollout", limit=50):
            spans = tracing.spans_of(t)
            root = [(i, s) for i, s in spans.items() if s[1] == "rollout" and s[3].get("kinfer.version") == "fraud-v2"]
            if root and root[0][1][3].get("kinfer.verdict"):
                return root[0], spans
        return None

    (root_id, root), spans = k.wait_for("the watcher's trace of the fraud-v2 rollout", rollout_trace, timeout=90)
    assert root[2] is None, "a rollout is the root of its own trace"
    assert root[3]["kinfer.verdict"] == "Passed" and root[3]["kinfer.previous"] == "fraud-v1", root
    assert root[3]["kinfer.digest"] == k.kget("modelversion", "fraud-v2", NS)["status"]["digest"]
    children = [s[1] for s in spans.values() if s[2] == root_id]
    for step in ("fetch", "verify", "stage", "gate", "shadow", "promote", "analysis", "verdict"):
        assert step in children, (step, children)
    # Every span of the trace is the watcher's and hangs under the root.
    assert all(s[0] == "kinfer-watcher" for s in spans.values())

    def reconcile_trace():
        found = jaeger("/api/traces", service="kinfer-operator", operation="reconcile InferenceService",
                       tags=json.dumps({"kinfer.object": "fraud", "k8s.namespace.name": NS}), limit=20)
        for t in found:
            spans = tracing.spans_of(t)
            names = {s[1] for s in spans.values()}
            if {"apply owned objects", "write status"} <= names:
                return spans
        return None

    spans = k.wait_for("an operator reconcile trace of the service", reconcile_trace, timeout=90)
    root = [s for s in spans.values() if s[2] is None]
    assert len(root) == 1 and root[0][1] == "reconcile InferenceService", spans


def test_3_prometheus_scrapes_the_watchers_and_the_runtimes_of_the_service(stack):
    # Counters live per pod and the last scrape may predate the v2 verdict, or the pod that
    # passed v1 may be gone: count each series' highest value over the test's span, and wait
    # until both verdicts (v1, then v2) are in.
    def scraped():
        verdicts = k.prom_query(f'max_over_time(kinfer_watcher_verdicts_total{{namespace="{NS}",verdict="Passed"}}[30m])')
        fetches = k.prom_query(f'kinfer_watcher_step_duration_seconds_count{{namespace="{NS}",step="fetch"}}')
        requests = k.prom_query(f'kinfer_requests_total{{namespace="{NS}",kinfer_dev_inferenceservice="fraud"}}')
        passed = sum(float(v["value"][1]) for v in verdicts)
        # Raised (not returned) so that a timeout shows what Prometheus had.
        assert passed >= 2 and fetches and requests, (verdicts, fetches, requests)
        return verdicts, fetches, requests

    _, fetches, _ = k.wait_for("both verdicts and the runtime's series in Prometheus", scraped, timeout=120)
    assert all(float(f["value"][1]) >= 1 for f in fetches), fetches


def load(ip, seconds, model="fraud", connections=16):
    """Closed-loop HTTP load from kinfer-bench (the project's load tool) through the Service."""
    bench = k.TARGET_DIR / "debug" / "kinfer-bench"
    if not bench.exists():
        subprocess.run(["cargo", "build", "-q", "-p", "kinfer-runtime", "--bin", "kinfer-bench"], check=True, cwd=ROOT)
    return subprocess.Popen([str(bench), "http", "--addr", f"{ip}:8080", "--model", model, "--features", "8",
                             "--connections", str(connections), "--rate", "0", "--warmup", "0",
                             "--seconds", str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_4_keda_scales_on_p99_from_one_to_three_under_load_and_back_when_it_stops(stack):
    so = k.kget("scaledobject", "fraud", NS)
    assert so["spec"]["triggers"][0]["type"] == "prometheus", so["spec"]
    assert so["spec"]["triggers"][0]["metricType"] == "Value"
    assert so["metadata"]["ownerReferences"][0]["kind"] == "InferenceService"
    # KEDA's HPA, not the operator's: only one thing scales the Deployment.
    assert k.kubectl("get", "hpa", "fraud", "-n", NS, check=False, timeout=30).strip() == ""
    hpa = k.wait_for("KEDA's HPA", lambda: k.kget("hpa", "keda-hpa-fraud", NS))
    assert hpa["spec"]["scaleTargetRef"]["name"] == "fraud"
    # At rest (a few requests so far, p99 well under the target) the service has one pod.
    k.wait_for("one pod at rest", lambda: len([p for p in k.pods(NS) if not p["metadata"].get("deletionTimestamp")]) == 1,
               timeout=180, interval=2)
    ip = k.service_ip(NS)
    started = time.time()
    gen = load(ip, seconds=600)
    try:
        k.wait_for("three ready replicas under load", lambda: len(ready_replicas()) == 3, timeout=300, interval=2)
        TIMINGS["p99 scale 1->3 under load (s)"] = round(time.time() - started, 1)
        p99 = k.prom_query(f'histogram_quantile(0.99, sum by (le) (rate(kinfer_request_duration_seconds_bucket'
                           f'{{namespace="{NS}",kinfer_dev_inferenceservice="fraud"}}[1m])))')
        TIMINGS["p99 under load (ms)"] = round(float(p99[0]["value"][1]) * 1e3, 1) if p99 else None
    finally:
        gen.terminate()
        gen.communicate(timeout=30)
    stopped = time.time()
    k.wait_for("back to one replica after the load stopped",
               lambda: len([p for p in k.pods(NS) if not p["metadata"].get("deletionTimestamp")]) == 1,
               timeout=420, interval=2)
    TIMINGS["p99 scale 3->1 after the load stopped (s)"] = round(time.time() - stopped, 1)
    # Every new pod served the version that serves, not the Deployment's first one.
    assert [p["metadata"]["annotations"].get("kinfer.dev/serving-version") for p in ready_replicas()] == ["fraud-v2"]


def test_5_metrics_server_feeds_a_cpu_autoscaler(stack):
    spec = k.inference_service(NS, "v2", replicas=1, analysis={"window": "0s", "minRequests": 0},
                               autoscaling={"minReplicas": 1, "maxReplicas": 2, "metric": "cpu", "target": 50,
                                            "scaleDownStabilization": "30s"})
    spec["metadata"]["name"] = "cpu"
    k.apply([spec])
    k.wait_for("the cpu service ready", lambda: len(ready_replicas("cpu")) == 1, timeout=300)
    hpa = k.kget("hpa", "cpu", NS)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    # metrics-server answers for the pod (what `kubectl top` reads).
    k.wait_for("kubectl top for the pod", lambda: "cpu-" in k.kubectl("top", "pod", "-n", NS, check=False, timeout=30),
               timeout=120, interval=3)
    ip = k.service_ip(NS, "cpu")
    started = time.time()
    gen = load(ip, seconds=600, model="cpu", connections=8)
    try:
        k.wait_for("two ready replicas on CPU", lambda: len(ready_replicas("cpu")) == 2, timeout=300, interval=2)
        TIMINGS["cpu scale 1->2 under load (s)"] = round(time.time() - started, 1)
        current = k.kget("hpa", "cpu", NS)["status"]["currentMetrics"][0]["resource"]["current"]
        TIMINGS["cpu utilisation seen by the HPA (%)"] = current.get("averageUtilization")
    finally:
        gen.terminate()
        gen.communicate(timeout=30)
    stopped = time.time()
    k.wait_for("the cpu service back to one replica",
               lambda: len([p for p in k.pods(NS, "cpu") if not p["metadata"].get("deletionTimestamp")]) == 1,
               timeout=300, interval=2)
    TIMINGS["cpu scale 2->1 after the load stopped (s)"] = round(time.time() - stopped, 1)

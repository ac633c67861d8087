"""OpenTelemetry spans from real processes into a real collector: Jaeger v2 (built from its Go
module by tests/e2e/cluster/build.sh jaeger) on loopback with in-memory storage, read back through
its query API. The runtime continues a client's W3C traceparent over HTTP and gRPC into a span per
request and into the shadow copy; the watcher makes its rollout one trace and counts it in its
/metrics."""
import json
import os
import pathlib
import random
import signal
import subprocess
import time
import urllib.parse

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient

import models
from conftest import BINARY, free_port
from jaeger import Jaeger, named, spans_of, traceparent
from test_watcher import ANALYSIS, Load, artifact, s3, serving, signing_key, watcher_args  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def jaeger(workdir):
    j = Jaeger(workdir)
    yield j
    j.stop()


def http_infer(rt, header=None, rows=1):
    body = {"id": "req-7", "inputs": [{"name": "x", "shape": [rows, 8], "datatype": "FP32",
                                       "data": np.random.default_rng(1).normal(size=rows * 8).tolist()}]}
    headers = {"traceparent": header} if header else {}
    r = requests.post(rt.url(f"/v2/models/{rt.name}/infer"), json=body, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_runtime_continues_a_clients_trace_over_http_and_grpc_and_into_the_shadow(start, workdir, jaeger):
    v1 = models.scorer(workdir / "traced-v1.onnx", seed=0)
    v2 = models.scorer(workdir / "traced-v2.onnx", seed=0, weight_noise=1e-3)
    rt = start(v1, "fraud", "--otlp-endpoint", jaeger.endpoint, version="v1")
    # HTTP: the request's span is a child of the client's span and names the model and version.
    trace_id, span_id, header = traceparent()
    http_infer(rt, header)
    spans = jaeger.trace(trace_id, lambda s: named(s, "infer") and named(s, "model.run"))
    (infer_id, infer), = named(spans, "infer")
    assert infer[0] == "kinfer-runtime" and infer[2] == span_id, infer
    tags = infer[3]
    assert (tags["kinfer.model"], tags["kinfer.version"], tags["rpc.system"]) == ("fraud", "v1", "http"), tags
    assert tags["kinfer.request_id"] == "req-7" and tags["span.kind"] == "server", tags
    (_, run), = named(spans, "model.run")
    assert run[2] == infer_id and int(run[3]["compute_us"]) > 0 and int(run[3]["rows"]) == 1, run
    # gRPC: the same, from the request's metadata.
    trace_id, span_id, header = traceparent()
    c = grpcclient.InferenceServerClient(rt.grpc)
    inp = grpcclient.InferInput("x", [2, 8], "FP32")
    inp.set_data_from_numpy(np.ones((2, 8), np.float32))
    c.infer("fraud", [inp], headers={"traceparent": header})
    spans = jaeger.trace(trace_id, lambda s: named(s, "model.run"))
    (_, infer), = named(spans, "infer")
    assert infer[2] == span_id and infer[3]["rpc.system"] == "grpc", infer

    # A staged version with its digest, shadowing: the copy of a traced request runs under it.
    digest = "sha256:" + "ab" * 32
    code, body = rt.admin("POST", "/admin/stage", {"version": "v2", "path": str(v2), "digest": digest})
    assert code == 200, body
    code, body = rt.admin("POST", "/admin/shadow", {"version": "v2", "sampleRate": 1.0})
    assert code == 200, body
    trace_id, span_id, header = traceparent()
    http_infer(rt, header)
    spans = jaeger.trace(trace_id, lambda s: named(s, "shadow"))
    (infer_id, _), = named(spans, "infer")
    (_, shadow), = named(spans, "shadow")
    assert shadow[2] == infer_id and shadow[3]["kinfer.version"] == "v2" and shadow[3]["kinfer.digest"] == digest
    rt.admin("POST", "/admin/shadow", {"version": "v2", "sampleRate": 0.0})

    # A client that decided not to sample is followed: no span of that trace is recorded.
    unsampled, _, header = traceparent(sampled=False)
    http_infer(rt, header)
    # A malformed header is ignored (a new trace), never refused.
    for bad in ("00-zz-11-01", "x" * 4000, "00-" + "0" * 32 + "-" + "1" * 16 + "-01"):
        assert http_infer(rt, bad)["model_version"] == "v1"
    # The last spans are flushed on SIGTERM.
    last, _, header = traceparent()
    http_infer(rt, header)
    assert rt.stop(signal.SIGTERM) == 0
    jaeger.trace(last, lambda s: named(s, "infer"))
    assert jaeger.get(f"/api/traces/{unsampled}") == []


def test_a_runtime_without_an_endpoint_exports_nothing_and_refuses_a_bad_one(start, workdir, jaeger):
    v1 = models.scorer(workdir / "untraced.onnx", seed=0)
    rt = start(v1, "quiet", version="v1")
    trace_id, _, header = traceparent()
    http_infer(rt, header)
    assert rt.stop(signal.SIGTERM) == 0
    # Longer than the exporter's batch delay (5 s): a span would have arrived by now.
    time.sleep(7)
    assert jaeger.get(f"/api/traces/{trace_id}") == []
    # A bad endpoint or ratio stops the start with a message naming the flag.
    for flags, words in ((["--otlp-endpoint", "https://c:4317"], "--otlp-endpoint \"https://c:4317\": give"),
                         (["--otlp-endpoint", "http://c:4317", "--trace-sample-ratio", "2"],
                          "--trace-sample-ratio 2: give a number between 0 and 1")):
        p = subprocess.run([str(BINARY), "--model", str(v1), "--http-port", "0", "--grpc-port", "0",
                            "--metrics-port", "0", *flags], capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, RUST_BACKTRACE="0"))
        assert p.returncode != 0 and words in p.stderr, (p.returncode, p.stderr[-2000:])


def test_the_watchers_rollout_is_one_trace_and_its_metrics_count_it(start, workdir, s3, signing_key, jaeger):
    priv, pub = signing_key
    rt = start(models.scorer(workdir / "w-v1.onnx", seed=0), "fraud", version="v1")
    d = artifact(workdir, "traced-good", lambda p: models.scorer(p, seed=0, weight_noise=1e-3), sign_key=priv)
    src = s3.upload(d, "fraud/traced-good")
    port = free_port()
    metrics = {}
    with Load(rt):
        time.sleep(1.0)
        args = watcher_args(rt, workdir, s3, src, "traced-good", *ANALYSIS, "--otlp-endpoint", jaeger.endpoint,
                            "--metrics-port", str(port), keys=[pub])
        w = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The watcher's /metrics while it analyses: each step before promotion counted once.
        deadline = time.time() + 60
        while time.time() < deadline and w.poll() is None:
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
            except requests.RequestException:
                time.sleep(0.1)
                continue
            metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line and not line.startswith("#")}
            if metrics.get('kinfer_watcher_step_duration_seconds_count{step="promote"}') == 1:
                break
            time.sleep(0.1)
        out, err = w.communicate(timeout=120)
    for step in ("fetch", "verify", "stage", "gate", "promote"):
        assert metrics.get(f'kinfer_watcher_step_duration_seconds_count{{step="{step}"}}') == 1, (step, metrics, w.returncode, err[-3000:])
    assert metrics['kinfer_watcher_step_duration_seconds_count{step="shadow"}'] == 0
    assert metrics["kinfer_watcher_fetched_bytes_total"] > 1000, metrics
    assert metrics["kinfer_watcher_fetch_failures_total"] == 0
    report = [json.loads(line)["report"] for line in out.splitlines() if line.startswith('{"report"')][-1]
    assert w.returncode == 0 and report["verdict"] == "Passed", err[-3000:]
    assert serving(rt)[0] == "traced-good"

    def rollout():
        for t in jaeger.get("/api/traces", service="kinfer-watcher", operation="rollout", limit=50):
            spans = spans_of(t)
            roots = [(i, s) for i, s in named(spans, "rollout") if s[3].get("kinfer.version") == "traced-good"]
            if roots:
                return roots[0], spans
        return None

    deadline, found = time.time() + 20, None
    while time.time() < deadline and not found:
        found = rollout()
        time.sleep(0.3)
    assert found, "no rollout trace of traced-good"
    (root_id, root), spans = found
    assert root[2] is None and root[3]["kinfer.verdict"] == "Passed" and root[3]["kinfer.previous"] == "v1", root
    assert root[3]["kinfer.digest"] == report["digest"]
    steps = [s[1] for s in sorted((s for s in spans.values() if s[2] == root_id), key=lambda s: s[1])]
    # No shadow was asked for: no shadow step.
    assert sorted(steps) == sorted(["fetch", "verify", "stage", "gate", "promote", "analysis", "verdict"]), steps
    (_, verdict), = named(spans, "verdict")
    assert verdict[3]["kinfer.verdict"] == "Passed"

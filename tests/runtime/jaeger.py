"""A real OpenTelemetry collector for the tests: Jaeger v2 (built from its Go module by
tests/e2e/cluster/build.sh jaeger) on loopback with traces in memory, and its query API read back
as span trees. Used by the runtime tier (tests/runtime/test_tracing.py) and, for the query side
and W3C headers, by the e2e (tests/e2e/test_observability.py)."""
import os
import pathlib
import random
import subprocess
import time
import urllib.parse

import socket

import requests


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jaeger_binary():
    root = pathlib.Path(os.environ.get("KINFER_BIN_ROOT", pathlib.Path.home() / ".cache/kinfer/bin"))
    for d in sorted(root.glob("jaeger-*")):
        if (d / "jaeger").is_file():
            return d / "jaeger"
    raise RuntimeError(f"Jaeger not found under {root}: run `bash tests/e2e/cluster/build.sh jaeger` (make test does)")


class Jaeger:
    """Jaeger v2 on loopback: OTLP/gRPC in, the query API out, traces in memory."""

    def __init__(self, workdir):
        self.otlp, self.query, grpc_query = free_port(), free_port(), free_port()
        config = workdir / f"jaeger-{self.otlp}.yaml"
        config.write_text(f"""
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces: {{receivers: [otlp], processors: [batch], exporters: [jaeger_storage_exporter]}}
  telemetry: {{metrics: {{level: none}}}}
extensions:
  jaeger_storage: {{backends: {{memstore: {{memory: {{max_traces: 10000}}}}}}}}
  jaeger_query:
    storage: {{traces: memstore}}
    enable_tracing: false
    http: {{endpoint: 127.0.0.1:{self.query}}}
    grpc: {{endpoint: 127.0.0.1:{grpc_query}}}
receivers:
  otlp: {{protocols: {{grpc: {{endpoint: 127.0.0.1:{self.otlp}}}}}}}
processors:
  batch: {{timeout: 100ms}}
exporters:
  jaeger_storage_exporter: {{trace_storage: memstore}}
""")
        self.log = open(workdir / f"jaeger-{self.otlp}.log", "w+")
        self.proc = subprocess.Popen([str(jaeger_binary()), "--config", str(config)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            assert self.proc.poll() is None, self.logs()
            try:
                requests.get(f"http://127.0.0.1:{self.query}/api/services", timeout=1).raise_for_status()
                return
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError(f"Jaeger did not start: {self.logs()}")

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.otlp}"

    def logs(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def get(self, path, **params):
        return query(f"http://127.0.0.1:{self.query}", path, **params)

    def trace(self, trace_id, want=lambda spans: True, timeout=20):
        """{spanID: (service, operation, parent spanID, tags)} of a trace once `want` holds."""
        deadline, spans = time.time() + timeout, {}
        while time.time() < deadline:
            data = self.get(f"/api/traces/{trace_id}")
            spans = spans_of(data[0]) if data else {}
            if spans and want(spans):
                return spans
            time.sleep(0.3)
        raise AssertionError(f"trace {trace_id} not as wanted within {timeout}s: {spans}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(20)


def spans_of(trace):
    out = {}
    for s in trace["spans"]:
        parent = next((r["spanID"] for r in s.get("references", []) if r["refType"] == "CHILD_OF"), None)
        tags = {t["key"]: t["value"] for t in s.get("tags", [])}
        out[s["spanID"]] = (trace["processes"][s["processID"]]["serviceName"], s["operationName"], parent, tags)
    return out


def named(spans, operation):
    return [(i, s) for i, s in spans.items() if s[1] == operation]


def query(base, path, **params):
    """A Jaeger query API answer's `data` ([] for a trace it does not have)."""
    q = ("?" + urllib.parse.urlencode(params)) if params else ""
    r = requests.get(f"{base}{path}{q}", timeout=10)
    if r.status_code == 404:
        return []
    r.raise_for_status()
    return r.json()["data"]


def traceparent(sampled=True):
    trace_id, span_id = "%032x" % random.getrandbits(128), "%016x" % random.getrandbits(64)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"

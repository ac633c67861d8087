"""Decision policy (an extra BYTES `decision` output through tritonclient, counted per label and
version, NaN refused), the sampled decision log, and shadow traffic to a staged version."""
import json
import time

import numpy as np
import onnxruntime as ort
import requests
import tritonclient.grpc as tg
import tritonclient.http as th

POLICY = """output: score
thresholds:
  - {min: 0.9, label: block}
  - {min: 0.5, label: review}
default: allow
"""


def labels_for(scores):
    return [b"block" if s >= 0.9 else b"review" if s >= 0.5 else b"allow" for s in scores]


def test_policy_returns_decisions_over_http_and_grpc(start, mlp_v1, workdir):
    pol = workdir / "policy.yaml"
    pol.write_text(POLICY)
    log = workdir / "decisions.jsonl"
    rt = start(mlp_v1, "fraud", "--policy", str(pol), "--decision-log", str(log), version="v7")
    x = np.random.default_rng(11).normal(size=(64, 4)).astype(np.float32) * 3
    score = ort.InferenceSession(str(mlp_v1)).run(None, {"x": x})[1][:, 0]
    want = labels_for(score)
    assert len(set(want)) >= 2, "the test data should reach more than one label"

    hc = th.InferenceServerClient(rt.http)
    i = th.InferInput("x", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    r = hc.infer("fraud", [i], request_id="req-1")
    assert list(r.as_numpy("decision")) == want
    gc = tg.InferenceServerClient(rt.grpc)
    gi = tg.InferInput("x", list(x.shape), "FP32")
    gi.set_data_from_numpy(x)
    r = gc.infer("fraud", [gi], outputs=[tg.InferRequestedOutput("decision")])
    assert [o.name for o in r.get_response().outputs] == ["decision"]
    assert list(r.as_numpy("decision")) == want

    text = requests.get(f"http://127.0.0.1:{rt.metrics_port}/metrics").text
    n_block = sum(1 for w in want if w == b"block")
    assert f'kinfer_decisions_total{{model="fraud",version="v7",label="block"}} {2 * n_block}' in text

    bad = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}
    # JSON has no NaN literal; the binary extension carries one.
    head = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}).encode()
    nan = np.array([[1.0, np.nan, 0.0, 0.0]], np.float32).tobytes()
    resp = requests.post(rt.url("/v2/models/fraud/infer"), data=head + nan, headers={"Inference-Header-Content-Length": str(len(head))})
    assert resp.status_code == 400 and "element 1 is NaN" in resp.json()["error"]
    assert requests.post(rt.url("/v2/models/fraud/infer"), json=bad).status_code == 200

    deadline = time.time() + 5
    while time.time() < deadline and len(log.read_text().splitlines()) < 3:
        time.sleep(0.05)
    lines = [json.loads(l) for l in log.read_text().splitlines()]
    assert len(lines) == 3, lines
    first = lines[0]
    assert first["request_id"] == "req-1" and first["version"] == "v7" and first["model"] == "fraud"
    assert [d.encode() for d in first["decisions"]] == want and len(first["scores"]) == 64


def test_the_decision_log_on_stdout_names_the_version_and_digest_that_decided(start, mlp_v1, mlp_v2, workdir):
    """`--decision-log -` (what `policy.decisionLog.sink: stdout` sets): whole JSON lines in the
    runtime's own output, next to its log lines, each with the request id, the version that
    answered and the digest of the artifact it was staged from; sampled every 1/rate-th."""
    pol = workdir / "policy-stdout.yaml"
    pol.write_text(POLICY)
    rt = start(mlp_v1, "fraud", "--policy", str(pol), "--decision-log", "-", "--decision-log-sample", "0.5",
               "--log-format", "json", version="v1")
    digest = "sha256:" + "ab" * 32
    assert rt.admin("POST", "/admin/stage", {"version": "v2", "path": str(mlp_v2), "digest": digest})[0] == 200
    assert rt.admin("POST", "/admin/serve", {"version": "v2"})[0] == 200
    x = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32) * 3
    for i in range(10):
        r = requests.post(rt.url("/v2/models/fraud/infer"), json={"id": f"q{i}", "inputs": [
            {"name": "x", "shape": [3, 4], "datatype": "FP32", "data": x.ravel().tolist()}]})
        assert r.status_code == 200, r.text
    score = ort.InferenceSession(str(mlp_v2)).run(None, {"x": x})[1][:, 0]

    def output():
        rt.log.flush()
        rt.log.seek(0)
        return rt.log.read()

    def records():
        out = []
        for line in output().splitlines():
            if line.startswith("{"):
                doc = json.loads(line)  # every line whole: none split by a log line
                if doc.get("kind") == "decision":
                    out.append(doc)
        return out
    deadline = time.time() + 5
    while time.time() < deadline and len(records()) < 5:
        time.sleep(0.05)
    got = records()
    assert [g["request_id"] for g in got] == [f"q{i}" for i in range(1, 10, 2)], got
    assert all(g["version"] == "v2" and g["digest"] == digest and g["model"] == "fraud" for g in got), got
    assert [d.encode() for d in got[0]["decisions"]] == labels_for(score)
    assert got[0]["latency_us"] > 0 and len(got[0]["scores"]) == 3
    # The runtime's own JSON log lines are there too.
    assert any('"level"' in line for line in output().splitlines())


def test_policy_on_a_missing_output_refuses_to_start(workdir, mlp_v1):
    import subprocess
    from conftest import BINARY
    pol = workdir / "bad-policy.yaml"
    pol.write_text(POLICY.replace("output: score", "output: nope"))
    out = subprocess.run([str(BINARY), "--model", str(mlp_v1), "--policy", str(pol), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "output 'nope' is not an output of the model" in out.stderr


def test_shadow_mirrors_a_sample_and_reports_agreement(start, mlp_v1, mlp_v2):
    rt = start(mlp_v1, "fraud", version="v1")
    assert rt.admin("POST", "/admin/stage", {"version": "v1b", "path": str(mlp_v1)})[0] == 200
    assert rt.admin("POST", "/admin/stage", {"version": "v2", "path": str(mlp_v2)})[0] == 200
    assert rt.admin("POST", "/admin/shadow", {"version": "v1", "sampleRate": 0.5})[0] == 409
    assert rt.admin("POST", "/admin/shadow", {"version": "v1b", "sampleRate": 1.5})[0] == 400
    code, body = rt.admin("POST", "/admin/shadow", {"version": "v1b", "sampleRate": 0.5})
    assert code == 200, body
    s = requests.Session()
    xs = np.random.default_rng(2).normal(size=(40, 4)).astype(np.float32)
    for row in xs:
        r = s.post(rt.url("/v2/models/fraud/infer"), json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": row.tolist()}]})
        assert r.json()["model_version"] == "v1"
    time.sleep(0.3)
    shadow = rt.admin("GET", "/admin/stats")[1]["shadow"]
    assert shadow["mirrored"] == 20 and shadow["compared"] == 20 and shadow["agreement"] == 1.0, shadow
    # A different model disagrees on some decisions.
    rt.admin("POST", "/admin/shadow", {"version": "v2", "sampleRate": 1.0})
    for row in xs:
        s.post(rt.url("/v2/models/fraud/infer"), json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": row.tolist()}]})
    time.sleep(0.3)
    shadow = rt.admin("GET", "/admin/stats")[1]["shadow"]
    assert shadow["version"] == "v2" and shadow["compared"] == 40 and shadow["agreement"] < 1.0, shadow
    code, body = rt.admin("POST", "/admin/shadow", {"sampleRate": 0})
    assert code == 200 and body["shadow"] is None and body["stopped"]["version"] == "v2"

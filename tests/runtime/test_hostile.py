"""The hostile tier: requests written to crash, starve or contaminate a real kinfer-runtime, each
followed by a good request that must still succeed. Overflowing shapes in every encoding,
oversize gRPC messages, a flood of large bodies against the in-flight budget (peak RSS bounded),
deadlines of any value, mixed-length batching, a failing request inside a batch, malformed golden
sets, unbounded flags, hostile metric labels and non-finite scores."""
import concurrent.futures as cf
import io
import json
import pathlib
import struct
import subprocess
import threading
import time
import zipfile

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as tg
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

import models
from conftest import BINARY, Runtime

MIB = 1 << 20
SEQ_FLAGS = ["--max-batch-size", "8", "--max-queue-delay", "5ms", "--max-request-rows", "64",
             "--max-message-bytes", str(16 * MIB), "--max-inflight-bytes", str(64 * MIB),
             "--body-idle-timeout", "2s"]


def rss_kb(pid, field="VmRSS"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def ref_session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def seq(workdir):
    path = models.seq_model(workdir / "seq.onnx")
    rt = Runtime(path, "seq", workdir, *SEQ_FLAGS, version="v1")
    rt.model_path = path
    yield rt
    rt.stop()


def seq_body(shape, data):
    return {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]}


def assert_serves(rt):
    """A good request right after a hostile one: the server still answers, correctly."""
    x = np.arange(3, dtype=np.float32).reshape(1, 3)
    r = requests.post(rt.url("/v2/models/seq/infer"), json=seq_body([1, 3], x.ravel().tolist()), timeout=30)
    assert r.status_code == 200, r.text
    y = next(o for o in r.json()["outputs"] if o["name"] == "y")
    assert np.array_equal(np.array(y["data"], np.float32), (2 * x + 1).ravel())


OVERFLOWING = [
    ([2147483648, 2147483648], "batch of 2147483648 exceeds the limit of 64 rows"),
    ([1, 9223372036854775807], "than any request can hold"),
    ([1, 2 ** 40], "over the limit of 16777216 bytes (--max-message-bytes)"),
    ([9223372036854775807, 9223372036854775807], "exceeds the limit of 64 rows"),
    ([1, -1], "negative dimension"),
]


@pytest.mark.parametrize("shape,message", OVERFLOWING, ids=[str(s) for s, _ in OVERFLOWING])
def test_overflowing_shapes_get_400_in_json_and_binary(seq, shape, message):
    r = requests.post(seq.url("/v2/models/seq/infer"), json=seq_body(shape, []), timeout=30)
    assert r.status_code == 400, r.text
    assert "input 'x'" in r.json()["error"] and message in r.json()["error"], r.text
    assert_serves(seq)
    head = json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32",
                                   "parameters": {"binary_data_size": 0}}]}).encode()
    r = requests.post(seq.url("/v2/models/seq/infer"), data=head,
                      headers={"Inference-Header-Content-Length": str(len(head))}, timeout=30)
    assert r.status_code == 400 and message in r.json()["error"], r.text
    assert_serves(seq)


@pytest.mark.parametrize("shape,message", OVERFLOWING, ids=[str(s) for s, _ in OVERFLOWING])
def test_overflowing_shapes_get_invalid_argument_over_grpc(seq, shape, message):
    client = tg.InferenceServerClient(seq.grpc)
    stub = client._client_stub
    for typed in (False, True):
        req = service_pb2.ModelInferRequest(model_name="seq")
        t = req.inputs.add()
        t.name, t.datatype = "x", "FP32"
        t.shape.extend(shape)
        if typed:
            t.contents.fp32_contents.extend([])
        else:
            req.raw_input_contents.append(b"")
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(req, timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (typed, e.value.details())
        assert message in e.value.details(), e.value.details()
    assert_serves(seq)


def test_oversize_grpc_message_is_refused_before_it_is_read(seq):
    client = tg.InferenceServerClient(seq.grpc)
    stub = client._client_stub
    before = rss_kb(seq.proc.pid)
    req = service_pb2.ModelInferRequest(model_name="seq")
    t = req.inputs.add()
    t.name, t.datatype = "x", "FP32"
    t.shape.extend([1, 5 * MIB])
    req.raw_input_contents.append(b"\x00" * (20 * MIB))
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req, timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert "exceeds the limit of 16777216 bytes (--max-message-bytes)" in e.value.details()
    # Refused from the 5-byte length prefix: the 20 MiB were never buffered.
    assert rss_kb(seq.proc.pid) - before < 10 * 1024
    assert_serves(seq)


def test_oversize_http_body_is_refused_by_its_content_length(seq):
    r = requests.post(seq.url("/v2/models/seq/infer"), data=b" " * (17 * MIB),
                      headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 400
    assert "exceeds the limit of 16777216 bytes (--max-message-bytes)" in r.json()["error"]
    # Chunked (no Content-Length): refused once the limit is crossed.
    r = requests.post(seq.url("/v2/models/seq/infer"), data=iter([b" " * MIB] * 17), timeout=60)
    assert r.status_code == 400 and "--max-message-bytes" in r.json()["error"], r.text
    # A client that writes its whole body before reading (http.client) still reads the answer:
    # the refused body is drained, not kept, instead of the connection being reset under it.
    import http.client
    for path, body, status in [("/v2/models/seq/infer", b" " * (17 * MIB), 400),
                               ("/v2/models/nope/infer", b" " * (8 * MIB), 404)]:
        conn = http.client.HTTPConnection("127.0.0.1", seq.http_port, timeout=60)
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == status, (path, resp.status)
        assert json.loads(resp.read())["error"]
        conn.close()
    assert_serves(seq)


def test_a_flood_of_large_bodies_is_shed_within_the_budget(seq):
    """16 parallel ~12 MB JSON bodies ([1, 2.3M] FP32) against a 64 MiB in-flight budget: each
    is answered 200 or 503 + Retry-After, and the process's peak RSS stays bounded."""
    n = 2_300_000
    x = np.random.default_rng(0).integers(0, 100, n).astype(np.float32)
    body = json.dumps(seq_body([1, n], x.tolist()), separators=(",", ":")).encode()
    assert 10 * MIB < len(body) < 16 * MIB, len(body)
    want_s = float(ref_session(seq.model_path).run(None, {"x": x.reshape(1, n)})[1][0, 0])
    base = rss_kb(seq.proc.pid)

    def one(_):
        r = requests.post(seq.url("/v2/models/seq/infer"), data=body,
                          headers={"Content-Type": "application/json"}, timeout=120)
        if r.status_code == 200:
            s = next(o for o in r.json()["outputs"] if o["name"] == "s")
            assert np.float32(s["data"][0]) == np.float32(want_s)
        return r.status_code, r.headers.get("Retry-After"), r.text[:200]

    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    codes = [c for c, _, _ in results]
    assert set(codes) <= {200, 503}, results
    assert codes.count(200) >= 1, results
    assert all(ra == "1" and "--max-inflight-bytes" in t for c, ra, t in results if c == 503), results
    peak = rss_kb(seq.proc.pid, "VmHWM")
    # Without the budget and with serde_json::Value this took ~0.9 GB; with it, a 64 MiB budget
    # plus each admitted request's ORT tensors and JSON answer.
    assert peak < base + 400 * 1024, (base, peak, codes)
    assert_serves(seq)


def test_slow_senders_hold_only_what_they_sent(seq):
    """Eight connections declare the largest body (16 MiB each, twice the 64 MiB budget in all)
    and trickle it: they hold only the bytes they sent, so other requests are still served, and
    a body that stalls is refused after --body-idle-timeout."""
    import socket
    socks = []
    for _ in range(8):
        c = socket.create_connection(("127.0.0.1", seq.http_port))
        c.sendall(b"POST /v2/models/seq/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(16 * MIB).encode() + b"\r\n\r\n" + b" " * 1000)
        socks.append(c)
    try:
        time.sleep(0.3)
        assert_serves(seq)
        for c in socks:
            c.settimeout(10)
            head = c.recv(4096).decode(errors="replace")
            assert head.startswith("HTTP/1.1 400"), head[:200]
            assert "the request body stalled" in head or "stalled" in c.recv(4096).decode(errors="replace")
    finally:
        for c in socks:
            c.close()
    assert_serves(seq)


def test_deadlines_of_any_value_are_safe(seq):
    x = [0.5, 1.5]
    for timeout, status in [(18446744073709551615, 200), (2 ** 63, 200), (0, 504)]:
        b = seq_body([1, 2], x)
        b["parameters"] = {"timeout": timeout}
        r = requests.post(seq.url("/v2/models/seq/infer"), json=b, timeout=30)
        assert r.status_code == status, (timeout, r.text)
    for bad in [-1, 1.5, "soon", 18446744073709551616]:
        b = seq_body([1, 2], x)
        b["parameters"] = {"timeout": bad}
        r = requests.post(seq.url("/v2/models/seq/infer"), json=b, timeout=30)
        assert r.status_code == 400 and "parameter 'timeout'" in r.json()["error"], (bad, r.text)
    c = tg.InferenceServerClient(seq.grpc)
    i = tg.InferInput("x", [1, 2], "FP32")
    i.set_data_from_numpy(np.array([x], np.float32))
    # A deadline of ~31 years (grpc-timeout) and Triton's timeout parameter at i64::MAX.
    assert c.infer("seq", [i], client_timeout=1e9).as_numpy("s").shape == (1, 1)
    assert c.infer("seq", [i], timeout=2 ** 63 - 1).as_numpy("s").shape == (1, 1)
    req = service_pb2.ModelInferRequest(model_name="seq")
    t = req.inputs.add()
    t.name, t.datatype = "x", "FP32"
    t.shape.extend([1, 2])
    req.raw_input_contents.append(np.array(x, np.float32).tobytes())
    req.parameters["timeout"].int64_param = -5
    with pytest.raises(grpc.RpcError) as e:
        c._client_stub.ModelInfer(req, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "parameter 'timeout'" in e.value.details()
    assert_serves(seq)


def test_mixed_lengths_are_never_batched_together(seq):
    """The issue's reproduction: 12 concurrent gRPC clients sending [1,4], [1,6] and [1,8] rows
    with batching 8 / 5 ms. Every answer has its own shape and equals its unbatched answer bit
    for bit."""
    ref = ref_session(seq.model_path)
    failures, lock = [], threading.Lock()

    def client(k):
        c = tg.InferenceServerClient(seq.grpc)
        rng = np.random.default_rng(k)
        for j in range(60):
            n = (4, 6, 8)[(k + j) % 3]
            x = rng.normal(size=(1, n)).astype(np.float32)
            i = tg.InferInput("x", [1, n], "FP32")
            i.set_data_from_numpy(x)
            try:
                r = c.infer("seq", [i])
            except InferenceServerException as e:
                with lock:
                    failures.append(str(e))
                continue
            want_y, want_s = ref.run(None, {"x": x})
            got_y, got_s = r.as_numpy("y"), r.as_numpy("s")
            if got_y.shape != (1, n) or got_y.tobytes() != want_y.tobytes() or got_s.tobytes() != want_s.tobytes():
                with lock:
                    failures.append(f"client {k} request {j}: {got_y.shape} differs from its own answer")

    _, before = seq.admin("GET", "/admin/stats")
    threads = [threading.Thread(target=client, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [], failures[:5]
    _, after = seq.admin("GET", "/admin/stats")
    s0, s1 = before["versions"]["v1"]["stats"], after["versions"]["v1"]["stats"]
    rows = s1["mean_batch"] * s1["batches"] - s0["mean_batch"] * s0["batches"]
    assert rows / (s1["batches"] - s0["batches"]) > 1.2, (s0, s1)  # batches did form
    assert after["versions"]["v1"]["batching"] is True


def test_a_failing_request_inside_a_batch_fails_alone(start, workdir):
    path = models.gather_model(workdir / "gather.onnx")
    rt = start(path, "emb", "--max-batch-size", "8", "--max-queue-delay", "5ms", version="v1")
    ref = ref_session(path)
    good_fail, bad_ok, lock = [], [], threading.Lock()

    def client(k):
        c = tg.InferenceServerClient(rt.grpc)
        for j in range(40):
            bad = k == 0 and j % 2 == 0
            ids = np.array([[k % 16, (j * 3) % 16, 99 if bad else 5]], np.int64)
            i = tg.InferInput("ids", [1, 3], "INT64")
            i.set_data_from_numpy(ids)
            try:
                r = c.infer("emb", [i])
                if bad:
                    bad_ok.append(j)
                elif r.as_numpy("emb").tobytes() != ref.run(None, {"ids": ids})[0].tobytes():
                    good_fail.append("wrong answer")
            except InferenceServerException as e:
                if not bad:
                    with lock:
                        good_fail.append(str(e))
                else:
                    assert "indices element out of data bounds" in e.message(), e.message()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert good_fail == [] and bad_ok == [], (good_fail[:3], bad_ok)
    _, stats = rt.admin("GET", "/admin/stats")
    assert stats["versions"]["v1"]["stats"]["mean_batch"] > 1.2, stats


@pytest.mark.parametrize("kind,rounding,batches", [
    ("mixes rows", "exact", False), ("mixes rows", "tolerate", False),
    ("rounds rows by batch", "exact", False), ("rounds rows by batch", "tolerate", True)])
def test_a_model_whose_rows_depend_on_the_batch_is_not_batched(start, workdir, kind, rounding, batches):
    """A model that subtracts the batch mean never batches; one whose fused kernel rounds a row
    differently inside a batch batches only with --batch-rounding tolerate. Unbatched, each
    answer is exactly the one the row gets alone."""
    if kind == "mixes rows":
        path, n = models.batch_mixer(workdir / "mixer.onnx"), 2
    else:
        path, n = models.seq_model(workdir / "seq-fused.onnx", fused=True), 7
    rt = start(path, "m", "--max-batch-size", "8", "--max-queue-delay", "5ms",
               "--batch-rounding", rounding, version="v1")
    _, stats = rt.admin("GET", "/admin/stats")
    assert stats["versions"]["v1"]["batching"] is batches, rt.logs()
    assert ("batching disabled for this version" in rt.logs()) is not batches
    ref = ref_session(path)

    def one(k):
        x = np.random.default_rng(k).normal(size=(1, n)).astype(np.float32)
        c = tg.InferenceServerClient(rt.grpc)
        i = tg.InferInput("x", [1, n], "FP32")
        i.set_data_from_numpy(x)
        r = c.infer("m", [i])
        got = [r.as_numpy(o.name) for o in ref.get_outputs()]
        want = ref.run(None, {"x": x})
        if batches:
            return all(np.allclose(g, w, rtol=1e-5, atol=1e-6) for g, w in zip(got, want))
        return all(g.tobytes() == w.tobytes() for g, w in zip(got, want))

    with cf.ThreadPoolExecutor(8) as pool:
        assert all(pool.map(one, range(32)))


def _npy(descr, shape, data):
    h = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    h += " " * (63 - (10 + len(h)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode() + data


def _npz(path, arrays):
    with zipfile.ZipFile(path, "w") as z:
        for name, raw in arrays.items():
            z.writestr(name + ".npy", raw)
    return path


def malformed_golden_sets(workdir):
    x = np.zeros((4, 4), np.float32)
    ok_out = _npy("<f4", "(4, 3)", np.zeros((4, 3), np.float32).tobytes())
    cases = {
        "zero-d": ({"input.x": _npy("<f4", "()", b"\x00" * 4), "output.probs": ok_out}, "0-d array"),
        "negative dim": ({"input.x": _npy("<f4", "(-4, 4)", b""), "output.probs": ok_out}, "bad shape"),
        "huge dims": ({"input.x": _npy("<f8", "(4611686018427387904, 8)", b""), "output.probs": ok_out}, "too large"),
        "truncated data": ({"input.x": _npy("<f4", "(4, 4)", x.tobytes()[:40]), "output.probs": ok_out}, "needs 64 bytes"),
        "sample mismatch": ({"input.x": _npy("<f4", "(4, 4)", x.tobytes()),
                             "output.probs": _npy("<f4", "(3, 3)", np.zeros((3, 3), np.float32).tobytes())},
                            "has 4 samples but"),
        "not npy": ({"input.x": b"hello", "output.probs": ok_out}, "not a .npy"),
    }
    out = {}
    for name, (arrays, msg) in cases.items():
        out[name] = (_npz(workdir / f"golden-{name.replace(' ', '-')}.npz", arrays), msg)
    # A decompression bomb: 300 MiB of zeros deflated to a few hundred KiB.
    bomb = workdir / "golden-bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("input.x.npy", "w") as f:
            f.write(_npy("<f4", f"({300 * MIB // 16}, 4)", b""))
            chunk = b"\x00" * MIB
            for _ in range(300):
                f.write(chunk)
        z.writestr("output.probs.npy", ok_out)
    out["bomb"] = (bomb, "more than 268435456 bytes once decompressed")
    # A directory that claims 4 GiB for a tiny entry.
    liar = io.BytesIO(_npz(workdir / "golden-liar.npz", {"input.x": _npy("<f4", "(4, 4)", x.tobytes()),
                                                           "output.probs": ok_out}).read_bytes())
    raw = bytearray(liar.getvalue())
    cd = raw.rfind(b"PK\x01\x02")
    while cd != -1:
        raw[cd + 24:cd + 28] = struct.pack("<I", 0xFFFFFFFF)
        cd = raw.rfind(b"PK\x01\x02", 0, cd)
    (workdir / "golden-liar.npz").write_bytes(bytes(raw))
    out["not a zip"] = (workdir / "golden-notzip.npz", "not an .npz")
    (workdir / "golden-notzip.npz").write_bytes(b"definitely not a zip")
    return out


def test_malformed_golden_sets_are_refused_by_evaluate_and_check(start, mlp_v1, workdir):
    rt = start(mlp_v1, "fraud", version="v1")
    x = np.ones((1, 4), np.float32)
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
    sets = malformed_golden_sets(workdir)
    # A directory that claims 4 GiB for a small entry is not believed: read as what it holds.
    before = rss_kb(rt.proc.pid)
    code, resp = rt.admin("POST", "/admin/evaluate", {"version": "v1", "golden": str(workdir / "golden-liar.npz")})
    assert code in (200, 400), resp
    assert rss_kb(rt.proc.pid) - before < 100 * 1024
    for name, (path, msg) in sets.items():
        before = rss_kb(rt.proc.pid)
        code, resp = rt.admin("POST", "/admin/evaluate", {"version": "v1", "golden": str(path)})
        assert code == 400 and msg in resp["error"], (name, code, resp)
        assert rss_kb(rt.proc.pid) - before < 100 * 1024, name
        assert requests.post(rt.url("/v2/models/fraud/infer"), json=body, timeout=30).status_code == 200
        term = workdir / f"term-{path.stem}.json"
        p = subprocess.run([str(BINARY), "--check", "--model", str(mlp_v1), "--golden", str(path),
                            "--termination-log", str(term)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 3, (name, p.returncode, p.stdout, p.stderr[-2000:])
        result = json.loads(term.read_text())
        assert result["ok"] is False and result["reason"] == "GoldenSetInvalid", (name, result)
        assert msg in result["message"], (name, result)


@pytest.mark.parametrize("flag,value", [("--queue-capacity", "2147483647"), ("--max-batch-size", "1000000"),
                                        ("--instances", "100000"), ("--max-queue-delay", "10m"),
                                        ("--max-message-bytes", "8589934592"),
                                        ("--max-inflight-bytes", "2048")])
def test_flags_out_of_bounds_are_refused_at_start(mlp_v1, flag, value):
    t = time.monotonic()
    p = subprocess.run([str(BINARY), "--model", str(mlp_v1), "--listen", "127.0.0.1", "--http-port", "0",
                        "--grpc-port", "0", "--metrics-port", "0", flag, value],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and time.monotonic() - t < 10
    assert flag in p.stderr, p.stderr


def test_hostile_policy_labels_and_non_finite_scores(start, workdir):
    path = models.sqrt_scorer(workdir / "sqrt.onnx")
    policy = workdir / "hostile-policy.json"
    policy.write_text(json.dumps({"output": "score", "default": 'al"low\\', "thresholds": [
        {"min": 2.0, "label": 'bl"ock\nnow'}, {"min": 1.0, "label": "review"}]}))
    rt = start(path, "sq", "--policy", str(policy), version='v"1')

    def decide(v):
        r = requests.post(rt.url("/v2/models/sq/infer"), json={"inputs": [
            {"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [v]}]}, timeout=30)
        assert r.status_code == 200, r.text
        return next(o for o in r.json()["outputs"] if o["name"] == "decision")["data"][0]

    assert decide(9.0) == 'bl"ock\nnow'
    assert decide(0.25) == 'al"low\\'
    # sqrt(-1) is NaN and sqrt(1e39 as FP32 = inf) is infinite: neither fails open to the default.
    assert decide(-1.0) == "invalid"
    assert decide(1e39) == "invalid"
    text = requests.get(f"http://127.0.0.1:{rt.metrics_port}/metrics", timeout=10).text
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    decisions = {s.labels["label"]: s.value for s in samples if s.name == "kinfer_decisions_total"}
    assert decisions == {'bl"ock\nnow': 1, "review": 0, 'al"low\\': 1, "invalid": 2}, decisions
    assert {s.labels["version"] for s in samples if s.name == "kinfer_serving"} == {'v"1'}
    assert any(s.name == "kinfer_panics_total" for s in samples)
    # A policy that uses the reserved label is refused at start.
    policy.write_text(json.dumps({"output": "score", "default": "invalid", "thresholds": [{"min": 1, "label": "x"}]}))
    p = subprocess.run([str(BINARY), "--model", str(path), "--policy", str(policy), "--http-port", "0",
                        "--grpc-port", "0", "--metrics-port", "0"], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "reserved" in p.stderr, p.stderr

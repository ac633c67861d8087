"""Outputs through unmodified tritonclient (HTTP JSON, HTTP binary, gRPC) equal Python
onnxruntime's for the same inputs: single and multiple inputs/outputs, dynamic batch, every
supported datatype; health and metadata report the model's real tensors."""
import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as tg
import tritonclient.http as th

import models


def reference(path, feeds):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def infer_all_ways(rt, feeds, dtypes):
    """Returns {way: {output: array}} for HTTP JSON, HTTP binary and gRPC."""
    results = {}
    hc = th.InferenceServerClient(rt.http)
    for way, binary in [("http-json", False), ("http-binary", True)]:
        ins = []
        for n, v in feeds.items():
            i = th.InferInput(n, list(v.shape), dtypes[n])
            i.set_data_from_numpy(v, binary_data=binary)
            ins.append(i)
        r = hc.infer(rt.name, ins, outputs=None if binary else [])
        results[way] = (r.get_response()["model_version"], {o["name"]: r.as_numpy(o["name"]) for o in r.get_response()["outputs"]})
    gc = tg.InferenceServerClient(rt.grpc)
    ins = []
    for n, v in feeds.items():
        i = tg.InferInput(n, list(v.shape), dtypes[n])
        i.set_data_from_numpy(v)
        ins.append(i)
    r = gc.infer(rt.name, ins)
    results["grpc"] = (r.get_response().model_version, {o.name: r.as_numpy(o.name) for o in r.get_response().outputs})
    return results


def test_mlp_matches_onnxruntime_over_every_protocol(start, mlp_v1):
    rt = start(mlp_v1, "fraud", version="v1")
    x = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
    ref = reference(mlp_v1, {"x": x})
    for way, (version, outs) in infer_all_ways(rt, {"x": x}, {"x": "FP32"}).items():
        assert version == "v1", way
        assert set(outs) == {"probs", "score"}, way
        for name, want in ref.items():
            np.testing.assert_array_equal(outs[name], want, err_msg=f"{way} {name}")


def test_two_inputs_two_outputs(start, workdir):
    path = models.two_inputs(workdir / "two.onnx")
    rt = start(path, "two")
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    b = np.full((3, 2), 0.5, dtype=np.float32)
    ref = reference(path, {"a": a, "b": b})
    for way, (_, outs) in infer_all_ways(rt, {"a": a, "b": b}, {"a": "FP32", "b": "FP32"}).items():
        for name, want in ref.items():
            np.testing.assert_array_equal(outs[name], want, err_msg=f"{way} {name}")


@pytest.mark.parametrize("dtype", list(models.DTYPES))
def test_every_datatype_round_trips(start, workdir, dtype):
    path = models.identity(workdir / f"id-{dtype}.onnx", dtype)
    rt = start(path, "ident")
    _, np_t = models.DTYPES[dtype]
    rng = np.random.default_rng(5)
    if np_t is np.bool_:
        x, k = rng.integers(0, 2, size=(2, 3)).astype(np.bool_), np.array([True, False])
    elif np.issubdtype(np_t, np.integer):
        info = np.iinfo(np_t)
        x = rng.integers(info.min, info.max, size=(2, 3), dtype=np_t, endpoint=True)
        k = np.array([info.min, info.max], dtype=np_t)
    else:
        x, k = rng.normal(size=(2, 3)).astype(np_t), np.array([1.5, -2.25], dtype=np_t)
    ref = reference(path, {"x": x, "k": k})
    for way, (_, outs) in infer_all_ways(rt, {"x": x, "k": k}, {"x": dtype, "k": dtype}).items():
        for name, want in ref.items():
            assert outs[name].dtype == want.dtype, f"{way} {name} {outs[name].dtype}"
            np.testing.assert_array_equal(outs[name], want, err_msg=f"{way} {name}")


def test_health_and_metadata(start, mlp_v1):
    rt = start(mlp_v1, "fraud", version="v1")
    hc = th.InferenceServerClient(rt.http)
    gc = tg.InferenceServerClient(rt.grpc)
    assert hc.is_server_live() and hc.is_server_ready() and hc.is_model_ready("fraud")
    assert gc.is_server_live() and gc.is_server_ready() and gc.is_model_ready("fraud")
    assert not hc.is_model_ready("nope")
    md = hc.get_model_metadata("fraud")
    assert md["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in md["outputs"]] == ["probs", "score"]
    assert md["outputs"][0]["shape"] == [-1, 3]
    gmd = gc.get_model_metadata("fraud", "v1")
    assert list(gmd.inputs[0].shape) == [-1, 4] and gmd.versions == ["v1"]
    assert requests.get(rt.url("/v2")).json()["name"] == "kinfer"
    assert requests.get(rt.url("/v2/models/fraud/versions/v1/ready")).status_code == 200
    assert requests.get(rt.url("/v2/models/fraud/versions/v9/ready")).status_code == 404


def test_metrics_have_the_designed_names(start, mlp_v1):
    rt = start(mlp_v1, "fraud", version="v1")
    x = np.ones((1, 4), np.float32)
    requests.post(rt.url("/v2/models/fraud/infer"), json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}).raise_for_status()
    text = requests.get(f"http://127.0.0.1:{rt.metrics_port}/metrics").text
    for name in ["kinfer_request_duration_seconds_bucket", "kinfer_queue_duration_seconds", "kinfer_compute_duration_seconds",
                 "kinfer_batch_size", "kinfer_queue_depth", "kinfer_requests_total", "kinfer_model_swaps_total",
                 "kinfer_model_rollbacks_total"]:
        assert name in text, name
    assert 'kinfer_requests_total{model="fraud",version="v1",protocol="http",code="200"} 1' in text
    assert 'kinfer_request_duration_seconds_count{model="fraud",version="v1",protocol="http"} 1' in text
    # The operator's kinfer_rollbacks_total (rollouts rolled back) is not the runtime's.
    assert "kinfer_rollbacks_total" not in text


def metric(text, series):
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + " "))


def test_requests_count_per_answering_version_and_drift_is_exported_against_the_previous(start, mlp_v1, mlp_v2):
    rt = start(mlp_v1, "fraud", version="v1")
    rows = np.random.default_rng(3).normal(size=(1200, 4)).astype(np.float32)
    body = {"inputs": [{"name": "x", "shape": [1200, 4], "datatype": "FP32", "data": rows.ravel().tolist()}]}
    requests.post(rt.url("/v2/models/fraud/infer"), json=body).raise_for_status()
    # Failures before a version is chosen count under version="".
    assert requests.post(rt.url("/v2/models/nope/infer"), json=body).status_code == 404
    assert requests.post(rt.url("/v2/models/fraud/versions/v9/infer"), json=body).status_code == 404
    assert requests.post(rt.url("/v2/models/fraud/infer"), data=b"{").status_code == 400
    m = f"http://127.0.0.1:{rt.metrics_port}/metrics"
    # One serving version and nothing before it: no drift to report.
    assert "kinfer_drift_score{" not in requests.get(m).text
    assert rt.admin("POST", "/admin/stage", {"version": "v2", "path": str(mlp_v2)})[0] == 200
    assert rt.admin("POST", "/admin/serve", {"version": "v2"})[0] == 200
    small = {"inputs": [{"name": "x", "shape": [5, 4], "datatype": "FP32", "data": rows[:5].ravel().tolist()}]}
    requests.post(rt.url("/v2/models/fraud/infer"), json=small).raise_for_status()
    # v2 has 5 rows: too few for a PSI worth reading.
    assert "kinfer_drift_score{" not in requests.get(m).text
    requests.post(rt.url("/v2/models/fraud/infer"), json=body).raise_for_status()
    text = requests.get(m).text
    assert metric(text, 'kinfer_requests_total{model="fraud",version="v1",protocol="http",code="200"}') == 1
    assert metric(text, 'kinfer_requests_total{model="fraud",version="v2",protocol="http",code="200"}') == 2
    assert metric(text, 'kinfer_requests_total{model="fraud",version="",protocol="http",code="404"}') == 2
    assert metric(text, 'kinfer_requests_total{model="fraud",version="",protocol="http",code="400"}') == 1
    assert metric(text, 'kinfer_requests_total{model="fraud",version="",protocol="http",code="200"}') == 0
    # Other weights on the same inputs: the PSI of the two arg-max distributions (the first
    # output is a class vector), computed here from ONNX Runtime's own outputs.
    def classes(model, x):
        return np.bincount(ort.InferenceSession(str(model)).run(None, {"x": x})[0].argmax(axis=1), minlength=20)
    base, cur = classes(mlp_v1, rows), classes(mlp_v2, rows) + classes(mlp_v2, rows[:5])
    pb, pc = np.maximum(base / base.sum(), 1e-4), np.maximum(cur / cur.sum(), 1e-4)
    want = float(((pc - pb) * np.log(pc / pb)).sum())
    score = metric(text, 'kinfer_drift_score{model="fraud",version="v2",baseline="v1"}')
    assert want > 0.01 and abs(score - want) < 1e-9, (score, want)
    # The same bytes under another name give the same outputs on the same inputs (v2 also has
    # the 5 rows of the small request): next to no drift.
    assert rt.admin("POST", "/admin/stage", {"version": "v3", "path": str(mlp_v2)})[0] == 200
    assert rt.admin("POST", "/admin/serve", {"version": "v3"})[0] == 200
    requests.post(rt.url("/v2/models/fraud/infer"), json=body).raise_for_status()
    text = requests.get(m).text
    assert metric(text, 'kinfer_drift_score{model="fraud",version="v3",baseline="v2"}') < 0.01


def test_missing_library_and_model_are_clear_errors(workdir, mlp_v1):
    import subprocess
    from conftest import BINARY
    env = {k: v for k, v in __import__("os").environ.items() if k != "ORT_DYLIB_PATH"}
    out = subprocess.run([str(BINARY), "--model", str(mlp_v1)], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "ORT_DYLIB_PATH" in out.stderr
    out = subprocess.run([str(BINARY), "--model", str(mlp_v1), "--ort-lib", "/nonexistent/libonnxruntime.so"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "/nonexistent/libonnxruntime.so does not exist" in out.stderr
    bad = workdir / "not-a-model.onnx"
    bad.write_bytes(b"garbage")
    out = subprocess.run([str(BINARY), "--model", str(bad), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "cannot load model" in out.stderr and "not-a-model.onnx" in out.stderr


def test_gpu_provider_missing_is_an_error_or_a_logged_fallback(workdir, mlp_v1, start):
    import subprocess
    from conftest import BINARY
    out = subprocess.run([str(BINARY), "--model", str(mlp_v1), "--execution-provider", "cuda",
                          "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"], capture_output=True, text=True, timeout=30)
    # The CPU build of ONNX Runtime has no CUDA provider: said so, with both ways out.
    assert out.returncode != 0 and "execution provider cuda is not in this ONNX Runtime build" in out.stderr, out.stderr
    assert "kinfer-runtime-gpu" in out.stderr and "--ep-fallback cpu" in out.stderr, out.stderr
    # Options of a provider that would ignore them are refused, naming the flag.
    out = subprocess.run([str(BINARY), "--model", str(mlp_v1), "--execution-provider", "cuda", "--trt-fp16",
                          "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "--trt-fp16 does not apply to --execution-provider cuda" in out.stderr, out.stderr
    rt = start(mlp_v1, "fraud", "--execution-provider", "tensorrt", "--ep-fallback", "cpu")
    assert "serving on the CPU (--ep-fallback cpu)" in rt.logs()
    r = requests.post(rt.url("/v2/models/fraud/infer"), json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    assert r.status_code == 200
    # The provider actually in use, in the metadata and the metrics.
    assert requests.get(rt.url("/v2/models/fraud")).json()["parameters"]["execution_provider"] == "cpu"
    metrics = requests.get(f"http://127.0.0.1:{rt.metrics_port}/metrics").text
    assert 'kinfer_execution_provider{model="fraud",version="1",provider="cpu"} 1' in metrics, metrics[-800:]


def test_cpu_affinity_auto_starts_and_serves(start, mlp_v1):
    rt = start(mlp_v1, "fraud", "--cpu-affinity", "auto")
    r = requests.post(rt.url("/v2/models/fraud/infer"), json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    assert r.status_code == 200

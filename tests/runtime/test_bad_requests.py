"""A table of bad requests: each gets the right status (HTTP) or code (gRPC) and a message that
names the problem; afterwards good requests still succeed — the server keeps serving."""
import json

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

import models

X = [0.1, 0.2, 0.3, 0.4]


def body(inputs, **extra):
    return json.dumps({"inputs": inputs, **extra}).encode()


def good_input(**over):
    i = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": X}
    i.update(over)
    return i


def binary(header, payload, length=None):
    h = json.dumps(header).encode()
    return h + payload, {"Inference-Header-Content-Length": str(len(h) if length is None else length)}


BIN_OK = np.array([X], dtype=np.float32).tobytes()

# (case, path, body bytes, extra headers, status, substring of the error)
CASES = [
    ("unknown input name", "/v2/models/fraud/infer", body([good_input(name="z")]), {}, 400, "has no input 'z'"),
    ("missing input", "/v2/models/fraud/infer", body([{"name": "k", "shape": [1], "datatype": "FP32", "data": [1]}]), {}, 400, "has no input 'k'"),
    ("no inputs", "/v2/models/fraud/infer", body([]), {}, 400, "request has no inputs"),
    ("wrong datatype", "/v2/models/fraud/infer", body([good_input(datatype="INT32", data=[1, 2, 3, 4])]), {}, 400, "datatype INT32 does not match the model's FP32"),
    ("unknown datatype", "/v2/models/fraud/infer", body([good_input(datatype="FP8")]), {}, 400, "unknown datatype 'FP8'"),
    ("wrong rank", "/v2/models/fraud/infer", body([good_input(shape=[4])]), {}, 400, "has rank 1"),
    ("wrong fixed dim", "/v2/models/fraud/infer", body([good_input(shape=[1, 5], data=X + [0.5])]), {}, 400, "dimension 1 is 5"),
    ("negative dim", "/v2/models/fraud/infer", body([good_input(shape=[-1, 4])]), {}, 400, "negative dimension"),
    ("too few elements", "/v2/models/fraud/infer", body([good_input(data=X[:3])]), {}, 400, "needs 4 elements but data has 3"),
    ("too many elements", "/v2/models/fraud/infer", body([good_input(data=X + X)]), {}, 400, "needs 4 elements but data has 8"),
    ("string in FP32 data", "/v2/models/fraud/infer", body([good_input(data=["a", 1, 2, 3])]), {}, 400, "is not a valid FP32"),
    ("null in data", "/v2/models/fraud/infer", body([good_input(data=[None, 1, 2, 3])]), {}, 400, "data contains null"),
    ("object as data", "/v2/models/fraud/infer", body([good_input(data={"a": 1})]), {}, 400, "not an object"),
    ("no data", "/v2/models/fraud/infer", body([{"name": "x", "shape": [1, 4], "datatype": "FP32"}]), {}, 400, "neither data nor binary_data_size"),
    ("malformed JSON", "/v2/models/fraud/infer", b'{"inputs": [', {}, 400, "malformed inference request JSON"),
    ("not JSON at all", "/v2/models/fraud/infer", b"\x00\xff garbage", {}, 400, "malformed inference request JSON"),
    ("empty body", "/v2/models/fraud/infer", b"", {}, 400, "malformed inference request JSON"),
    ("duplicate input", "/v2/models/fraud/infer", body([good_input(), good_input()]), {}, 400, "given more than once"),
    ("empty batch", "/v2/models/fraud/infer", body([good_input(shape=[0, 4], data=[])]), {}, 400, "empty batch"),
    ("batch over the limit", "/v2/models/fraud/infer", body([good_input(shape=[9, 4], data=X * 9)]), {}, 400, "exceeds the limit of 8"),
    ("unknown output", "/v2/models/fraud/infer", body([good_input()], outputs=[{"name": "logits"}]), {}, 400, "has no output 'logits'"),
    ("bad timeout parameter", "/v2/models/fraud/infer", body([good_input()], parameters={"timeout": "soon"}), {}, 400, "parameter 'timeout'"),
    ("unknown model", "/v2/models/other/infer", body([good_input()]), {}, 404, "unknown model 'other'"),
    ("unknown version", "/v2/models/fraud/versions/v9/infer", body([good_input()]), {}, 404, "has no version 'v9'"),
    ("binary header longer than body", "/v2/models/fraud/infer",
     *binary({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}, BIN_OK, length=100000), 400, "Inference-Header-Content-Length is 100000"),
    ("binary size lies (too big)", "/v2/models/fraud/infer",
     *binary({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 32}}]}, BIN_OK), 400, "exceeds the 16 binary bytes"),
    ("binary size lies (too small)", "/v2/models/fraud/infer",
     *binary({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}, BIN_OK), 400, "not claimed by any binary_data_size"),
    ("binary bytes do not fit the shape", "/v2/models/fraud/infer",
     *binary({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]}, BIN_OK[:12]), 400, "needs 16 bytes but 12 were sent"),
    ("non-numeric header length", "/v2/models/fraud/infer", body([good_input()]), {"Inference-Header-Content-Length": "abc"}, 400, "must be a non-negative integer"),
    ("oversize body", "/v2/models/fraud/infer", b"{" + b" " * 70000 + b"}", {}, 400, "exceeds the limit of 65536 bytes"),
]


@pytest.fixture(scope="module")
def server(workdir):
    from conftest import Runtime
    rt = Runtime(models.mlp(workdir / "bad-mlp.onnx"), "fraud", workdir, "--max-body-bytes", "65536", "--max-request-rows", "8", version="v1")
    yield rt
    rt.stop()


def test_there_are_at_least_25_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize("case,path,data,headers,status,message", CASES, ids=[c[0] for c in CASES])
def test_bad_http_request(server, case, path, data, headers, status, message):
    r = requests.post(server.url(path), data=data, headers=headers, timeout=10)
    assert r.status_code == status, (case, r.status_code, r.text)
    err = r.json()["error"]
    assert message in err, (case, err)
    # The server keeps serving after every bad request.
    ok = requests.post(server.url("/v2/models/fraud/infer"), data=body([good_input()]), timeout=10)
    assert ok.status_code == 200, ok.text


def test_bad_grpc_requests(server):
    c = tg.InferenceServerClient(server.grpc)
    cases = [
        ("x", [1, 5], np.zeros((1, 5), np.float32), "FP32", grpc.StatusCode.INVALID_ARGUMENT, "dimension 1 is 5"),
        ("y", [1, 4], np.zeros((1, 4), np.float32), "FP32", grpc.StatusCode.INVALID_ARGUMENT, "has no input 'y'"),
        ("x", [1, 4], np.zeros((1, 4), np.float64), "FP64", grpc.StatusCode.INVALID_ARGUMENT, "datatype FP64"),
    ]
    for name, shape, arr, dt, code, msg in cases:
        i = tg.InferInput(name, shape, dt)
        i.set_data_from_numpy(arr)
        with pytest.raises(InferenceServerException) as e:
            c.infer("fraud", [i])
        assert e.value.status() == str(code), (msg, e.value.status())
        assert msg in e.value.message(), e.value.message()
    i = tg.InferInput("x", [1, 4], "FP32")
    i.set_data_from_numpy(np.zeros((1, 4), np.float32))
    with pytest.raises(InferenceServerException) as e:
        c.infer("other", [i])
    assert e.value.status() == str(grpc.StatusCode.NOT_FOUND)
    # A lying raw_input_contents length: 12 bytes for a [1,4] FP32 tensor.
    from tritonclient.grpc import service_pb2
    stub = c._client_stub
    req = service_pb2.ModelInferRequest(model_name="fraud")
    t = req.inputs.add(); t.name = "x"; t.datatype = "FP32"; t.shape.extend([1, 4])
    req.raw_input_contents.append(b"\x00" * 12)
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "needs 16 bytes but 12" in e.value.details()
    assert c.infer("fraud", [i]).as_numpy("probs").shape == (1, 3)

"""Dynamic batching, overload shedding, deadlines, hot swap under load, admin API and SIGTERM —
each against a real kinfer-runtime process with real ONNX Runtime."""
import concurrent.futures as cf
import os
import signal
import stat
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as tg

import models


def payload(x):
    return {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def ref(path, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})


def _rows(shape, dtype, rng, n):
    """An input of declared `shape`: n rows in a dynamic first dimension, 5 in other dynamic ones."""
    dims = [d if isinstance(d, int) and d >= 0 else (n if i == 0 else 5) for i, d in enumerate(shape)]
    if np.issubdtype(dtype, np.floating):
        return rng.normal(size=dims).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=dims).astype(np.bool_)
    return rng.integers(0, 100, size=dims).astype(dtype)


TIER_MODELS = {
    "mlp": lambda d: models.mlp(d / "b-mlp.onnx"),
    "two inputs": lambda d: models.two_inputs(d / "b-two.onnx"),
    "scorer": lambda d: models.scorer(d / "b-scorer.onnx"),
    "bench mlp": lambda d: models.bench_mlp(d / "b-bench.onnx"),
    "seq": lambda d: models.seq_model(d / "b-seq.onnx"),
    **{f"identity {t}": (lambda t: lambda d: models.identity(d / f"b-id-{t}.onnx", t))(t)
       for t in ("BOOL", "UINT8", "INT64", "FP16", "FP64")},
}


@pytest.mark.parametrize("name", list(TIER_MODELS))
def test_every_model_batched_equals_its_unbatched_answer_bit_for_bit(start, workdir, name):
    path = TIER_MODELS[name](workdir)
    rt = start(path, "m", "--max-batch-size", "16", "--max-queue-delay", "5ms", version="v1")
    sess = ort.SessionOptions()
    sess.intra_op_num_threads = 1
    refsess = ort.InferenceSession(str(path), sess, providers=["CPUExecutionProvider"])
    ins = refsess.get_inputs()
    np_type = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
               "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8, "tensor(int64)": np.int64}
    from tritonclient.utils import np_to_triton_dtype
    failures = []

    def client(k):
        c = tg.InferenceServerClient(rt.grpc)
        rng = np.random.default_rng(k)
        for j in range(12):
            n = 1 + (k + j) % 3
            feed = {i.name: _rows(i.shape, np_type[i.type], rng, n) for i in ins}
            reqs = []
            for iname, arr in feed.items():
                t = tg.InferInput(iname, list(arr.shape), np_to_triton_dtype(arr.dtype))
                t.set_data_from_numpy(arr)
                reqs.append(t)
            r = c.infer("m", reqs)
            for o, w in zip(refsess.get_outputs(), refsess.run(None, feed)):
                g = r.as_numpy(o.name)
                if g.shape != w.shape or g.tobytes() != w.tobytes():
                    failures.append(f"{name}: client {k} request {j} output {o.name} differs")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [], failures[:5]
    _, stats = rt.admin("GET", "/admin/stats")
    v = stats["versions"]["v1"]
    batchable = all(isinstance(d, str) for i in ins for d in i.shape[:1])
    assert v["batching"] is batchable, (name, v["batching"])
    if batchable:
        assert v["stats"]["mean_batch"] > 1.2, v["stats"]


def test_concurrent_requests_are_batched_and_equal_their_unbatched_answers(start, mlp_v1):
    rt = start(mlp_v1, "fraud", "--max-batch-size", "16", "--max-queue-delay", "20ms", version="v1")
    rows = [np.random.default_rng(i).normal(size=(1 + i % 3, 4)).astype(np.float32) for i in range(48)]
    want = [ref(mlp_v1, x) for x in rows]
    session = requests.Session()

    def one(i):
        r = requests.post(rt.url("/v2/models/fraud/infer"), json=payload(rows[i]), timeout=30)
        r.raise_for_status()
        return i, r.json()

    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(len(rows))))
    for i, resp in results:
        outs = {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in resp["outputs"]}
        # Bit for bit: a batched answer is the unbatched one (JSON floats round-trip exactly).
        assert outs["probs"].tobytes() == want[i][0].tobytes()
        assert outs["score"].tobytes() == want[i][1].tobytes()
    code, stats = rt.admin("GET", "/admin/stats")
    s = stats["versions"]["v1"]["stats"]
    assert s["mean_batch"] > 1.5, s
    assert sum(s["batch_sizes"][1:]) > 0, s["batch_sizes"]
    session.close()


def test_overload_sheds_fast_with_503_and_retry_after(start, workdir):
    slow = models.mlp(workdir / "slow.onnx", hidden=1024, extra_layers=40)
    rt = start(slow, "slow", "--queue-capacity", "2", version="v1")
    x = np.ones((1, 4), np.float32)
    statuses, retry_after, fast = [], [], []

    def one(_):
        t = time.perf_counter()
        r = requests.post(rt.url("/v2/models/slow/infer"), json=payload(x), timeout=60)
        if r.status_code == 503:
            retry_after.append(r.headers.get("Retry-After"))
            fast.append(time.perf_counter() - t)
        statuses.append(r.status_code)

    with cf.ThreadPoolExecutor(24) as pool:
        list(pool.map(one, range(48)))
    assert statuses.count(200) >= 3, statuses
    assert statuses.count(503) >= 10, statuses
    assert set(statuses) <= {200, 503}
    assert all(r == "1" for r in retry_after)
    assert np.median(fast) < 0.5


def test_expired_requests_get_504_and_never_run(start, workdir):
    slow = models.mlp(workdir / "slow2.onnx", hidden=1024, extra_layers=60)
    rt = start(slow, "slow", version="v1")
    x = np.ones((1, 4), np.float32)
    codes = []

    def one(i):
        body = payload(x)
        body["parameters"] = {"timeout": 1000}  # 1 ms, Triton's microseconds
        r = requests.post(rt.url("/v2/models/slow/infer"), json=body, timeout=60)
        codes.append((r.status_code, r.json().get("error", "")))

    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(16)))
    timed_out = [m for c, m in codes if c == 504]
    assert len(timed_out) >= 8, codes
    assert all("deadline passed" in m for m in timed_out)
    _, stats = rt.admin("GET", "/admin/stats")
    s = stats["versions"]["v1"]["stats"]
    # Without batching each request that ran is one batch (warm-up runs are not counted), so the
    # expired requests never reached the model exactly when batches == 16 - expired.
    assert s["batches"] == 16 - len(timed_out), (s["batches"], len(timed_out))


def test_hot_swap_under_load_drops_nothing_and_labels_every_answer(start, mlp_v1, mlp_v2):
    rt = start(mlp_v1, "fraud", "--max-batch-size", "8", "--max-queue-delay", "1ms", version="v1")
    code, staged = rt.admin("POST", "/admin/stage", {"version": "v2", "path": str(mlp_v2)})
    assert code == 200, staged
    x = np.random.default_rng(0).normal(size=(1, 4)).astype(np.float32)
    expected = {"v1": ref(mlp_v1, x)[0], "v2": ref(mlp_v2, x)[0]}
    assert not np.allclose(expected["v1"], expected["v2"]), "versions must differ to prove labelling"
    stop = threading.Event()
    failures, seen = [], {"v1": 0, "v2": 0}

    def client():
        s = requests.Session()
        while not stop.is_set():
            r = s.post(rt.url("/v2/models/fraud/infer"), json=payload(x), timeout=30)
            if r.status_code != 200:
                failures.append(r.text)
                continue
            j = r.json()
            probs = np.array(j["outputs"][0]["data"], np.float32).reshape(1, 3)
            v = j["model_version"]
            if not np.allclose(probs, expected[v], rtol=1e-5, atol=1e-6):
                failures.append(f"answer labelled {v} does not match {v}'s outputs")
            seen[v] += 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(100):
        assert rt.admin("POST", "/admin/promote", {"version": "v2"})[0] == 200
        time.sleep(0.005)
        assert rt.admin("POST", "/admin/rollback", {"version": "v1"})[0] == 200
        time.sleep(0.005)
    stop.set()
    for t in threads:
        t.join()
    assert failures == [], failures[:5]
    assert seen["v1"] > 50 and seen["v2"] > 10, seen
    _, stats = rt.admin("GET", "/admin/stats")
    assert stats["swaps"] >= 201 and stats["rollbacks"] == 100
    assert stats["serving"] == "v1" and stats["previous"] == "v2"


def test_admin_api(start, mlp_v1, mlp_v2, workdir):
    rt = start(mlp_v1, "fraud", version="v1")
    assert stat.S_IMODE(os.stat(rt.socket).st_mode) == 0o600
    assert rt.admin("POST", "/admin/stage", {"version": "v1", "path": str(mlp_v1)})[0] == 409
    code, body = rt.admin("POST", "/admin/stage", {"version": "v3", "path": "/nonexistent.onnx"})
    assert code == 422 and "nonexistent.onnx" in body["error"]
    assert rt.admin("POST", "/admin/stage", {"path": "x"})[0] == 400
    assert rt.admin("POST", "/admin/promote", {"version": "v9"})[0] == 404
    assert rt.admin("POST", "/admin/rollback", {"version": "v9"})[0] == 404
    assert rt.admin("POST", "/admin/rollback")[0] == 400  # it names the version to go back to
    assert rt.admin("POST", "/admin/unload", {"version": "v1"})[0] == 409
    assert rt.admin("POST", "/admin/stage", {"version": "v2", "path": str(mlp_v2)})[0] == 200
    # A staged version is reachable explicitly but does not serve.
    x = np.ones((1, 4), np.float32)
    r = requests.post(rt.url("/v2/models/fraud/versions/v2/infer"), json=payload(x)).json()
    assert r["model_version"] == "v2"
    assert requests.post(rt.url("/v2/models/fraud/infer"), json=payload(x)).json()["model_version"] == "v1"
    # Golden sets: v2 reproduces its own references and not v1's.
    g1 = models.golden(workdir / "g1.npz", mlp_v1)
    g2 = models.golden(workdir / "g2.npz", mlp_v2)
    code, rep = rt.admin("POST", "/admin/evaluate", {"version": "v2", "golden": str(g2)})
    assert code == 200 and rep["withinTolerance"] and rep["maxAbsError"] < 1e-5 and rep["samples"] == 32, rep
    code, rep = rt.admin("POST", "/admin/evaluate", {"version": "v2", "golden": str(g1)})
    assert code == 200 and not rep["withinTolerance"] and rep["mismatchedElements"] > 0, rep
    code, rep = rt.admin("POST", "/admin/evaluate", {"version": "v2", "golden": str(mlp_v1)})
    assert code == 400 and "not an .npz" in rep["error"]
    assert rt.admin("POST", "/admin/promote", {"version": "v2"})[1]["previous"] == "v1"
    assert rt.admin("POST", "/admin/rollback", {"version": "v1"})[1] == {"serving": "v1", "previous": "v2", "changed": True}
    assert rt.admin("POST", "/admin/unload", {"version": "v2"})[0] == 200
    assert requests.post(rt.url("/v2/models/fraud/versions/v2/infer"), json=payload(x)).status_code == 404


def test_admin_calls_are_idempotent_and_stage_knows_its_bytes(start, mlp_v1, mlp_v2, workdir):
    """A lost answer followed by a retry, or a watcher restart that repeats its last call, leaves
    the runtime as the first call did; the same label with other bytes is told apart by digest."""
    rt = start(mlp_v1, "fraud", version="v1")
    for _ in range(5):
        requests.post(rt.url("/v2/models/fraud/infer"), json=payload(np.ones((1, 4), np.float32))).raise_for_status()
    stage = {"version": "v2", "path": str(mlp_v2), "digest": "sha256:aaaa"}
    code, first = rt.admin("POST", "/admin/stage", stage)
    assert code == 200 and first["digest"] == "sha256:aaaa" and first["batching"] is False, first
    code, again = rt.admin("POST", "/admin/stage", stage)
    assert code == 409 and again["conflict"] == "AlreadyLoaded" and again["digest"] == "sha256:aaaa", again
    assert rt.admin("POST", "/admin/serve", {"version": "v2"})[1] == {"serving": "v2", "previous": "v1", "changed": True}
    assert rt.admin("POST", "/admin/serve", {"version": "v2"})[1] == {"serving": "v2", "previous": "v1", "changed": False}
    # Rollback names its target: the second call changes nothing (a swap would serve v2 again).
    assert rt.admin("POST", "/admin/rollback", {"version": "v1"})[1] == {"serving": "v1", "previous": "v2", "changed": True}
    assert rt.admin("POST", "/admin/rollback", {"version": "v1"})[1] == {"serving": "v1", "previous": "v2", "changed": False}
    _, stats = rt.admin("GET", "/admin/stats")
    assert (stats["serving"], stats["rollbacks"], stats["versions"]["v2"]["digest"]) == ("v1", 1, "sha256:aaaa")
    # A rollback keeps what v1 did before (the next analysis compares against it); a promotion
    # would have started v1's figures afresh.
    assert stats["versions"]["v1"]["stats"]["requests"] == 5, stats["versions"]["v1"]["stats"]
    # Other bytes under a label kept for rollback are refused; once it is unloaded they load.
    other = {**stage, "path": str(mlp_v1), "digest": "sha256:bbbb"}
    code, body = rt.admin("POST", "/admin/stage", other)
    assert code == 409 and body["conflict"] == "OtherBytes" and body["digest"] == "sha256:aaaa", body
    assert rt.admin("POST", "/admin/unload", {"version": "v2"})[0] == 200
    code, body = rt.admin("POST", "/admin/stage", other)
    assert code == 200 and body["digest"] == "sha256:bbbb", body
    # Other bytes under a label that is merely staged: reloaded from the new bytes.
    code, body = rt.admin("POST", "/admin/stage", {**stage, "digest": "sha256:cccc"})
    assert code == 200 and body["digest"] == "sha256:cccc", body
    x = np.ones((1, 4), np.float32)
    r = requests.post(rt.url("/v2/models/fraud/versions/v2/infer"), json=payload(x)).json()
    assert np.allclose(np.array(r["outputs"][0]["data"], np.float32), ref(mlp_v2, x)[0].ravel())


def test_runtime_without_model_is_not_ready_until_promoted(start, mlp_v1):
    rt = start(None, "fraud")
    assert requests.get(rt.url("/v2/health/ready")).status_code == 503
    assert requests.post(rt.url("/v2/models/fraud/infer"), json=payload(np.ones((1, 4), np.float32))).status_code == 503
    assert rt.admin("POST", "/admin/stage", {"version": "v1", "path": str(mlp_v1)})[0] == 200
    assert rt.admin("POST", "/admin/promote", {"version": "v1"})[0] == 200
    assert requests.get(rt.url("/v2/health/ready")).status_code == 200


def test_sigterm_during_load_fails_no_accepted_request(start, workdir):
    slow = models.mlp(workdir / "slow3.onnx", hidden=512, extra_layers=20)
    rt = start(slow, "slow", version="v1")
    x = np.ones((1, 4), np.float32)
    results = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:
                r = requests.post(rt.url("/v2/models/slow/infer"), json=payload(x), timeout=30)
                results.append((r.status_code, r.text))
            except requests.ConnectionError:
                results.append(("refused", ""))
                time.sleep(0.01)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    rt.proc.send_signal(signal.SIGTERM)
    assert rt.proc.wait(20) == 0
    stop.set()
    for t in threads:
        t.join()
    answered = [r for r in results if r[0] != "refused"]
    assert sum(1 for c, _ in answered if c == 200) > 10
    bad = [r for r in answered if r[0] != 200 and "shutting down" not in r[1]]
    assert bad == [], bad[:3]

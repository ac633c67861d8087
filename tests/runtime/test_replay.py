"""Replay at low traffic with the real runtime and the real watcher: the runtime keeps a sampled
copy of recent live requests in memory (`--replay-requests`), and an analysis whose live traffic
gives no verdict by the end of its window runs them on both versions of the split. A version as
good as the serving one passes, one half again as slow is rolled back — both on a trickle of live
traffic that alone could only give Inconclusive (test_paired.py) — and the admin contract says
what is wrong when a replay cannot run."""
import time

import models
from test_paired import GATE
from test_watcher import Load, artifact, run_watcher, serving  # noqa: F401 - fixtures below
from test_watcher import s3, signing_key  # noqa: F401 - pytest fixtures

RING = ["--replay-requests", "3000", "--replay-sample-rate", "1"]
# A 4 s window on 3 requests/s gives ~6 requests per side: the live judgement can only wait.
ANALYSIS = [*GATE, "--window", "4s", "--max-window", "60s", "--replay-requests", "3000", "--replay-rate", "300"]


def fill(rt, seconds=8.0, rate=200):
    """Traffic before the rollout: what the ring keeps."""
    with Load(rt, rate=rate) as load:
        time.sleep(seconds)
    assert load.failed == 0, load.errors[:3]
    return load.ok


def test_thin_traffic_passes_on_replayed_requests(start, workdir, s3, signing_key):
    priv, pub = signing_key
    rt = start(models.scorer(workdir / "rp-v1.onnx", seed=0), "fraud", *RING, version="v1")
    d = artifact(workdir, "rp-v2", lambda p: models.scorer(p, seed=0), sign_key=priv)
    src = s3.upload(d, "fraud/rp-v2")
    sent = fill(rt)
    with Load(rt, rate=3) as load:
        code, report, events, p = run_watcher(rt, workdir, s3, src, "rp-v2", *ANALYSIS, keys=[pub], timeout=150)
    assert code == 0 and report["verdict"] == "Passed", (report, p.stderr[-3000:])
    m = report["message"]
    assert m.startswith("kept after") and "recent requests replayed on both versions" in m, m
    f = report["figures"]
    assert f["replayed"] >= min(sent, 3000) * 0.5 and f["pairs"] == f["replayed"], f
    assert f["latencyRatioHigh"] <= 1.15 and f["disagreement"] == 0.0, f
    assert serving(rt)[0] == "rp-v2"
    code, stats = rt.admin("GET", "/admin/stats")
    assert stats["baseline"] is None, "the split (and its replay) ended with the verdict"
    # Replays are not live traffic: the version's own counters hold only live requests.
    assert stats["versions"]["rp-v2"]["stats"]["requests"] < 200, stats["versions"]["rp-v2"]["stats"]
    assert load.failed == 0, load.errors[:3]


def test_a_version_half_again_as_slow_is_rolled_back_on_replayed_requests(start, workdir, s3, signing_key):
    priv, pub = signing_key
    rt = start(models.scorer(workdir / "rs-v1.onnx", seed=0, slow_layers=10), "fraud", *RING, version="v1")
    d = artifact(workdir, "rs-v2", lambda p: models.scorer(p, seed=0, slow_layers=16), sign_key=priv)
    src = s3.upload(d, "fraud/rs-v2")
    fill(rt)
    with Load(rt, rate=3) as load:
        code, report, events, p = run_watcher(rt, workdir, s3, src, "rs-v2", *ANALYSIS, keys=[pub], timeout=150)
    assert code == 2, (report, p.stderr[-3000:])
    assert report["verdict"] == "RolledBack" and report["reason"] == "LatencyRegression", report
    assert "recent requests replayed on both versions" in report["message"], report["message"]
    f = report["figures"]
    assert f["replayed"] > 0 and f["latencyRatioLow"] > 1.15, f
    assert serving(rt) == ("v1", ["v1"])
    assert load.failed == 0, load.errors[:3]


def test_replay_says_why_it_cannot_run_and_runs_once_per_split(start, workdir):
    off = start(models.scorer(workdir / "ro-v1.onnx", seed=0), "fraud", version="v1")
    code, body = off.admin("POST", "/admin/replay", {"requests": 10, "rate": 10})
    assert code == 409 and body["conflict"] == "ReplayOff" and "--replay-requests" in body["error"], body

    rt = start(models.scorer(workdir / "rr-v1.onnx", seed=0), "fraud", *RING, version="v1")
    code, body = rt.admin("POST", "/admin/replay", {"requests": 10, "rate": 0})
    assert code == 400 and "rate 0" in body["error"], body
    code, body = rt.admin("POST", "/admin/replay", {"requests": 10, "rate": 10})
    assert code == 409 and body["conflict"] == "NoBaseline" and "/admin/baseline" in body["error"], body
    fill(rt, seconds=1.0, rate=100)
    v2 = models.scorer(workdir / "rr-v2.onnx", seed=0)
    assert rt.admin("POST", "/admin/stage", {"version": "v2", "path": str(v2)})[0] == 200
    assert rt.admin("POST", "/admin/serve", {"version": "v2"})[0] == 200
    assert rt.admin("POST", "/admin/baseline", {"version": "v1", "fraction": 0.5})[0] == 200
    code, first = rt.admin("POST", "/admin/replay", {"requests": 40, "rate": 200})
    assert code == 200 and first["started"] and first["available"] >= 40, first
    assert first["replay"]["queued"] == 40, first
    code, again = rt.admin("POST", "/admin/replay", {"requests": 40, "rate": 200})
    assert code == 200 and not again["started"] and again["replay"]["queued"] == 40, again
    deadline = time.time() + 10
    while True:
        code, stats = rt.admin("GET", "/admin/stats")
        r = stats["baseline"]["replay"]
        if not r["running"] or time.time() > deadline:
            break
        time.sleep(0.1)
    assert not r["running"], r
    # Each kept request ran once on each version, and the same bytes answered the same.
    assert r["candidate"]["requests"] == r["baseline"]["requests"] == 40, r
    assert r["pairs"]["compared"] == r["pairs"]["agreed"] == 40 and r["pairs"]["maxAbsDeviation"] == 0.0, r
    # The live arms saw none of it.
    assert stats["baseline"]["candidate"]["requests"] + stats["baseline"]["baseline"]["requests"] == 0, stats

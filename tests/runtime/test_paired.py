"""The paired baseline with the real runtime and the real watcher (`kinfer-watcher run`
standalone): during the analysis the previous version answers a random half of the live
requests, and the verdict is a confidence interval over those same moments — a pass through a
load shift and a CPU hog, a rollback of a slower version, and an inconclusive hold when traffic is
too thin to say either."""
import json
import subprocess
import sys
import threading
import time

import models
from load import Load as UrlLoad
from test_watcher import Load, artifact, run_watcher, serving  # noqa: F401 - fixtures below
from test_watcher import s3, signing_key  # noqa: F401 - pytest fixtures

GATE = ["--golden", "golden.npz", "--atol", "1e-4", "--rtol", "1e-3"]


class Hog:
    """Busy processes beside the runtime (a noisy neighbour on this 2-core machine)."""

    def __init__(self, n=2):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()


def test_an_equivalent_version_passes_through_a_load_shift_and_a_cpu_hog(start, workdir, s3, signing_key):
    """The same bytes under another name. Three seconds into the analysis the load doubles and two
    busy processes start: a before/after comparison reads that as a regression, the paired one
    sees both versions slow down together and keeps the version."""
    priv, pub = signing_key
    rt = start(models.scorer(workdir / "eq-v1.onnx", seed=0), "fraud", version="v1")
    d = artifact(workdir, "eq-v2", lambda p: models.scorer(p, seed=0), sign_key=priv)
    src = s3.upload(d, "fraud/eq-v2")
    args = [*GATE, "--window", "10s", "--max-window", "60s"]
    extra, hogs = UrlLoad(rt.url("/v2/models/fraud/infer"), 100, seed=12), []

    def shift():
        while serving(rt)[0] != "eq-v2":
            time.sleep(0.05)
        time.sleep(3.0)
        extra.__enter__()
        hogs.append(Hog())

    with Load(rt, rate=100) as load:
        time.sleep(1.0)
        t = threading.Thread(target=shift, daemon=True)
        t.start()
        try:
            code, report, events, p = run_watcher(rt, workdir, s3, src, "eq-v2", *args, keys=[pub], timeout=150)
        finally:
            t.join(10)
            extra.__exit__(None, None, None)
            for h in hogs:
                h.stop()
    assert code == 0 and report["verdict"] == "Passed", (report, p.stderr[-3000:])
    assert hogs, "the load shift did not happen during the analysis"
    f = report["figures"]
    assert f["latencyRatioHigh"] <= 1.15 and f["baselineRequests"] >= 100, f
    assert report["message"].startswith("kept after"), report["message"]
    assert "at 95% confidence" in report["message"], report["message"]
    assert serving(rt)[0] == "eq-v2"
    assert load.failed == 0 and extra.failed == 0, (load.errors[:3], extra.errors[:3])


def test_a_version_half_again_as_slow_is_rolled_back(start, workdir, s3, signing_key):
    """v1 does ~0.6 ms of compute, the candidate ~0.9 ms (more layers of the same side chain):
    about 1.5× the request latency, rolled back on the interval of the ratio."""
    priv, pub = signing_key
    rt = start(models.scorer(workdir / "sl-v1.onnx", seed=0, slow_layers=10), "fraud", version="v1")
    d = artifact(workdir, "sl-v2", lambda p: models.scorer(p, seed=0, slow_layers=16), sign_key=priv)
    src = s3.upload(d, "fraud/sl-v2")
    with Load(rt, rate=100) as load:
        time.sleep(1.0)
        code, report, events, p = run_watcher(rt, workdir, s3, src, "sl-v2", *GATE, "--window", "10s",
                                              "--max-window", "60s", keys=[pub], timeout=150)
    assert code == 2, (report, p.stderr[-3000:])
    assert report["verdict"] == "RolledBack" and report["reason"] == "LatencyRegression", report
    f = report["figures"]
    assert 1.2 < f["latencyRatio"] < 2.0 and f["latencyRatioLow"] > 1.15, f
    assert serving(rt) == ("v1", ["v1"])
    assert load.failed == 0, load.errors[:3]


def test_thin_traffic_is_inconclusive_and_the_version_holds(start, workdir, s3, signing_key):
    """5 requests/s cannot give 100 requests per side within a 6 s maxWindow: the verdict is
    Inconclusive (exit 5), never a pass; the candidate keeps serving and the split ends."""
    priv, pub = signing_key
    rt = start(models.scorer(workdir / "th-v1.onnx", seed=0), "fraud", version="v1")
    d = artifact(workdir, "th-v2", lambda p: models.scorer(p, seed=0), sign_key=priv)
    src = s3.upload(d, "fraud/th-v2")
    with Load(rt, rate=5) as load:
        code, report, events, p = run_watcher(rt, workdir, s3, src, "th-v2", *GATE, "--window", "2s",
                                              "--max-window", "6s", keys=[pub])
    assert code == 5, (report, p.stderr[-3000:])
    assert report["verdict"] == "Inconclusive" and report["reason"] == "AnalysisInconclusive", report
    assert report["message"].startswith("no verdict after maxWindow 6 s"), report["message"]
    assert "100 needed on each" in report["message"], report["message"]
    assert "keeps serving on this pod and the rollout holds" in report["message"]
    assert any(e["reason"] == "AnalysisInconclusive" and e["type"] == "Warning" for e in events), events
    code, stats = rt.admin("GET", "/admin/stats")
    assert stats["serving"] == "th-v2" and stats["baseline"] is None, stats
    assert load.failed == 0, load.errors[:3]
    # A watcher that restarts with that report (what a pod keeps in kinfer.dev/analysis) keeps
    # the answer: the version it finds serving is not called passed.
    code, again, _, p = run_watcher(rt, workdir, s3, src, "th-v2", *GATE, "--window", "2s", "--max-window", "6s",
                                    "--last-report", json.dumps(report), keys=[pub])
    assert code == 5 and again["verdict"] == "Inconclusive", (again, p.stderr[-2000:])


def test_the_split_is_refused_with_reasons_and_ends_with_a_swap(start, workdir):
    """The admin contract: bad fractions are 400 with the range, the serving version cannot be
    its own baseline (409 BaselineServing), and any change of the serving version ends the split."""
    rt = start(models.scorer(workdir / "ad-v1.onnx", seed=0), "fraud", version="v1")
    v2 = models.scorer(workdir / "ad-v2.onnx", seed=0)
    code, _ = rt.admin("POST", "/admin/stage", {"version": "v2", "path": str(v2)})
    assert code == 200
    code, body = rt.admin("POST", "/admin/baseline", {"version": "v1", "fraction": 0.7})
    assert code == 400 and "between 0 and 0.5" in body["error"], body
    code, body = rt.admin("POST", "/admin/baseline", {"version": "v1", "fraction": 0.3})
    assert code == 409 and body["conflict"] == "BaselineServing", body
    code, _ = rt.admin("POST", "/admin/serve", {"version": "v2"})
    assert code == 200
    code, body = rt.admin("POST", "/admin/baseline", {"version": "v1", "fraction": 0.5, "pairRate": 1.0})
    assert code == 200 and body["baseline"]["baseline"]["version"] == "v1", body
    with Load(rt, rate=200) as load:
        time.sleep(2.0)
    code, stats = rt.admin("GET", "/admin/stats")
    b = stats["baseline"]
    n_c, n_b = b["candidate"]["requests"], b["baseline"]["requests"]
    assert n_c + n_b == load.ok and abs(n_c - n_b) < 0.2 * (n_c + n_b), b
    assert sum(x[2] for x in b["candidate"]["latency"]) == n_c, b
    # Same bytes: every pair agrees exactly.
    assert b["pairs"]["compared"] > 0.8 * load.ok and b["pairs"]["agreed"] == b["pairs"]["compared"], b
    assert b["pairs"]["maxAbsDeviation"] == 0.0, b
    assert load.versions.keys() == {"v1", "v2"}, load.versions
    code, _ = rt.admin("POST", "/admin/rollback", {"version": "v1"})
    assert code == 200
    code, stats = rt.admin("GET", "/admin/stats")
    assert stats["baseline"] is None, "a rollback ends the split"
    assert load.failed == 0, load.errors[:3]

"""Verdict quality (issue 16): how often each judge rolls back a version that is as good as the one
serving, and how often it catches one that is worse, on this machine under a load shift.

One kinfer-runtime (release, one intra-op thread) serves v1. Each trial serves a fresh copy of v1
alone for 8 s (what the before/after judge's baseline sees), then promotes a candidate
through the admin socket, as the watcher does — stage, snapshot the stats, serve, start the
paired baseline (`POST /admin/baseline`, fraction 0.5, pairRate 0.1) — while a load thread sends
100 requests/s of random single-row inputs. Halfway through the window a second load thread doubles
the rate and a busy process starts beside the runtime (the noisy neighbour). Every second the
runtime's stats are judged by `kinfer-watcher judge`, both judges on the same stats:

  paired        the candidate against the baseline's requests of the same moments (what kinfer
                does by default), looked at every 5 s as the watcher does;
  before/after  the candidate's requests against v1's figures from the seconds before the swap
                (`analysis.baseline.fraction: 0`, kinfer's judge before issue 16).

The first decision of each judge and its time are kept; the trial ends when both decided or at
maxWindow. Scenarios (candidates): `same` the same bytes under another name; `slow12` and `slow15`
about 1.2× and 1.5× the request latency (more layers of a side chain whose result is multiplied by
0; picked from each model's compute time plus the server's cost per request, and the ratio the
paired judge measured is in the summary); `errors` fails ~2% of requests (a
Gather out of range when an input is above a threshold: a model error, HTTP 500); `drift` a
small shift of one class's logit (about 9% of the decisions change; `drift.maxDisagreement` is 5%).

    python bench/verdict.py --bin $CARGO_TARGET_DIR/release --trials 20 [--scenarios same,slow12]

Writes bench-results/verdict.jsonl (one line per trial) and prints a summary table.
"""
import argparse
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import requests
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "runtime"))
import models  # noqa: E402  (tests/runtime/models.py: the scorer)

BASE_LAYERS = 10
RATE = 100
QUIET = 8.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def erroring(path, threshold):
    """The base scorer, plus a Gather at index 50 × (max(x) > threshold) from 8 values: out of
    range, so a model error, for the requests with an input above the threshold; otherwise the
    same outputs (the gathered value times a zero ONNX Runtime cannot fold away)."""
    m = onnx.load(str(models.scorer(path, seed=0, slow_layers=BASE_LAYERS)))
    g = m.graph
    g.initializer.extend([numpy_helper.from_array(np.array([threshold], np.float32), "thr"),
                          numpy_helper.from_array(np.arange(8, dtype=np.float32), "table"),
                          numpy_helper.from_array(np.array([50], np.int64), "fifty")])
    probs = g.output[0].name
    for n in g.node:
        n.output[:] = [o if o != probs else "probs_raw" for o in n.output]
    g.node.extend([
        helper.make_node("ReduceMax", ["x"], ["xmax"], keepdims=0),
        helper.make_node("Greater", ["xmax", "thr"], ["over"]),
        helper.make_node("Cast", ["over"], ["over_i"], to=TensorProto.INT64),
        helper.make_node("Mul", ["over_i", "fifty"], ["index"]),
        helper.make_node("Gather", ["table", "index"], ["picked"], axis=0),
        helper.make_node("Sub", ["xmax", "xmax"], ["zero_e"]),
        helper.make_node("Mul", ["picked", "zero_e"], ["xz"]),
        helper.make_node("Add", ["probs_raw", "xz"], [probs]),
    ])
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


class Load:
    """Fixed-rate single-row requests with random inputs (2,000 bodies), from a thread."""

    def __init__(self, url, rate, seed):
        rng = np.random.default_rng(seed)
        self.bodies = [json.dumps({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32",
                                               "data": rng.normal(size=8).astype(float).tolist()}]})
                       for _ in range(2000)]
        self.url, self.rate, self.ok, self.failed = url, rate, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        s = requests.Session()
        gap, nxt, i = 1.0 / self.rate, time.perf_counter(), random.randrange(2000)
        while not self.stop.is_set():
            try:
                r = s.post(self.url, data=self.bodies[i % 2000], timeout=5,
                           headers={"content-type": "application/json"})
                self.ok += r.status_code == 200
                self.failed += r.status_code != 200
            except requests.RequestException:
                self.failed += 1
            i += 1
            nxt += gap
            pause = nxt - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            else:
                nxt = time.perf_counter()

    def close(self):
        self.stop.set()
        self.thread.join(10)


class Runtime:
    def __init__(self, bin_dir, model, workdir):
        self.port = free_port()
        self.sock = str(workdir / f"admin-{self.port}.sock")
        self.log = open(workdir / "runtime.log", "w")
        self.proc = subprocess.Popen(
            [f"{bin_dir}/kinfer-runtime", "--listen", "127.0.0.1", "--model-name", "fraud", "--http-port",
             str(self.port), "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
             "--admin-socket", self.sock, "--intra-op-threads", "1", "--model", str(model),
             "--model-version", "v1"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if requests.get(self.url("/v2/health/ready"), timeout=0.5).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise RuntimeError("kinfer-runtime did not become ready")

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def admin(self, method, path, body=None):
        cmd = ["curl", "-sS", "--unix-socket", self.sock, "-X", method, f"http://localhost{path}"]
        if body is not None:
            cmd += ["-H", "content-type: application/json", "-d", json.dumps(body)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
        return json.loads(out) if out.strip() else None

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def judge(bin_dir, workdir, before, now, version, previous, elapsed, analysis):
    b, n = workdir / "before.json", workdir / "now.json"
    b.write_text(json.dumps(before))
    n.write_text(json.dumps(now))
    out = subprocess.run([f"{bin_dir}/kinfer-watcher", "judge", "--before", str(b), "--now", str(n), "--version",
                          version, "--previous", previous, "--elapsed", str(elapsed), "--analysis",
                          json.dumps(analysis)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def compute_ms(path, runs=3000):
    """Mean `session.run` time of one row in this process (one thread), for the calibration."""
    import onnxruntime as ort
    o = ort.SessionOptions()
    o.intra_op_num_threads = o.inter_op_num_threads = 1
    s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(1, 8)).astype(np.float32)
    for _ in range(200):
        s.run(None, {"x": x})
    t = time.perf_counter()
    for _ in range(runs):
        s.run(None, {"x": x})
    return (time.perf_counter() - t) / runs * 1e3


def trial(a, rt, workdir, scenario, i, model, analysis, window, max_window, base_model):
    """One promotion. The version serving before it is a fresh copy of v1 that served alone for
    QUIET seconds first, so the before/after judge's baseline is v1 under the base load only."""
    name, prev = f"{scenario}-{i}", f"{scenario}-{i}-base"
    rt.admin("POST", "/admin/stage", {"version": prev, "path": str(base_model)})
    rt.admin("POST", "/admin/serve", {"version": prev})
    for v in rt.admin("GET", "/admin/stats")["versions"]:
        if v != prev:
            rt.admin("POST", "/admin/unload", {"version": v})
    time.sleep(QUIET)
    rt.admin("POST", "/admin/stage", {"version": name, "path": str(model)})
    before = rt.admin("GET", "/admin/stats")
    rt.admin("POST", "/admin/serve", {"version": name})
    rt.admin("POST", "/admin/baseline", {"version": prev, "fraction": 0.5, "pairRate": 0.1})
    t0 = time.time()
    extra, hog = None, None
    got = {"paired": None, "beforeAfter": None}
    next_look = 5.0
    while True:
        time.sleep(1.0)
        t = time.time() - t0
        if extra is None and t >= window / 2:
            extra = Load(rt.url("/v2/models/fraud/infer"), RATE, seed=1000 + i)
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        now = rt.admin("GET", "/admin/stats")
        ans = judge(a.bin, workdir, before, now, name, prev, t, analysis)
        if got["beforeAfter"] is None and ans["beforeAfter"]["outcome"] != "Wait":
            got["beforeAfter"] = dict(ans["beforeAfter"], at=round(t, 1))
        if got["paired"] is None and t >= next_look:
            next_look += 5.0
            p = ans.get("paired") or {"outcome": "Wait"}
            if p["outcome"] != "Wait":
                got["paired"] = dict(p, at=round(t, 1), figures=now["baseline"] and {
                    "candidate": now["baseline"]["candidate"]["requests"],
                    "baseline": now["baseline"]["baseline"]["requests"]})
        if (got["paired"] and got["beforeAfter"]) or t >= max_window + 1:
            break
    if extra:
        extra.close()
    if hog:
        hog.kill()
        hog.wait()
    rt.admin("POST", "/admin/rollback", {"version": prev})
    for k in got:
        got[k] = got[k] or {"outcome": "Wait", "at": None, "message": "no decision within the trial"}
    return {"scenario": scenario, "trial": i, **got}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--scenarios", default="same,slow12,slow15,errors,drift")
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--max-window", type=float, default=60.0)
    ap.add_argument("--out", default=str(ROOT / "bench-results"))
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="kinfer-verdict-"))
    base = models.scorer(workdir / "v1.onnx", seed=0, slow_layers=BASE_LAYERS)
    # Calibration: the layers that make ~1.2× and ~1.5× v1's request latency here, from the
    # compute time of each model plus the server's own cost per request (the tiny scorer's p50).
    tiny = Runtime(a.bin, models.scorer(workdir / "tiny.onnx", seed=0), workdir)
    load = Load(tiny.url("/v2/models/fraud/infer"), RATE, seed=5)
    time.sleep(5)
    load.close()
    overhead = tiny.admin("GET", "/admin/stats")["versions"]["v1"]["stats"]["request"]["p50"] * 1e3
    tiny.stop()
    cands = {n: models.scorer(workdir / f"l{n}.onnx", seed=0, slow_layers=n) for n in range(BASE_LAYERS, 31)}
    cost = {n: overhead + compute_ms(p, runs=1000) for n, p in cands.items()}
    ratios = {n: cost[n] / cost[BASE_LAYERS] for n in cands}
    pick = {s: min(ratios, key=lambda n, t=t: abs(ratios[n] - t)) for s, t in (("slow12", 1.2), ("slow15", 1.5))}
    print(f"calibration: overhead {overhead:.3f} ms, v1 {cost[BASE_LAYERS]:.3f} ms per request; predicted "
          f"ratios {pick} -> {[round(ratios[pick[k]], 2) for k in pick]}", flush=True)
    base_p50 = cost[BASE_LAYERS] / 1e3
    rt = Runtime(a.bin, base, workdir)
    scenario_models = {
        "same": models.scorer(workdir / "same.onnx", seed=0, slow_layers=BASE_LAYERS),
        "slow12": cands[pick["slow12"]],
        "slow15": cands[pick["slow15"]],
        # P(max of 8 N(0,1) inputs > 2.805) ≈ 2%.
        "errors": erroring(workdir / "errors.onnx", 2.805),
        "drift": models.scorer(workdir / "drift.onnx", seed=0, slow_layers=BASE_LAYERS, logit_shift=0.15),
    }
    analysis = {"window": f"{a.window:g}s", "maxWindow": f"{a.max_window:g}s"}
    load = Load(rt.url("/v2/models/fraud/infer"), RATE, seed=1)
    time.sleep(5)
    results = []
    with open(out / "verdict.jsonl", "w") as f:
        f.write(json.dumps({"calibration": {"overhead_ms": overhead, "v1_ms": base_p50 * 1e3,
                                            "predicted": {k: ratios[pick[k]] for k in pick}, "picked": pick},
                            "rate": RATE, "window": a.window, "max_window": a.max_window,
                            "nproc": os.cpu_count(), "start": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
        for scenario in a.scenarios.split(","):
            spec = dict(analysis)
            if scenario == "drift":
                spec["drift"] = {"maxScore": 0.2, "maxDisagreement": 0.05}
            for i in range(a.trials):
                r = trial(a, rt, workdir, scenario, i, scenario_models[scenario], spec, a.window, a.max_window,
                          base)
                results.append(r)
                f.write(json.dumps(r) + "\n")
                f.flush()
                print(f"{scenario} {i}: paired {r['paired']['outcome']} at {r['paired']['at']} s · "
                      f"before/after {r['beforeAfter']['outcome']} at {r['beforeAfter']['at']} s", flush=True)
    load.close()
    rt.stop()
    print(summary(results, a.trials))


def summary(results, trials):
    rows = ["| scenario | judge | rolled back | passed | inconclusive / undecided | median time to verdict |"
            " median latency ratio measured |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for scenario in dict.fromkeys(r["scenario"] for r in results):
        for judge_name in ("paired", "beforeAfter"):
            rs = [r[judge_name] for r in results if r["scenario"] == scenario]
            fail = sum(x["outcome"] == "Fail" for x in rs)
            ok = sum(x["outcome"] == "Pass" for x in rs)
            rest = len(rs) - fail - ok
            times = [x["at"] for x in rs if x["at"] is not None]
            med = f"{statistics.median(times):.0f} s" if times else "—"
            est = [float(m.group(1)) for x in rs for m in [re.search(r"latency ([0-9.]+)×", x["message"])] if m]
            ratio = f"{statistics.median(est):.2f}" if est and judge_name == "paired" else ""
            rows.append(f"| {scenario} | {judge_name} | {fail}/{len(rs)} | {ok}/{len(rs)} | {rest}/{len(rs)} | {med} |"
                        f" {ratio} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()

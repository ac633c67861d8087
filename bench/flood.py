"""Peak memory under a flood of large bodies (issue 13): 16 parallel ~12 MB OIP JSON bodies
([1, 2,300,000] FP32 to a [batch, seq] model) against a release kinfer-runtime, at the default
in-flight budget and at 64 MiB. Reports the idle RSS, the peak (VmHWM) and the answers.

    python bench/flood.py --bin $CARGO_TARGET_DIR/release [--out bench-results]
"""
import argparse
import concurrent.futures as cf
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "runtime"))
import models  # noqa: E402

N, PARALLEL = 2_300_000, 16


def status_kb(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def post(url, body):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def flood(a, model, budget):
    flags = [] if budget is None else ["--max-inflight-bytes", str(budget)]
    proc = subprocess.Popen([f"{a.bin}/kinfer-runtime", "--model", str(model), "--model-name", "seq",
                             "--listen", "127.0.0.1", "--http-port", "18780", "--grpc-port", "18781",
                             "--metrics-port", "18790", "--intra-op-threads", "1",
                             "--max-request-rows", "64", *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen("http://127.0.0.1:18780/v2/health/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        x = np.random.default_rng(0).integers(0, 100, N).astype(np.float32)
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, N], "datatype": "FP32",
                                       "data": x.tolist()}]}, separators=(",", ":")).encode()
        idle = status_kb(proc.pid, "VmRSS")
        t = time.monotonic()
        with cf.ThreadPoolExecutor(PARALLEL) as pool:
            codes = list(pool.map(lambda _: post("http://127.0.0.1:18780/v2/models/seq/infer", body),
                                  range(PARALLEL)))
        row = {"budget_bytes": budget or 256 << 20, "body_bytes": len(body), "parallel": PARALLEL,
               "idle_rss_kb": idle, "peak_rss_kb": status_kb(proc.pid, "VmHWM"),
               "ok": codes.count(200), "shed_503": codes.count(503),
               "other": [c for c in codes if c not in (200, 503)], "seconds": round(time.monotonic() - t, 2)}
        print(json.dumps(row), flush=True)
        return row
    finally:
        proc.terminate()
        proc.wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--out", type=Path, default=ROOT / "bench-results")
    a = p.parse_args()
    a.out.mkdir(exist_ok=True)
    model = models.seq_model(a.out / "seq.onnx")
    with open(a.out / "flood.jsonl", "w") as f:
        for budget in (None, 64 << 20):
            f.write(json.dumps(flood(a, model, budget)) + "\n")


if __name__ == "__main__":
    main()

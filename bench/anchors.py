"""kinfer-runtime against the anchors, side by side in one run (issue 8).

For each model and each repetition, every contender is measured on the same pinned CPU (the server
on one core, the load generator `kinfer-bench` on the other) with the same OIP v2 JSON body:

  raw        in-process `session.run` loop through kinfer's session (the model's limit)
  bare       `kinfer-bench bare`: the same HTTP and gRPC stacks parsing every request into typed
             tensors with kinfer's decoders and answering a fixed tensor (the protocol's limit);
             with raw, the limit of any server that parses and runs: 1 / (1/bare + 1/raw)
  kinfer     kinfer-runtime over HTTP/JSON and gRPC, dynamic batching off and on
  fastapi    FastAPI + uvicorn + Python onnxruntime (bench/anchors/fastapi_server.py)
  kserve     KServe's Python ModelServer, REST v2 (bench/anchors/kserve_server.py)

Per contender: the saturation throughput (closed loop, 32 connections), then a sweep of fixed
request rates (open loop, coordinated-omission corrected) that stops at the first rate the server
cannot keep up with. Every run is one JSON line in bench-results/anchors-<mode>.jsonl.

    python bench/anchors.py --mode quick|full --bin $CARGO_TARGET_DIR/release --py .venv-bench/bin/python
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRV_CPU, CLI_CPU = ("1", "0") if (os.cpu_count() or 1) >= 2 else ("0", "0")
HTTP, GRPC, METRICS = 18580, 18581, 18590
CONNECTIONS = 32

# name -> (file, features, batching delay, sweep rates)
MODELS = {
    "small": ("mlp-64-256-256-2.onnx", 64, "500us",
              [500, 1000, 2000, 5000, 10000, 15000, 20000, 30000, 40000, 50000, 60000]),
    "large": ("mlp-512-2048-2048-2.onnx", 512, "2ms",
              [100, 200, 500, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 10000]),
    "minilm": ("minilm-l6-32.onnx", 32, "5ms", [5, 10, 20, 30, 50, 75, 100, 150, 200, 300]),
}
QUICK_RATES = {"small": [1000, 5000, 20000], "large": [200, 1000, 4000], "minilm": [10, 40]}
# The fixed rate (HTTP) after which the server-internal time is read from /admin/stats.
OVERHEAD_RATE = {"small": 2000, "large": 200, "minilm": 10}
# Input values are in [0, 1); MiniLM floors them into token ids.
VALUE_SCALE = {"minilm": 30000}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def wait_ready(url, proc, timeout=60.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.002)
    raise RuntimeError(f"{url} not ready after {timeout} s")


class Server:
    """A server process pinned to the server CPU; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, cmd, ready_url, logfile):
        self.log = open(logfile, "w")
        self.proc = subprocess.Popen(["taskset", "-c", SRV_CPU, *cmd], stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=ROOT)
        self.ready_s = wait_ready(ready_url, self.proc)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# The runtime container's environment as the operator sets it (glibc's fixed trim threshold, see
# docs/runtime.md "Memory across swaps").
KINFER_ENV = ["env", "MALLOC_TRIM_THRESHOLD_=4194304"]


def kinfer_cmd(a, model, name="mlp", batch=None, port=HTTP, extra=()):
    cmd = [*KINFER_ENV, f"{a.bin}/kinfer-runtime", "--model", str(model), "--model-name", name, "--listen",
           "127.0.0.1", "--http-port", str(port), "--grpc-port", str(port + 1), "--metrics-port",
           str(port + 10), "--intra-op-threads", "1", *extra]
    if batch:
        cmd += ["--max-batch-size", "32", "--max-queue-delay", batch]
    return cmd


def fastapi_cmd(a, model, port=HTTP):
    return [a.py, "bench/anchors/fastapi_server.py", "--model", str(model), "--name", "mlp",
            "--port", str(port)]


def kserve_cmd(a, model, port=HTTP):
    return [a.py, "bench/anchors/kserve_server.py", "--model_path", str(model), "--model_name",
            "mlp", "--http_port", str(port), "--grpc_port", str(port + 1)]


_SCALE = {}


def supports_value_scale(bin_dir):
    """Older kinfer-bench builds have no --value-scale: MiniLM then gets token id 0 everywhere,
    which costs the same compute (no attention mask, no data-dependent branches)."""
    if bin_dir not in _SCALE:
        h = subprocess.run([f"{bin_dir}/kinfer-bench", "http", "--help"], capture_output=True, text=True)
        _SCALE[bin_dir] = "--value-scale" in h.stdout
        if not _SCALE[bin_dir]:
            log("kinfer-bench has no --value-scale: MiniLM requests carry token id 0")
    return _SCALE[bin_dir]


def bench(a, proto, features, rate, seconds, warmup, label, port=HTTP, extra=(), connections=CONNECTIONS):
    if VALUE_SCALE.get(getattr(a, "current", None)) and supports_value_scale(a.bin):
        extra = (*extra, "--value-scale", str(VALUE_SCALE[a.current]))
    addr = f"127.0.0.1:{port + 1 if proto == 'grpc' else port}"
    cmd = ["taskset", "-c", CLI_CPU, f"{a.bin}/kinfer-bench", proto, "--addr", addr, "--model",
           "mlp", "--features", str(features), "--rate", str(rate), "--connections",
           str(connections), "--seconds", str(seconds), "--warmup", str(warmup), "--label", label,
           *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"kinfer-bench failed: {out.stderr.strip()}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if not rate:  # closed loop: the requests started in the window, over the window
        r["achieved_rps"] = r["requests"] / seconds
    return r


def keeps_up(r):
    return r["achieved_rps"] >= 0.95 * r["target_rps"] and r["unsent"] == 0 and r["errors"] == 0


class Run:
    def __init__(self, a):
        self.a = a
        self.res = open(a.out / f"anchors-{a.mode}.jsonl", "a")

    def emit(self, row, **meta):
        row = {**row, **meta, "mode_run": self.a.mode, "time": time.time(),
               "loadavg": os.getloadavg()[0]}
        self.res.write(json.dumps(row) + "\n")
        self.res.flush()
        log(f"  {row.get('contender', ''):22} {row.get('kind', ''):10} target={row.get('target_rps', 0):>7.0f} "
            f"rps={row['achieved_rps']:>8.0f} p50={row['p50_us']:>7} p99={row['p99_us']:>8} "
            f"p99.9={row['p999_us']:>8} err={row.get('errors', 0)} unsent={row.get('unsent', 0)}")

    def contender(self, meta, proto, features, rates, port=HTTP):
        a = self.a
        # Warm-up: a closed-loop run that is not recorded (JIT-free servers still fault in pages,
        # fill allocator caches and, for Python, warm the interpreter's caches).
        bench(a, proto, features, 0, a.warmup, 0, "warm-up", port)
        sat = bench(a, proto, features, 0, a.sat_seconds, 0.5, f"{meta['contender']} saturation", port)
        self.emit(sat, kind="saturation", **meta)
        for rate in rates:
            if rate > 1.5 * sat["achieved_rps"] and rate != rates[0]:
                break  # far past saturation: the open loop would only measure the backlog
            r = bench(a, proto, features, rate, a.seconds, 0.5, f"{meta['contender']} {rate}/s", port)
            self.emit(r, kind="sweep", **meta)
            if not keeps_up(r):
                break
        return sat

    def overhead(self, meta, sock):
        """Server-internal time from the runtime's own statistics: request span minus compute
        span (queue hand-off, wake-ups, output split), p50 and p99, over the server's life so far."""
        out = subprocess.run(["curl", "-s", "--unix-socket", str(sock), "localhost/admin/stats"],
                             capture_output=True, text=True)
        try:
            st = json.loads(out.stdout)
            v = st["versions"][st["serving"]]["stats"]
            r, c, q = v["request"], v["compute"], v.get("queue", {})
            self.emit({"achieved_rps": 0, "requests": r["count"], "errors": 0,
                       "p50_us": round((r["p50"] - c["p50"]) * 1e6),
                       "p99_us": round((r["p99"] - c["p99"]) * 1e6), "p999_us": 0,
                       "compute_p50_us": round(c["p50"] * 1e6), "compute_p99_us": round(c["p99"] * 1e6),
                       "request_p50_us": round(r["p50"] * 1e6), "request_p99_us": round(r["p99"] * 1e6),
                       "queue_p50_us": round(q.get("p50", 0) * 1e6), "queue_p99_us": round(q.get("p99", 0) * 1e6)},
                      kind="internal", **meta)
        except (ValueError, KeyError) as e:
            log(f"  no admin stats: {e}: {out.stdout[:200]}")

    def model(self, name, rep):
        a = self.a
        file, features, delay, rates = MODELS[name]
        if a.mode == "quick":
            rates = QUICK_RATES[name]
        path = a.out / file
        if not path.exists():
            log(f"model {name}: {path} missing, skipped")
            return
        base = {"model": name, "rep": rep}
        a.current = name
        log(f"== {name}, repetition {rep}")
        raw = subprocess.run(["taskset", "-c", SRV_CPU, f"{a.bin}/kinfer-bench", "raw", "--model",
                              str(path), "--features", str(features), "--seconds", str(a.sat_seconds)],
                             capture_output=True, text=True, cwd=ROOT, check=True)
        self.emit(json.loads(raw.stdout.strip().splitlines()[-1]), kind="raw",
                  contender="raw session.run", **base)
        bare = [f"{a.bin}/kinfer-bench", "bare", "--model", str(path), "--model-name", "mlp",
                "--http-port", str(HTTP), "--grpc-port", str(HTTP + 1)]
        with Server(bare, f"http://127.0.0.1:{HTTP}/v2/health/ready", a.out / "anchors-bare.log"):
            for proto in ("http", "grpc"):
                bench(a, proto, features, 0, a.warmup, 0, "warm-up")
                sat = bench(a, proto, features, 0, a.sat_seconds, 0.5, f"bare {proto} saturation")
                self.emit(sat, kind="saturation", contender=f"bare handler {proto}", **base)
        sock = a.out / "anchors-admin.sock"
        for batch in (None, delay):
            tag = f"batch 32/{batch}" if batch else "no batching"
            ready = f"http://127.0.0.1:{HTTP}/v2/health/ready"
            with Server(kinfer_cmd(a, path, batch=batch, extra=("--admin-socket", str(sock))), ready,
                        a.out / "anchors-server.log"):
                if not batch:
                    # First, on the fresh server: its own statistics after a moderate fixed rate.
                    bench(a, "http", features, OVERHEAD_RATE[name], a.seconds, 0.5, "internal")
                    self.overhead({**base, "contender": "kinfer internal (request - compute)",
                                   "target_rps": OVERHEAD_RATE[name]}, sock)
                for proto in ("http", "grpc"):
                    self.contender({**base, "contender": f"kinfer {proto}, {tag}"}, proto, features, rates)
        for anchor, cmd in (("fastapi", fastapi_cmd), ("kserve", kserve_cmd)):
            if anchor in a.skip:
                continue
            try:
                with Server(cmd(a, path), f"http://127.0.0.1:{HTTP}/v2/health/ready",
                            a.out / f"anchors-{anchor}.log"):
                    label = {"fastapi": "FastAPI + uvicorn + onnxruntime",
                             "kserve": "KServe ModelServer + onnxruntime"}[anchor]
                    self.contender({**base, "contender": label}, "http", features, rates)
            except RuntimeError as e:
                log(f"  {anchor} failed: {e}")
                self.emit({"achieved_rps": 0, "target_rps": 0, "p50_us": 0, "p99_us": 0, "p999_us": 0,
                           "error": str(e)}, kind="failed", contender=anchor, **base)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["quick", "full"], default="quick")
    p.add_argument("--bin", required=True, help="directory with kinfer-runtime and kinfer-bench")
    p.add_argument("--py", required=True, help="python of the venv with the anchors' packages")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results")
    p.add_argument("--models", default="small,large,minilm")
    p.add_argument("--skip", default="", help="comma-separated anchors to leave out")
    p.add_argument("--reps", type=int)
    a = p.parse_args()
    full = a.mode == "full"
    a.reps = a.reps or (3 if full else 1)
    a.seconds = 2.0 if full else 1.0      # measured seconds per fixed-rate point
    a.sat_seconds = 4.0 if full else 1.0  # closed loop and raw loop
    a.warmup = 2.0 if full else 1.0
    a.skip = set(filter(None, a.skip.split(",")))
    a.out.mkdir(exist_ok=True)
    (a.out / f"anchors-{a.mode}.jsonl").write_text("")
    run = Run(a)
    for rep in range(1, a.reps + 1):
        for name in a.models.split(","):
            run.model(name, rep)


if __name__ == "__main__":
    main()

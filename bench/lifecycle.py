"""Model lifecycle figures for issue 8, measured on the same pinned CPUs as bench/anchors.py:

  hotswap    N swaps (stage → promote → unload, through the admin socket) while kinfer-bench sends
             a fixed rate over HTTP: failed requests, latency of the requests that overlap a swap
             window against the steady ones, and RSS / round trip / server-internal overhead after
             many swaps against the start.
  cold       process start → /v2/health/ready for each model size (kinfer, FastAPI, KServe).
  rollback   POST /admin/rollback {"version"}: the admin call's latency and the time until the first request
             answered by the previous version.

Every figure is one JSON line in bench-results/lifecycle-<mode>.jsonl.

    python bench/lifecycle.py --mode quick|full --bin $CARGO_TARGET_DIR/release --py .venv-bench/bin/python
"""
import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import anchors  # noqa: E402  (same directory: pinning, server start-up, kinfer-bench runs)
from anchors import CLI_CPU, HTTP, ROOT, SRV_CPU, Server, log  # noqa: E402

RATE = 2000  # requests per second during the swaps, as the fixed-rate runtime figures


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


class AdminClient:
    def __init__(self, sock):
        self.conn = UnixHTTP(str(sock))

    def call(self, method, path, body=None):
        self.conn.request(method, path, body=json.dumps(body) if body is not None else None,
                          headers={"content-type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"{method} {path} -> {r.status}: {data[:300]!r}")
        return json.loads(data)

    def swap(self, serving, new, path):
        """Stage, promote, unload; returns the wall-clock times at the start and after each."""
        t = [time.time()]
        self.call("POST", "/admin/stage", {"version": new, "path": str(path)})
        t.append(time.time())
        self.call("POST", "/admin/promote", {"version": new})
        t.append(time.time())
        self.call("POST", "/admin/unload", {"version": serving})
        t.append(time.time())
        return t


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(values, q):
    if not values:
        return 0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Lifecycle:
    def __init__(self, a):
        self.a = a
        self.res = open(a.out / f"lifecycle-{a.mode}.jsonl", "w")

    def emit(self, **row):
        row = {**row, "time": time.time(), "loadavg": os.getloadavg()[0]}
        self.res.write(json.dumps(row) + "\n")
        self.res.flush()
        log("  " + json.dumps(row))

    def fixed(self, label, seconds):
        return anchors.bench(self.a, "http", 64, RATE, seconds, 0.5, label)

    def hotswap(self):
        a = self.a
        small, alt = a.out / "mlp-64-256-256-2.onnx", a.out / "mlp-64-256-256-2-seed1.onnx"
        sock = a.out / "lifecycle-admin.sock"
        under_load, total = (100, 1000) if a.mode == "full" else (20, 100)
        with Server(anchors.kinfer_cmd(a, small, extra=("--admin-socket", str(sock))),
                    f"http://127.0.0.1:{HTTP}/v2/health/ready", a.out / "lifecycle-server.log") as srv:
            admin = AdminClient(sock)
            anchors.bench(a, "http", 64, 0, 2.0, 0, "warm-up")
            before = self.fixed("before swaps", 3.0)
            rss0 = rss_kib(srv.proc.pid)
            internal0 = self.internal(admin)
            # One swap to time the cycle, so that the swaps under load spread over the run with
            # steady traffic between them.
            serving, k = "1", 1
            t = time.monotonic()
            admin.swap(serving, "2", alt)
            cycle = time.monotonic() - t
            serving, k = "2", 2
            seconds = 12.0 if a.mode == "full" else 5.0
            gap = max(0.01, (seconds - 3.0) / under_load - cycle)
            rec = a.out / "lifecycle-hotswap.csv"
            load = subprocess.Popen(
                ["taskset", "-c", CLI_CPU, f"{a.bin}/kinfer-bench", "http", "--addr", f"127.0.0.1:{HTTP}",
                 "--model", "mlp", "--features", "64", "--rate", str(RATE), "--connections", "32",
                 "--seconds", str(seconds), "--warmup", "1", "--label", "during swaps", "--record", str(rec)],
                stdout=subprocess.PIPE, text=True, cwd=ROOT)
            time.sleep(2.0)  # warm-up (1 s) and 1 s of steady traffic before the first swap
            windows = []
            for _ in range(under_load):
                k += 1
                windows.append(admin.swap(serving, str(k), small if k % 2 else alt))
                serving = str(k)
                time.sleep(gap)
            out, _ = load.communicate()
            during = json.loads(out.strip().splitlines()[-1])
            self.emit(kind="hotswap", swaps=under_load, rate=RATE, cycle_ms=round(cycle * 1e3, 2),
                      **self.windows(rec, windows), run=during)
            # The rest of the swaps without load, then the same fixed-rate run as at the start.
            t = time.monotonic()
            rss_by_swaps = [(1 + under_load, rss_kib(srv.proc.pid))]
            for i in range(total - under_load - 1):
                k += 1
                admin.swap(serving, str(k), small if k % 2 else alt)
                serving = str(k)
                if (k - 1) % 100 == 0:
                    rss_by_swaps.append((k - 1, rss_kib(srv.proc.pid)))
            swaps_s = time.monotonic() - t
            anchors.bench(a, "http", 64, 0, 1.0, 0, "warm-up")
            after = self.fixed(f"after {total} swaps", 3.0)
            rss1 = rss_kib(srv.proc.pid)
            internal1 = self.internal(admin)
            stats = admin.call("GET", "/admin/stats")
            self.emit(kind="swap-drift", swaps=stats.get("swaps"), rss_start_kib=rss0, rss_after_kib=rss1,
                      rss_ratio=round(rss1 / rss0, 3), before=before, after=after,
                      p50_ratio=round(after["p50_us"] / before["p50_us"], 3),
                      p99_ratio=round(after["p99_us"] / before["p99_us"], 3),
                      internal_before=internal0, internal_after=internal1,
                      swaps_per_s=round((total - under_load - 1) / swaps_s, 1),
                      rss_kib_by_swaps=rss_by_swaps)

    def internal(self, admin):
        st = admin.call("GET", "/admin/stats")
        v = st["versions"][st["serving"]]["stats"]
        r, c = v["request"], v["compute"]
        return {"p50_us": round((r["p50"] - c["p50"]) * 1e6), "p99_us": round((r["p99"] - c["p99"]) * 1e6)}

    @staticmethod
    def windows(rec, windows, margin_us=10_000):
        """Latency of requests in flight during a swap window (stage → unload done) against the
        steady ones (those at least `margin_us` away from every window); and, to tell the two
        apart, of those in flight during the staging (load + warm-up of the new session) and during
        promote + unload only."""
        spans = [tuple(int(x * 1e6) for x in w) for w in windows]  # start, staged, promoted, unloaded
        inside, stage, swap, steady, failed, i = [], [], [], [], 0, 0
        for line in open(rec):
            at, lat, ok = (int(x) for x in line.split(","))
            failed += ok == 0
            end = at + lat
            while i < len(spans) and spans[i][3] + margin_us < at:
                i += 1
            near = spans[max(0, i - 1):i + 2]
            if any(at <= w[3] and end >= w[0] for w in near):
                inside.append(lat)
                if any(at <= w[1] and end >= w[0] for w in near):
                    stage.append(lat)
                else:
                    swap.append(lat)
            elif all(end < w[0] - margin_us or at > w[3] + margin_us for w in near):
                steady.append(lat)
        swap_ms = [(w[3] - w[0]) * 1e3 for w in windows]
        stage_ms = [(w[1] - w[0]) * 1e3 for w in windows]
        return {"failed": failed, "in_window": len(inside), "steady": len(steady),
                "stage_ms_p50": round(statistics.median(stage_ms), 2),
                "in_stage": len(stage), "stage_p99_us": pct(stage, 0.99),
                "in_promote_unload": len(swap), "promote_unload_p99_us": pct(swap, 0.99),
                "window_p50_us": pct(inside, 0.5), "window_p99_us": pct(inside, 0.99),
                "window_p999_us": pct(inside, 0.999), "window_max_us": max(inside, default=0),
                "steady_p50_us": pct(steady, 0.5), "steady_p99_us": pct(steady, 0.99),
                "steady_p999_us": pct(steady, 0.999),
                "p99_ratio": round(pct(inside, 0.99) / max(1, pct(steady, 0.99)), 3),
                "swap_ms_p50": round(statistics.median(swap_ms), 2), "swap_ms_max": round(max(swap_ms), 2)}

    def cold(self):
        a = self.a
        reps = 3 if a.mode == "full" else 1
        models = [("small", "mlp-64-256-256-2.onnx"), ("8 MB", "mlp-512-1200-1200-2.onnx"),
                  ("large", "mlp-512-2048-2048-2.onnx"), ("minilm", "minilm-l6-32.onnx")]
        port = HTTP + 200
        for name, file in models:
            path = a.out / file
            if not path.exists():
                continue
            for server, cmd in (("kinfer", anchors.kinfer_cmd), ("fastapi", anchors.fastapi_cmd),
                                ("kserve", anchors.kserve_cmd)):
                if server in a.skip:
                    continue
                times = []
                for _ in range(reps):
                    t0 = time.monotonic()
                    s = Server(cmd(a, path, port=port), f"http://127.0.0.1:{port}/v2/health/ready",
                               a.out / f"cold-{server}.log")
                    times.append((time.monotonic() - t0) * 1e3)
                    s.stop()
                self.emit(kind="cold", model=name, server=server, bytes=path.stat().st_size,
                          ready_ms=round(statistics.median(times), 1), runs_ms=[round(t, 1) for t in times])

    def rollback(self):
        a = self.a
        small, alt = a.out / "mlp-64-256-256-2.onnx", a.out / "mlp-64-256-256-2-seed1.onnx"
        sock = a.out / "lifecycle-admin.sock"
        n = 20 if a.mode == "full" else 5
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                       "data": [((i * 7919) % 1000) / 1000 for i in range(64)]}]})
        with Server(anchors.kinfer_cmd(a, small, extra=("--admin-socket", str(sock))),
                    f"http://127.0.0.1:{HTTP}/v2/health/ready", a.out / "lifecycle-server.log"):
            admin = AdminClient(sock)
            admin.call("POST", "/admin/stage", {"version": "2", "path": str(alt)})
            admin.call("POST", "/admin/promote", {"version": "2"})
            client = http.client.HTTPConnection("127.0.0.1", HTTP, timeout=10)

            def version():
                client.request("POST", "/v2/models/mlp/infer", body=body,
                               headers={"content-type": "application/json"})
                return json.loads(client.getresponse().read())["model_version"]

            admin_ms, first_ms, polls = [], [], []
            for i in range(n):
                for _ in range(50):
                    version()  # the new version serving, connection warm
                new, old = ("2", "1") if i % 2 == 0 else ("1", "2")
                assert version() == new
                t0 = time.perf_counter()
                admin.call("POST", "/admin/rollback", {"version": old})
                t1 = time.perf_counter()
                tries = 1
                while version() != old:
                    tries += 1
                t2 = time.perf_counter()
                admin_ms.append((t1 - t0) * 1e3)
                first_ms.append((t2 - t0) * 1e3)
                polls.append(tries)
                # The rolled-back version stays loaded as previous: the next rollback names it,
                # measuring the other direction.
            self.emit(kind="rollback", n=n, admin_p50_ms=round(statistics.median(admin_ms), 3),
                      admin_max_ms=round(max(admin_ms), 3), first_old_p50_ms=round(statistics.median(first_ms), 3),
                      first_old_max_ms=round(max(first_ms), 3), requests_until_old_max=max(polls))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["quick", "full"], default="quick")
    p.add_argument("--bin", required=True)
    p.add_argument("--py", required=True)
    p.add_argument("--out", type=Path, default=ROOT / "bench-results")
    p.add_argument("--skip", default="")
    p.add_argument("--only", default="hotswap,cold,rollback")
    a = p.parse_args()
    a.skip = set(filter(None, a.skip.split(",")))
    lc = Lifecycle(a)
    for part in a.only.split(","):
        log(f"== {part}")
        getattr(lc, part)()


if __name__ == "__main__":
    main()

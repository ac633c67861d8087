"""The hot path against its limits and against an earlier build, side by side in one run.

On the same pinned server CPU (load generator on the other), for the tabular MLP 64 -> 256 ->
256 -> 2 with one row per request:

  raw        `kinfer-bench raw`: kinfer's session run in a tight loop (the model's limit)
  bare       `kinfer-bench bare`: kinfer's decoders and encoders on the same HTTP and gRPC stacks,
             a fixed answer (the protocol's limit); parse + run = 1 / (1/bare + 1/raw)
  kinfer     kinfer-runtime, batching off, over HTTP/JSON and gRPC, at 8 and 32 connections
  baseline   the same for other kinfer-runtime binaries (--baseline [LABEL=]PATH, repeatable: e.g.
             the build before a change), measured in the same run

Per server: saturation (closed loop), then a fixed rate at half the saturation of this binary
(coordinated-omission corrected) for p50/p99/p99.9, the server's own overhead at that rate from
/admin/stats of a fresh server (request span - compute span), and per request: server CPU time
and context switches (`perf stat -e task-clock,context-switches`) and system calls (`strace -c
-f`) over a fixed-rate run; then the bare handler at the same fixed rates, whose p99/p50 is what
the machine's scheduling alone gives a server on that core. Every figure is one JSON line in
bench-results/hotpath.jsonl; medians of --reps repetitions go to stdout as markdown.

    python bench/hotpath.py --bin $CARGO_TARGET_DIR/release [--baseline [LABEL=]/path/to/old/kinfer-runtime ...]

Needs `perf` (Debian: linux-perf) and `strace`; it says so and stops when either is missing.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import anchors  # noqa: E402

ROOT = anchors.ROOT
SRV_CPU, CLI_CPU = anchors.SRV_CPU, anchors.CLI_CPU
HTTP = 18680
FEATURES = 64
MODEL = "mlp-64-256-256-2.onnx"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def load(a, proto, rate, seconds, connections, warmup=0.5, port=HTTP):
    """kinfer-bench from the load CPU (anchors.bench: the same harness as `make bench`)."""
    return anchors.bench(a, proto, FEATURES, rate, seconds, warmup, proto, port=port,
                         connections=connections)


def admin_stats(sock):
    out = subprocess.run(["curl", "-s", "--unix-socket", str(sock), "localhost/admin/stats"],
                         capture_output=True, text=True)
    st = json.loads(out.stdout)
    return st["versions"][st["serving"]]["stats"]


def perf_per_request(a, pid, proto, rate, seconds):
    """Context switches and CPU time (µs, all threads) of the server per request over a
    fixed-rate run."""
    perf = subprocess.Popen(["perf", "stat", "-e", "context-switches,task-clock", "-p", str(pid), "-x", ","],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.2)
    r = load(a, proto, rate, seconds, 8, warmup=0)
    perf.send_signal(2)
    _, err = perf.communicate(timeout=30)
    n = max(1, r["requests"])
    m = re.search(r"^(\d+),,context-switches", err, re.M)
    c = re.search(r"^([\d.]+),msec,task-clock", err, re.M)
    return (int(m.group(1)) / n if m else None, float(c.group(1)) * 1e3 / n if c else None)


def syscalls(a, pid, proto, rate, seconds):
    """System calls of the server per request over a fixed-rate run (strace -c, all threads).
    strace slows the server; the counts, not the times, are what this reads."""
    st = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid)], stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    r = load(a, proto, rate, seconds, 8, warmup=0)
    st.send_signal(2)
    _, err = st.communicate(timeout=60)
    total = re.search(r"^[-\d.\s]*?100\.00\s+\S+\s+\S+\s+(\d+)\s+(?:\d+\s+)?total", err, re.M)
    calls = {}
    for line in err.splitlines():
        f = line.split()
        if len(f) >= 5 and f[0].replace(".", "").isdigit() and f[-1] != "total":
            try:
                calls[f[-1]] = int(f[3])
            except ValueError:
                pass
    n = max(1, r["requests"])
    return (int(total.group(1)) / n if total else None,
            {k: round(v / n, 2) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])[:6]})


def runtime(binary, model, sock, extra=()):
    cmd = [*anchors.KINFER_ENV, binary, "--model", str(model), "--model-name", "mlp", "--listen", "127.0.0.1", "--http-port",
           str(HTTP), "--grpc-port", str(HTTP + 1), "--metrics-port", str(HTTP + 10), "--intra-op-threads",
           "1", "--admin-socket", str(sock), *extra]
    return anchors.Server(cmd, f"http://127.0.0.1:{HTTP}/v2/health/ready", ROOT / "bench-results" / "hotpath-server.log")


def measure(a, out, label, binary, model, rep):
    sock = ROOT / "bench-results" / "hotpath-admin.sock"
    row = {"contender": label, "rep": rep}
    with runtime(binary, model, sock):
        load(a, "http", 0, 1.0, 32)  # warm-up
        for proto in ("http", "grpc"):
            for conns in (8, 32):
                r = load(a, proto, 0, a.seconds, conns)
                row[f"{proto}_sat_{conns}"] = r["achieved_rps"]
    for proto in ("http", "grpc"):
        # A fresh server per protocol: /admin/stats percentiles count since the version was
        # loaded, so they then hold only this fixed-rate run (and its warm-up, at the same rate).
        with runtime(binary, model, sock) as srv:
            half = max(100, int(row[f"{proto}_sat_8"] / 2))
            r = load(a, proto, half, a.seconds, 8)
            after = admin_stats(sock)
            row[f"{proto}_half_rate"] = half
            row[f"{proto}_half"] = {k: r[k] for k in ("achieved_rps", "p50_us", "p99_us", "p999_us")}
            row[f"{proto}_overhead"] = {
                "p50_us": round((after["request"]["p50"] - after["compute"]["p50"]) * 1e6, 1),
                "p99_us": round((after["request"]["p99"] - after["compute"]["p99"]) * 1e6, 1),
                "requests": after["request"]["count"]}
            row[f"{proto}_ctx_per_req"], row[f"{proto}_cpu_us_per_req"] = perf_per_request(
                a, srv.proc.pid, proto, half, 2.0)
            row[f"{proto}_syscalls_per_req"], row[f"{proto}_syscalls_top"] = syscalls(
                a, srv.proc.pid, proto, half, 2.0)
    # The protocol layer's own tail at the same rates: what this machine's scheduling gives a
    # server that only parses and answers (the reference for p99/p50).
    with bare_server(a, model):
        load(a, "http", 0, 1.0, 32)
        for proto in ("http", "grpc"):
            r = load(a, proto, row[f"{proto}_half_rate"], a.seconds, 8)
            row[f"{proto}_bare_half"] = {k: r[k] for k in ("achieved_rps", "p50_us", "p99_us", "p999_us")}
    out.write(json.dumps(row) + "\n")
    out.flush()
    log(json.dumps(row))
    return row


def bare_server(a, model):
    """`kinfer-bench bare` on the server CPU (the protocol layer's limit)."""
    bare = [f"{a.bin}/kinfer-bench", "bare", "--model", str(model), "--model-name", "mlp", "--http-port",
            str(HTTP), "--grpc-port", str(HTTP + 1)]
    return anchors.Server(bare, f"http://127.0.0.1:{HTTP}/v2/health/ready",
                          ROOT / "bench-results" / "hotpath-bare.log")


def limits(a, out, model, rep):
    raw = subprocess.run(["taskset", "-c", SRV_CPU, f"{a.bin}/kinfer-bench", "raw", "--model", str(model),
                          "--features", str(FEATURES), "--seconds", str(a.seconds)],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    row = {"contender": "limits", "rep": rep, "raw": json.loads(raw.stdout.strip().splitlines()[-1])["achieved_rps"]}
    with bare_server(a, model):
        load(a, "http", 0, 1.0, 32)
        for proto in ("http", "grpc"):
            for conns in (8, 32):
                row[f"bare_{proto}_{conns}"] = load(a, proto, 0, a.seconds, conns)["achieved_rps"]
    out.write(json.dumps(row) + "\n")
    out.flush()
    log(json.dumps(row))
    return row


def med(rows, key, sub=None):
    vals = [(r[key][sub] if sub else r[key]) for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")


def report(rows):
    lim = [r for r in rows if r["contender"] == "limits"]
    raw = med(lim, "raw")
    print(f"raw session.run: {raw:,.0f} runs/s ({1e6 / raw:.1f} µs per run)\n")
    print("| server | protocol | conns | req/s | bare handler | parse + run | % of parse + run |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for label in dict.fromkeys(r["contender"] for r in rows if r["contender"] != "limits"):
        rs = [r for r in rows if r["contender"] == label]
        for proto in ("http", "grpc"):
            for conns in (8, 32):
                bare = med(lim, f"bare_{proto}_{conns}")
                pr = 1 / (1 / bare + 1 / raw)
                v = med(rs, f"{proto}_sat_{conns}")
                print(f"| {label} | {proto} | {conns} | {v:,.0f} | {bare:,.0f} | {pr:,.0f} | {100 * v / pr:.0f}% |")
    print()
    print("| server | protocol | half load (req/s) | p50 | p99 | p99.9 | p99/p50 | bare p50 / p99 at that rate | bare p99/p50 | overhead p50 | overhead p99 | CPU / req | context switches / req | syscalls / req |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label in dict.fromkeys(r["contender"] for r in rows if r["contender"] != "limits"):
        rs = [r for r in rows if r["contender"] == label]
        for proto in ("http", "grpc"):
            p50, p99 = med(rs, f"{proto}_half", "p50_us"), med(rs, f"{proto}_half", "p99_us")
            bp50, bp99 = med(rs, f"{proto}_bare_half", "p50_us"), med(rs, f"{proto}_bare_half", "p99_us")
            print(f"| {label} | {proto} | {med(rs, f'{proto}_half_rate'):,.0f} | {p50:.0f} µs | {p99:.0f} µs | "
                  f"{med(rs, f'{proto}_half', 'p999_us'):.0f} µs | {p99 / p50:.1f} | "
                  f"{bp50:.0f} / {bp99:.0f} µs | {bp99 / bp50:.1f} | "
                  f"{med(rs, f'{proto}_overhead', 'p50_us'):.0f} µs | {med(rs, f'{proto}_overhead', 'p99_us'):.0f} µs | "
                  f"{med(rs, f'{proto}_cpu_us_per_req'):.1f} µs | "
                  f"{med(rs, f'{proto}_ctx_per_req'):.2f} | {med(rs, f'{proto}_syscalls_per_req'):.1f} |")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True, help="directory with kinfer-runtime and kinfer-bench (release)")
    p.add_argument("--baseline", action="append", default=[], metavar="[LABEL=]PATH",
                   help="another kinfer-runtime binary measured in the same run (repeatable; label "
                        "'baseline' unless given)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args()
    missing = [pkg for tool, pkg in (("perf", "linux-perf"), ("strace", "strace")) if not shutil.which(tool)]
    if missing and not a.report_only:
        sys.exit(f"hotpath.py counts context switches with perf and syscalls with strace: "
                 f"apt-get install {' '.join(missing)}")
    res = ROOT / "bench-results"
    res.mkdir(exist_ok=True)
    path = res / "hotpath.jsonl"
    if not a.report_only:
        subprocess.run([sys.executable, str(ROOT / "bench" / "models.py"), str(res)], check=True)
        model = res / MODEL
        with open(path, "w") as out:
            for rep in range(1, a.reps + 1):
                limits(a, out, model, rep)
                measure(a, out, "kinfer", f"{a.bin}/kinfer-runtime", model, rep)
                for b in a.baseline:
                    label, _, binary = b.rpartition("=")
                    measure(a, out, label or "baseline", binary, model, rep)
    report([json.loads(line) for line in open(path)])


if __name__ == "__main__":
    main()

"""Batching on against batching off, side by side in one run (issue 13).

kinfer-runtime without batching (`--max-batch-size 1`) and with `--max-batch-size 32` at the
default `--max-queue-delay 0s` (a worker batches what queued while it was busy, adding no
delay), on the small MLP (64 → 256 → 256 → 2) and the compute-bound one (512 → 2048 → 2048 → 2),
over HTTP/JSON and gRPC:

  closed loop   1, 8, 32 and 128 connections: throughput and p50/p99/p99.9, and the mean batch
                the server formed (from /admin/stats)
  fixed rate    half the unbatched 32-connection throughput, open loop with coordinated-omission
                correction: the latency each mode gives at the same load

Both servers on CPU 1 (side by side; each cell measured for both modes back to back), the load
generator on CPU 0 (taskset), one intra-op thread; every run is one JSON
line in bench-results/batching-<mode>.jsonl, and the table (medians of the repetitions, ratio
on/off per cell) goes to bench-results/batching-<mode>.md.

    python bench/batching.py --mode quick|full --bin $CARGO_TARGET_DIR/release
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import anchors  # noqa: E402  (Server, kinfer_cmd, bench: the same harness as the anchor runs)

ROOT = anchors.ROOT
CONNECTIONS = [1, 8, 32, 128]
MODELS = {"small": ("mlp-64-256-256-2.onnx", 64), "large": ("mlp-512-2048-2048-2.onnx", 512)}
MODES = {"off": (), "on": ("--max-batch-size", "32"), "aa": ()}
# "aa" is a second, identical unbatched server (an A/A control, small model only): its ratio to
# "off" is the run-to-run spread that any on/off ratio near 1 has to be read against.
AA_MODELS = {"small"}


def stats(sock):
    out = subprocess.run(["curl", "-s", "--unix-socket", str(sock), "localhost/admin/stats"],
                         capture_output=True, text=True)
    st = json.loads(out.stdout)
    v = st["versions"][st["serving"]]
    return v["stats"]["batches"], v["stats"]["mean_batch"] * v["stats"]["batches"], v["batching"]


def run(a, res):
    """Both servers are up side by side (the idle one costs nothing) and every cell is measured
    for both modes back to back, the order alternating between repetitions, so drift in the
    machine's load falls on both alike."""
    ports = {"off": anchors.HTTP, "on": anchors.HTTP + 100, "aa": anchors.HTTP + 200}

    def record(row):
        res.write(json.dumps(row) + "\n")
        res.flush()

    for rep in range(1, a.reps + 1):
        for name in a.models:
            modes = [m for m in MODES if m != "aa" or name in AA_MODELS]
            order = modes if rep % 2 else list(reversed(modes))
            file, features = MODELS[name]
            path = a.out / file
            servers, socks = {}, {}
            try:
                for mode in modes:
                    flags = MODES[mode]
                    socks[mode] = a.out / f"batching-{mode}.sock"
                    cmd = anchors.kinfer_cmd(a, path, port=ports[mode],
                                             extra=(*flags, "--admin-socket", str(socks[mode])))
                    servers[mode] = anchors.Server(
                        cmd, f"http://127.0.0.1:{ports[mode]}/v2/health/ready",
                        a.out / f"batching-{mode}.log")
                for proto in ("http", "grpc"):
                    for mode in order:
                        anchors.bench(a, proto, features, 0, a.warmup, 0, "warm-up",
                                      port=ports[mode], connections=32)
                    sat = {}
                    for conns in CONNECTIONS:
                        for mode in order:
                            b0, r0, batching = stats(socks[mode])
                            r = anchors.bench(a, proto, features, 0, a.seconds, 0.5,
                                              f"{name} {proto} {mode} {conns}",
                                              port=ports[mode], connections=conns)
                            b1, r1, _ = stats(socks[mode])
                            record({**r, "model": name, "proto": proto, "mode": mode, "kind": "closed",
                                    "connections": conns, "rep": rep, "batching": batching,
                                    "mean_batch": (r1 - r0) / max(b1 - b0, 1), "time": time.time()})
                            anchors.log(f"  {name:5} {proto:4} {mode:3} c={conns:<3} rps={r['achieved_rps']:>8.0f} "
                                        f"p50={r['p50_us']:>6} p99={r['p99_us']:>7} "
                                        f"batch={(r1 - r0) / max(b1 - b0, 1):.2f}")
                            sat[(mode, conns)] = r["achieved_rps"]
                    rate = sat[("off", 32)] / 2
                    for mode in (m for m in order if m != "aa"):
                        r = anchors.bench(a, proto, features, rate, a.seconds, 0.5,
                                          f"{name} {proto} {mode} {rate:.0f}/s",
                                          port=ports[mode], connections=32)
                        record({**r, "model": name, "proto": proto, "mode": mode, "kind": "fixed",
                                "connections": 32, "rep": rep, "time": time.time()})
                        anchors.log(f"  {name:5} {proto:4} {mode:3} {rate:.0f}/s p50={r['p50_us']} "
                                    f"p99={r['p99_us']} p99.9={r['p999_us']}")
            finally:
                for srv in servers.values():
                    srv.stop()


def med(rows, key):
    return statistics.median(r[key] for r in rows) if rows else 0


def ms(us):
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def table(rows, mode_run):
    lines = [f"Batching off (`--max-batch-size 1`) against on (`--max-batch-size 32`, default delay 0), "
             f"medians of {max((r['rep'] for r in rows), default=0)} repetitions ({mode_run} mode).", "",
             "| model | protocol | connections | off req/s | on req/s | on/off [per repetition] | A/A off/off | off p50 / p99 / p99.9 | on p50 / p99 / p99.9 | mean batch |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    worst = {}
    for name in MODELS:
        for proto in ("http", "grpc"):
            for conns in CONNECTIONS:
                sel = [r for r in rows if r["model"] == name and r["proto"] == proto
                       and r["connections"] == conns and r["kind"] == "closed"]
                off = [r for r in sel if r["mode"] == "off"]
                on = [r for r in sel if r["mode"] == "on"]
                aa = [r for r in sel if r["mode"] == "aa"]
                if not off or not on:
                    continue
                aa_ratio = f"{med(aa, 'achieved_rps') / max(med(off, 'achieved_rps'), 1):.2f}×" if aa else "—"
                ratio = med(on, "achieved_rps") / max(med(off, "achieved_rps"), 1)
                per_rep = [o["achieved_rps"] / max(f["achieved_rps"], 1) for o in on for f in off
                           if o["rep"] == f["rep"]]
                spread = f" [{min(per_rep):.2f}–{max(per_rep):.2f}]" if len(per_rep) > 1 else ""
                worst[(name, proto)] = min(worst.get((name, proto), ratio), ratio)
                lat = lambda rs: f"{ms(med(rs, 'p50_us'))} / {ms(med(rs, 'p99_us'))} / {ms(med(rs, 'p999_us'))}"
                lines.append(f"| {name} | {proto} | {conns} | {med(off, 'achieved_rps'):,.0f} | "
                             f"{med(on, 'achieved_rps'):,.0f} | {ratio:.2f}×{spread} | {aa_ratio} | {lat(off)} | {lat(on)} | "
                             f"{med(on, 'mean_batch'):.1f} |")
    lines += ["", "At a fixed rate of half the unbatched 32-connection throughput (open loop, "
              "coordinated omission corrected):", "",
              "| model | protocol | rate | off p50 / p99 / p99.9 | on p50 / p99 / p99.9 |", "| --- | --- | --- | --- | --- |"]
    for name in MODELS:
        for proto in ("http", "grpc"):
            sel = [r for r in rows if r["model"] == name and r["proto"] == proto and r["kind"] == "fixed"]
            off = [r for r in sel if r["mode"] == "off"]
            on = [r for r in sel if r["mode"] == "on"]
            if off and on:
                lines.append(f"| {name} | {proto} | {med(off, 'target_rps'):,.0f}/s | "
                             f"{ms(med(off, 'p50_us'))} / {ms(med(off, 'p99_us'))} / {ms(med(off, 'p999_us'))} | "
                             f"{ms(med(on, 'p50_us'))} / {ms(med(on, 'p99_us'))} / {ms(med(on, 'p999_us'))} |")
    lines += ["", "Lowest on/off ratio per model and protocol: " +
              ", ".join(f"{m} {p} {w:.2f}×" for (m, p), w in worst.items()) + "."]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["quick", "full"], default="quick")
    p.add_argument("--bin", required=True, help="directory with kinfer-runtime and kinfer-bench")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results")
    p.add_argument("--models", default="small,large")
    p.add_argument("--reps", type=int)
    p.add_argument("--report-only", action="store_true", help="re-render the table from the jsonl")
    a = p.parse_args()
    full = a.mode == "full"
    a.reps = a.reps or (3 if full else 1)
    a.seconds = 3.0 if full else 1.5
    a.warmup = 1.0
    a.models = a.models.split(",")
    a.out.mkdir(exist_ok=True)
    path = a.out / f"batching-{a.mode}.jsonl"
    if not a.report_only:
        with open(path, "w") as res:
            run(a, res)
    md = table([json.loads(line) for line in open(path)], a.mode)
    (a.out / f"batching-{a.mode}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()

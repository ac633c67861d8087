"""CPU pinning under a noisy neighbour (issue 21): the tail latency of a pinned and of an unpinned
kinfer-runtime, quiet and with a CPU hog beside them, in one run.

The CPU sets are the ones the kubelet gives on this 2-CPU node (tests/e2e/cluster, README item
10, checked thread by thread by the e2e's test_6b):

  pinned     `cpuPinning: true` under the static CPU manager: the runtime's container gets CPU 1
             alone (`--cpu-affinity auto --exclusive-cpus 1`, so its worker is pinned there) and
             every other container — the hog included — runs on the shared pool, CPU 0.
  unpinned   a node without the static CPU manager (or a service without cpuPinning): the runtime
             and the hog share both CPUs (0-1), as every container does there.

The hog is two busy processes (one per CPU of the pool it may use), started in the middle of
nothing: each case runs `quiet` (no hog) and `hog` (the hog running) back to back. The load
generator `kinfer-bench` sends a fixed rate (open loop, coordinated omission corrected) of
single-row OIP v2 JSON requests over 8 connections; it runs on CPU 0 at real-time priority
(`chrt -f 20`) so that the hog delays the servers, not the client measuring them (on a real node
it is another machine). The model is the compute-bound MLP 512 → 2048 → 2048 → 2 (one intra-op
thread), so a request is mostly compute that a hog can steal.

    python bench/pinning.py --bin $CARGO_TARGET_DIR/release [--reps 3] [--seconds 20] [--rate 400]

Writes bench-results/pinning.jsonl (one line per measurement) and prints the medians per case.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from anchors import log, wait_ready  # bench/anchors.py: the same helpers

ROOT = Path(__file__).resolve().parent.parent
MODEL = "mlp-512-2048-2048-2.onnx"
FEATURES = 512
PORT = 18680
# (cpus of the runtime, extra runtime flags, cpus of the hog)
CASES = {
    "pinned": ("1", ["--cpu-affinity", "auto", "--exclusive-cpus", "1"], "0"),
    "unpinned": ("0-1", [], "0-1"),
}
HOG_PROCS = 2


def start_runtime(a, cpus, flags, logfile):
    cmd = ["taskset", "-c", cpus, f"{a.bin}/kinfer-runtime", "--model", str(a.models / MODEL),
           "--model-name", "mlp", "--listen", "127.0.0.1", "--http-port", str(PORT), "--grpc-port",
           str(PORT + 1), "--metrics-port", str(PORT + 10), "--intra-op-threads", "1", *flags]
    p = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT)
    wait_ready(f"http://127.0.0.1:{PORT}/v2/health/ready", p)
    return p


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def hog(cpus):
    return [subprocess.Popen(["taskset", "-c", cpus, sys.executable, "-c", "while True: pass"])
            for _ in range(HOG_PROCS)]


def load(a, label):
    cmd = ["chrt", "-f", "20", "taskset", "-c", "0", f"{a.bin}/kinfer-bench", "http", "--addr",
           f"127.0.0.1:{PORT}", "--model", "mlp", "--features", str(FEATURES), "--rate", str(a.rate),
           "--connections", "8", "--seconds", str(a.seconds), "--warmup", "2", "--label", label]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"kinfer-bench failed: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", required=True, help="directory with kinfer-runtime and kinfer-bench")
    p.add_argument("--models", type=Path, default=ROOT / "bench-results", help="where bench/models.py wrote the models")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rate", type=float, default=400.0)
    a = p.parse_args()
    if (os.cpu_count() or 1) < 2:
        sys.exit("the pinning benchmark needs 2 CPUs (one exclusive, one shared pool)")
    if not (a.models / MODEL).exists():
        sys.exit(f"{a.models / MODEL} is missing: run `python bench/models.py {a.models}` first")
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(a.out / "pinning.jsonl", "w") as sink, open(a.out / "pinning-runtime.log", "w") as rlog:
        for rep in range(a.reps):
            for case, (cpus, flags, hog_cpus) in CASES.items():
                rt = start_runtime(a, cpus, flags, rlog)
                try:
                    for phase in ("quiet", "hog"):
                        hogs = hog(hog_cpus) if phase == "hog" else []
                        try:
                            time.sleep(1.0 if hogs else 0)
                            r = load(a, f"{case}-{phase}")
                        finally:
                            for h in hogs:
                                h.kill()
                                h.wait()
                        r.update(case=case, phase=phase, rep=rep, runtime_cpus=cpus, hog_cpus=hog_cpus)
                        sink.write(json.dumps(r) + "\n")
                        sink.flush()
                        rows.append(r)
                        log(f"rep {rep} {case:8} {phase:5} p50 {r['p50_us']} µs p99 {r['p99_us']} µs "
                            f"p99.9 {r['p999_us']} µs  {r['achieved_rps']:.0f}/{a.rate:.0f} req/s, {r['errors']} errors")
                finally:
                    stop(rt)

    def med(case, phase, key):
        return statistics.median(r[key] for r in rows if r["case"] == case and r["phase"] == phase)

    print(f"| case | phase | p50 | p99 | p99.9 | achieved req/s |  ({a.reps} reps, {a.seconds:.0f} s at {a.rate:.0f} req/s, medians)")
    print("| --- | --- | --- | --- | --- | --- |")
    for case in CASES:
        for phase in ("quiet", "hog"):
            print(f"| {case} | {phase} | {med(case, phase, 'p50_us')} µs | {med(case, phase, 'p99_us')} µs | "
                  f"{med(case, phase, 'p999_us')} µs | {med(case, phase, 'achieved_rps'):.0f} |")
    pq, ph, uh = med("pinned", "quiet", "p99_us"), med("pinned", "hog", "p99_us"), med("unpinned", "hog", "p99_us")
    print(f"pinned p99 with the hog / quiet: {ph / pq:.2f} (goal <= 1.5); "
          f"pinned / unpinned p99 with the hog: {ph / uh:.2f} (goal < 1)")


if __name__ == "__main__":
    main()

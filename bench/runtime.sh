#!/usr/bin/env bash
# Runtime figures for docs/benchmarks.md, all measured in one run on this machine:
#   raw session.run (the limit) · kinfer-runtime HTTP and gRPC loopback round trip at a fixed rate
#   (coordinated omission corrected) · saturation throughput without and with dynamic batching.
# The server is pinned to CPU 1 and the load generator to CPU 0 (taskset), 1 intra-op thread.
# Usage: bench/runtime.sh [quick|full]   → bench-results/runtime-<mode>.jsonl, medians printed.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-quick}"
reps=3; secs=5; rate=2000
[[ $mode == quick ]] && { reps=1; secs=2; }
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/fetch-onnxruntime.sh)}"
scripts/setup-venv.sh
cargo build -q --release -p kinfer-runtime
bin="${CARGO_TARGET_DIR:-target}/release"
out=bench-results; mkdir -p "$out"; res="$out/runtime-$mode.jsonl"; : > "$res"
model="$out/mlp-64-256-256-2.onnx"
large="$out/mlp-512-2048-2048-2.onnx"
cold="$out/mlp-512-1200-1200-2.onnx"   # ~8 MB of weights, for the cold-start figure
.venv/bin/python -c "import sys; sys.path.insert(0, 'tests/runtime'); import models; models.bench_mlp('$model'); models.bench_mlp('$large', features=512, hidden=2048); models.bench_mlp('$cold', features=512, hidden=1200)"
srv_cpu=1; cli_cpu=0
[[ $(nproc) -lt 2 ]] && { srv_cpu=0; cli_cpu=0; }

start_server() { # model extra-flags...
  local m=$1; shift
  taskset -c $srv_cpu $bin/kinfer-runtime --model "$m" --model-name mlp --listen 127.0.0.1 \
    --http-port 18580 --grpc-port 18581 --metrics-port 18590 --intra-op-threads 1 "$@" >"$out/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf localhost:18580/v2/health/ready >/dev/null && return; sleep 0.05; done
  echo "server did not start"; cat "$out/server.log"; exit 1
}
stop_server() { kill "$pid"; wait "$pid" || true; }
load() { taskset -c $cli_cpu $bin/kinfer-bench "$@" --model mlp --seconds "$secs" | tee -a "$res"; }

# Process start -> /v2/health/ready, polled every ~2 ms (an upper bound by the poll interval).
cold_start() {
  local t0 t1
  t0=$(date +%s%N)
  taskset -c $srv_cpu $bin/kinfer-runtime --model "$cold" --model-name cold --listen 127.0.0.1 \
    --http-port 18680 --grpc-port 18681 --metrics-port 18690 --intra-op-threads 1 >"$out/cold.log" 2>&1 &
  local p=$!
  until curl -sf localhost:18680/v2/health/ready >/dev/null 2>&1; do sleep 0.002; done
  t1=$(date +%s%N)
  kill $p; wait $p || true
  printf '{"label":"cold start, %s MB model","mode":"cold","achieved_rps":0,"requests":1,"errors":0,"p50_us":%d,"p90_us":0,"p99_us":0,"p999_us":0}\n' \
    "$(( $(stat -c %s "$cold") / 1000000 ))" $(( (t1 - t0) / 1000 )) | tee -a "$res"
}

for rep in $(seq "$reps"); do
  cold_start
  taskset -c $srv_cpu $bin/kinfer-bench raw --model "$model" --features 64 --seconds "$secs" | tee -a "$res"
  start_server "$model" --admin-socket "$out/admin.sock"
  load http --addr 127.0.0.1:18580 --features 64 --rate $rate --connections 4 --label "http fixed ${rate}/s"
  # Server-internal time for the same requests: request span (after the body is decoded, until
  # the outputs are back) minus the compute span (session.run) — queue hand-off and wake-ups.
  curl -s --unix-socket "$out/admin.sock" localhost/admin/stats | .venv/bin/python -c '
import json, sys
v = json.load(sys.stdin)["versions"]["1"]["stats"]
r, c = v["request"], v["compute"]
print(json.dumps({"label": "server-internal overhead (request - compute span)", "mode": "server", "achieved_rps": 0, "requests": r["count"], "errors": 0,
                  "p50_us": round((r["p50"] - c["p50"]) * 1e6), "p90_us": 0, "p99_us": round((r["p99"] - c["p99"]) * 1e6), "p999_us": 0}))' | tee -a "$res"
  load grpc --addr 127.0.0.1:18581 --features 64 --rate $rate --connections 4 --label "grpc fixed ${rate}/s"
  load http --addr 127.0.0.1:18580 --features 64 --rate 0 --connections 32 --label "http saturation, no batching"
  load grpc --addr 127.0.0.1:18581 --features 64 --rate 0 --connections 32 --label "grpc saturation, no batching"
  stop_server
  start_server "$model" --max-batch-size 32 --max-queue-delay 500us
  load http --addr 127.0.0.1:18580 --features 64 --rate 0 --connections 32 --label "http saturation, batching 32/500us"
  load grpc --addr 127.0.0.1:18581 --features 64 --rate 0 --connections 32 --label "grpc saturation, batching 32/500us"
  stop_server
  # A compute-bound model: 512 -> 2048 -> 2048 -> 2 (about 5 MFLOP per row).
  taskset -c $srv_cpu $bin/kinfer-bench raw --model "$large" --features 512 --seconds "$secs" | tee -a "$res"
  start_server "$large"
  load grpc --addr 127.0.0.1:18581 --features 512 --rate 0 --connections 32 --label "large: grpc saturation, no batching"
  stop_server
  start_server "$large" --max-batch-size 32 --max-queue-delay 2ms
  load grpc --addr 127.0.0.1:18581 --features 512 --rate 0 --connections 32 --label "large: grpc saturation, batching 32/2ms"
  stop_server
done

.venv/bin/python - "$res" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by, raw_seen = {}, 0
for r in rows:
    label = r["label"]
    if label == "raw session.run":
        raw_seen += 1
        label = "raw session.run (small)" if raw_seen % 2 else "large: raw session.run"
    by.setdefault(label, []).append(r)
print(f"\n{'run':40} {'n':>2} {'rps':>9} {'p50 µs':>8} {'p99 µs':>8} {'p99.9 µs':>9} {'errors':>6}")
for label, rs in by.items():
    med = lambda k: statistics.median(x[k] for x in rs)
    print(f"{label:40} {len(rs):>2} {med('achieved_rps'):>9.0f} {med('p50_us'):>8.0f} {med('p99_us'):>8.0f} {med('p999_us'):>9.0f} {sum(x['errors'] for x in rs):>6}")
PY

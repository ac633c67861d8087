#!/usr/bin/env bash
# Where the server's CPU goes at saturation: `perf record` on kinfer-runtime (pinned to CPU 1)
# while kinfer-bench drives a closed loop from CPU 0. One profile per case, summarised by shared
# object (kinfer code · ONNX Runtime · kernel · libc) and by symbol, into
# bench-results/profile-<case>.txt. Needs `perf` (apt-get install linux-perf, or linux-tools).
# Usage: bench/profile.sh [seconds]     (after bench/all.sh has built the binaries and the models)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/fetch-onnxruntime.sh)}"
bin="${CARGO_TARGET_DIR:-target}/release"
out=bench-results
command -v perf >/dev/null || { echo "perf is not installed" >&2; exit 1; }

profile() { # case model features proto server-flags...
  local case=$1 model=$2 features=$3 proto=$4; shift 4
  taskset -c 1 "$bin/kinfer-runtime" --model "$out/$model" --model-name mlp --listen 127.0.0.1 \
    --http-port 18980 --grpc-port 18981 --metrics-port 18990 --intra-op-threads 1 "$@" >"$out/profile-server.log" 2>&1 &
  local pid=$!
  until curl -sf localhost:18980/v2/health/ready >/dev/null 2>&1; do sleep 0.01; done
  local port=18980; [[ $proto == grpc ]] && port=18981
  taskset -c 0 "$bin/kinfer-bench" "$proto" --addr 127.0.0.1:$port --model mlp --features "$features" \
    --rate 0 --connections 32 --seconds $((secs + 2)) --warmup 1 --label "$case" >"$out/profile-$case.json" &
  local load=$!
  sleep 1.5
  perf record -q -F 1999 -g -p "$pid" -o "$out/profile-$case.data" -- sleep "$secs" 2>/dev/null
  wait $load
  kill "$pid"; wait "$pid" || true
  set +o pipefail  # `head` closes the pipe early
  {
    echo "# $case: $(cat "$out/profile-$case.json")"
    echo "# load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "## by shared object"
    perf report -i "$out/profile-$case.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -10
    echo "## top symbols"
    perf report -i "$out/profile-$case.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40
  } > "$out/profile-$case.txt"
  set -o pipefail
  echo "wrote $out/profile-$case.txt"
}

profile small-http mlp-64-256-256-2.onnx 64 http
profile small-grpc mlp-64-256-256-2.onnx 64 grpc
profile large-grpc mlp-512-2048-2048-2.onnx 512 grpc

#!/usr/bin/env bash
# Every benchmark figure of docs/benchmarks.md in one run (issue 8), then the report:
#   bench/anchors.py    raw session.run · kinfer-runtime HTTP/gRPC, batching off/on · FastAPI ·
#                       KServe — saturation and a fixed-rate sweep per model, N repetitions
#   bench/batching.py   batching on (default delay 0) against off at 1, 8, 32, 128 connections
#   bench/flood.py      peak RSS under 16 parallel 12 MB bodies (the in-flight byte budget)
#   bench/lifecycle.py  hot swap under load, 1,000 swaps drift, cold start per model, rollback
#   bench/verdict.py    verdict quality: false rollbacks and detections of the paired and the
#                       before/after judge under a load shift and a CPU hog (20 trials per case in
#                       full mode, 3 in quick)
#   bench/pinning.py    CPU pinning: p50/p99/p99.9 of a pinned and an unpinned runtime, quiet and
#                       with a CPU hog beside them (the CPU sets of the static CPU manager)
#   bench/report.py     markdown tables (bench-results/report-<mode>.md, and the generated part of
#                       docs/benchmarks.md) and the PNG plots in docs/bench/
# Servers run on CPU 1, the load generator and the drivers on CPU 0 (taskset), ONNX Runtime with
# one intra-op thread everywhere.
# Usage: bench/all.sh [quick|full]   quick: 1 short repetition (CI-sized); full: 3 repetitions.
# BENCH_MODELS=small,large,minilm and BENCH_SKIP=fastapi,kserve narrow a run.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-quick}"
[[ $mode == quick || $mode == full ]] || { echo "usage: bench/all.sh [quick|full]" >&2; exit 2; }
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/fetch-onnxruntime.sh)}"
bench/setup-venv.sh
# BENCH_BUILD=0 uses the release binaries already built (another build may hold cargo's lock).
[[ ${BENCH_BUILD:-1} == 0 ]] || cargo build -q --release -p kinfer-runtime -p kinfer-watcher
bin="${CARGO_TARGET_DIR:-target}/release"
py=.venv-bench/bin/python
out=bench-results; mkdir -p "$out"
cli_cpu=0

# The models (generated, no downloads) — see bench/models.py.
$py bench/models.py "$out"

{
  echo "mode=$mode start=$(date -Is) nproc=$(nproc) uptime: $(uptime)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  echo "kernel: $(uname -r)  rustc: $(rustc --version)  python: $($py --version 2>&1)"
  echo "rustc processes at start: $(pgrep -c rustc || true)"
} > "$out/conditions-$mode.txt"
taskset -c $cli_cpu $py bench/anchors.py --mode "$mode" --bin "$bin" --py "$py" \
  --models "${BENCH_MODELS:-small,large,minilm}" --skip "${BENCH_SKIP:-}"
taskset -c $cli_cpu $py bench/batching.py --mode "$mode" --bin "$bin"
taskset -c $cli_cpu $py bench/flood.py --bin "$bin"
taskset -c $cli_cpu $py bench/lifecycle.py --mode "$mode" --bin "$bin" --py "$py" --skip "${BENCH_SKIP:-}"
# Unpinned on purpose: the noisy neighbour must be able to land on the runtime's core.
$py bench/verdict.py --bin "$bin" --trials "$([[ $mode == full ]] && echo 20 || echo 3)" --out "$out"
# Pinned on the CPU sets the static CPU manager gives (CPU 1 alone) against unpinned, with a hog.
$py bench/pinning.py --bin "$bin" --models "$out" --out "$out" \
  $([[ $mode == full ]] && echo "--reps 3 --seconds 20" || echo "--reps 1 --seconds 8")
echo "end=$(date -Is) uptime: $(uptime)" >> "$out/conditions-$mode.txt"
$py bench/report.py --mode "$mode"

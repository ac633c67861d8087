# kinfer — the two commands a newcomer needs are `make demo` and `make test` (see README.md).
# Everything a target needs is installed by the project's scripts, idempotently, and cached under
# ~/.cache/kinfer (ONNX Runtime, Kubernetes binaries) and .venv (Python packages).

SHELL := /bin/bash
ORT_VERSION ?= 1.31.1
KINFER_CACHE ?= $(HOME)/.cache/kinfer
# The runtime finds ONNX Runtime through ORT_DYLIB_PATH (or --ort-lib), as a user's would.
export ORT_DYLIB_PATH ?= $(KINFER_CACHE)/onnxruntime/$(ORT_VERSION)/libonnxruntime.so.$(ORT_VERSION)
export KINFER_VENV ?= $(CURDIR)/.venv
CARGO ?= cargo

include tests/e2e/cluster/cluster.mk

.PHONY: help deps s3 ort venv build crds fmt-check clippy docs unit test test-rust test-runtime test-cluster demo bench

help:
	@echo "make test      - everything CI runs: fmt, clippy, docs, Rust tests (real ONNX Runtime), cluster tier"
	@echo "make demo      - the main job end to end on a local cluster (arrives with issue 7)"
	@echo "make crds      - regenerate crds/ from crates/api"
	@echo "make cluster-up / cluster-down - the local single-node Kubernetes cluster"

deps: ort venv s3

# SeaweedFS (the S3 server) for the watcher's fetch tests; cached like the cluster binaries.
s3:
	@bash tests/e2e/cluster/build.sh s3 >/dev/null

ort:
	@ORT_VERSION=$(ORT_VERSION) KINFER_CACHE=$(KINFER_CACHE) scripts/fetch-onnxruntime.sh >/dev/null

venv:
	@scripts/setup-venv.sh

build:
	$(CARGO) build --workspace --all-targets

crds:
	$(CARGO) run -q -p kinfer-api --bin crdgen -- crds

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

docs:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc -q -p kinfer-api --no-deps

test-rust: deps
	PATH="$(KINFER_VENV)/bin:$$PATH" $(CARGO) test --workspace

# Runtime tier: real kinfer-runtime processes, real ONNX Runtime, real tritonclient (HTTP + gRPC).
test-runtime: deps
	$(CARGO) build -p kinfer-runtime
	$(KINFER_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/runtime

# The cluster tier needs root (containerd, kubelet, iptables); CI runs as root.
test-cluster: cluster-build
	$(MAKE) cluster-test

test: fmt-check clippy docs test-rust test-runtime test-cluster

demo:
	@echo "make demo arrives with issue 7 (helm chart, images, end-to-end story)."
	@echo "Today: 'make cluster-up' starts the local cluster and 'kubectl apply -f crds/ -f examples/' works against it."
	@exit 1

# BENCH=quick (one short repetition) or full (3 repetitions, medians) — see docs/benchmarks.md.
BENCH ?= full
bench: deps
	bench/runtime.sh $(BENCH)

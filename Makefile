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

.PHONY: help deps s3 jaeger ort venv build crds images fmt-check clippy docs unit test test-rust test-runtime test-cluster test-operator test-chart test-rules test-e2e demo bench

help:
	@echo "make test      - everything CI runs: fmt, clippy, docs, Rust tests (real ONNX Runtime), cluster tier"
	@echo "make demo      - the main job end to end on a local cluster (left running; make cluster-down)"
	@echo "make crds      - regenerate crds/ from crates/api"
	@echo "make cluster-up / cluster-down - the local single-node Kubernetes cluster"

deps: ort venv s3

# SeaweedFS (the S3 server) for the watcher's fetch tests; cached like the cluster binaries.
s3:
	@bash tests/e2e/cluster/build.sh s3 >/dev/null

# Jaeger (a real OTLP collector for the runtime tier's tracing tests); cached like the cluster binaries.
jaeger:
	@bash tests/e2e/cluster/build.sh jaeger >/dev/null

ort:
	@ORT_VERSION=$(ORT_VERSION) KINFER_CACHE=$(KINFER_CACHE) scripts/fetch-onnxruntime.sh >/dev/null

venv:
	@scripts/setup-venv.sh

build:
	$(CARGO) build --workspace --all-targets

crds:
	$(CARGO) run -q -p kinfer-api --bin crdgen -- crds
	charts/kinfer-operator/sync-crds.sh

# The three container images (podman, local Debian base, no registry): images/README.md.
images:
	images/build.sh

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

docs:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc -q -p kinfer-api -p kinfer-contract --no-deps

test-rust: deps
	PATH="$(KINFER_VENV)/bin:$$PATH" $(CARGO) test --workspace

# Runtime tier: real kinfer-runtime processes, real ONNX Runtime, real tritonclient (HTTP + gRPC),
# and the model-watcher against them with a real S3 server and real model_signing signatures.
test-runtime: deps jaeger
	$(CARGO) build -p kinfer-runtime -p kinfer-watcher
	$(KINFER_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/runtime

# The cluster tier needs root (containerd, kubelet, iptables); CI runs as root.
test-cluster: cluster-build
	$(MAKE) cluster-test

test: fmt-check clippy docs test-rust test-runtime test-cluster test-operator test-chart test-rules test-e2e

# The main job end to end on the local cluster: build, cluster up, images, helm install, signed
# models to S3, apply, infer, promote with a one-line edit, watch a bad version roll back.
demo: deps
	bash scripts/e2e-setup.sh
	$(KINFER_VENV)/bin/python scripts/demo.py

# Operator against a real kube-apiserver (tests/operator/run.sh starts what it needs).
test-operator: cluster-build
	bash tests/operator/run.sh

# The Helm chart: lint, schema, and a server-side dry run against the real API server.
test-chart: cluster-build
	bash tests/e2e/chart/test_chart.sh

# The chart's PrometheusRule under the real promtool: check rules, and unit tests of every alert.
test-rules: cluster-build
	bash tests/e2e/chart/test_rules.sh

# The e2e story on the local cluster with the chart installed by helm (tests/e2e/test_e2e.py).
# The cluster is taken down afterwards unless KINFER_KEEP_CLUSTER=1 (KINFER_KEEP_E2E=1 also keeps
# the test namespace for a look with kubectl). A failed test's report ends with the cluster as it
# was (services' status, pods' annotations, Events, watcher and operator logs: tests/e2e/conftest.py).
test-e2e: deps cluster-build
	rc=0; $(KINFER_VENV)/bin/python -m pytest -q -x -p no:cacheprovider tests/e2e || rc=$$?; \
	  [[ "$${KINFER_KEEP_CLUSTER:-0}" == 1 ]] || bash tests/e2e/cluster/down.sh; exit $$rc

# BENCH=quick (one short repetition) or full (3 repetitions, medians) — see docs/benchmarks.md.
BENCH ?= full
bench: ort
	bench/all.sh $(BENCH)

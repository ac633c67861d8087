# Local single-node Kubernetes cluster (tests/e2e/cluster/README.md).
# Included by the root Makefile, so paths are relative to $(CURDIR), the repo root.
#   make cluster-build   build/cache every binary and image (~/.cache/kinfer/bin/<component>-<version>/)
#   make cluster-up      start the cluster (root); KUBECONFIG=~/.cache/kinfer/cluster/kubeconfig
#   make cluster-down    stop it and remove everything it made
#   make cluster-test    cluster tier: up, checks, down, leftover checks, second up/down
#   make cluster-env     print the shell exports for KUBECONFIG, kubectl/helm on PATH and S3
#   make flux-up         Flux (source-controller, kustomize-controller) and a git server on the cluster
#   make flux-down       stop them
#   make monitoring-up WEBHOOK=URL   Prometheus + Alertmanager (monitoring.sh), alerts to URL
#   make monitoring-down stop them
#   make autoscaling-up  metrics-server (metrics.k8s.io) + KEDA (external.metrics.k8s.io) (autoscaling.sh)
#   make autoscaling-down unregister their APIs and stop them
#   make tracing-up      Jaeger v2, in memory: OTLP on 10.250.0.1:4317/4318, query on 127.0.0.1:16686 (tracing.sh)
#   make tracing-down    stop it
KINFER_CLUSTER_SRC := $(CURDIR)/tests/e2e/cluster

.PHONY: cluster-build cluster-up cluster-down cluster-test cluster-env flux-up flux-down monitoring-up monitoring-down \
	autoscaling-up autoscaling-down tracing-up tracing-down
cluster-build:
	bash $(KINFER_CLUSTER_SRC)/build.sh all
cluster-up:
	bash $(KINFER_CLUSTER_SRC)/up.sh
cluster-down:
	bash $(KINFER_CLUSTER_SRC)/down.sh
cluster-test:
	bash $(KINFER_CLUSTER_SRC)/test_cluster.sh
cluster-env:
	@bash $(KINFER_CLUSTER_SRC)/env.sh
flux-up:
	bash $(KINFER_CLUSTER_SRC)/flux.sh up
flux-down:
	bash $(KINFER_CLUSTER_SRC)/flux.sh down
monitoring-up:
	bash $(KINFER_CLUSTER_SRC)/monitoring.sh up "$(WEBHOOK)"
monitoring-down:
	bash $(KINFER_CLUSTER_SRC)/monitoring.sh down
autoscaling-up:
	bash $(KINFER_CLUSTER_SRC)/autoscaling.sh up
autoscaling-down:
	bash $(KINFER_CLUSTER_SRC)/autoscaling.sh down
tracing-up:
	bash $(KINFER_CLUSTER_SRC)/tracing.sh up
tracing-down:
	bash $(KINFER_CLUSTER_SRC)/tracing.sh down

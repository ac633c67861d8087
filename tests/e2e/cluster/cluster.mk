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
KINFER_CLUSTER_SRC := $(CURDIR)/tests/e2e/cluster

.PHONY: cluster-build cluster-up cluster-down cluster-test cluster-env flux-up flux-down monitoring-up monitoring-down
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

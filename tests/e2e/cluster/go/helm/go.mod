// Wrapper module that builds the helm CLI (helm.sh/helm/v3/cmd/helm).
module kinfer.local/e2e/cluster/helm

go 1.24.0

require helm.sh/helm/v3 v3.19.5

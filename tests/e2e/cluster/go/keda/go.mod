// Pins KEDA (github.com/kedacore/keda/v2) for tests/e2e/cluster/autoscaling.sh. KEDA is not built
// through this module: its go.mod has replace and exclude lines that do not apply to a dependency,
// so build.sh downloads the module source through this file (go.sum checks its hash) and builds
// ./cmd/operator and ./cmd/adapter inside a copy of it, with KEDA's own go.mod and go.sum.
module kinfer.local/e2e/cluster/keda

go 1.26.0

require github.com/kedacore/keda/v2 v2.21.0

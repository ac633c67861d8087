//go:build tools

// Keeps `go mod tidy` from dropping the metrics-server command build.sh builds.
package tools

import _ "sigs.k8s.io/metrics-server/cmd/metrics-server"

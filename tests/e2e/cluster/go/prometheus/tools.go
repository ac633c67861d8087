//go:build tools

// Wrapper module for Prometheus (github.com/prometheus/prometheus): promtool, the real rule checker
// and rule unit-test runner of the chart tier, and the Prometheus server the e2e runs on the local
// cluster (tests/e2e/cluster/monitoring.sh). build.sh builds both commands from this module's
// requirements; this file only keeps `go mod tidy` from dropping them.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
)

//go:build tools

// Wrapper module for promtool (github.com/prometheus/prometheus/cmd/promtool): the real rule
// checker and rule unit-test runner the chart tier runs on the chart's PrometheusRule. build.sh
// builds the command from this module's requirements; this file only keeps `go mod tidy` from
// dropping them.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"

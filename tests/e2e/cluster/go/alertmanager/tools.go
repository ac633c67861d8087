//go:build tools

// Keeps `go mod tidy` from dropping the alertmanager command build.sh builds.
package tools

import _ "github.com/prometheus/alertmanager/cmd/alertmanager"

//go:build tools

// Keeps `go mod tidy` from dropping the jaeger command build.sh builds.
package tools

import _ "github.com/jaegertracing/jaeger/cmd/jaeger"

//go:build tools

// Package tools pins the two controllers' main packages so `go mod tidy` keeps what they need.
package tools

import (
	_ "github.com/fluxcd/kustomize-controller"
	_ "github.com/fluxcd/source-controller"
)

//go:build tools

// Package tools pins kwok, the simulated nodes of `cargo xtask bench scale`
// (go build sigs.k8s.io/kwok/cmd/kwok).
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"

//go:build tools

// Package tools pins the kind CLI that `cargo xtask kind` builds (go build sigs.k8s.io/kind).
// The module's images/base/files (kind's node entrypoint and systemd units) are read from the
// module cache when the node image is assembled.
package tools

import _ "sigs.k8s.io/kind"

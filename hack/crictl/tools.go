//go:build tools

// Package tools pins crictl (sigs.k8s.io/cri-tools), which the kind node image carries.
package tools

import _ "sigs.k8s.io/cri-tools/cmd/crictl"

//go:build tools

// Package tools pins kube-router (github.com/cloudnativelabs/kube-router/v2), whose network policy
// controller the kind node image runs (firewall only: no routing, no service proxy) to enforce
// NetworkPolicy.
package tools

import _ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"

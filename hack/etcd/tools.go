//go:build tools

// Package tools pins etcd 3.6.5, the version kubeadm v1.34 deploys (its image
// registry.k8s.io/etcd:3.6.5-0 is assembled from this build for the kind node image).
package tools

import _ "go.etcd.io/etcd/server/v3"

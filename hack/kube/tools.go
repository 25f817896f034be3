//go:build tools

// Package tools pins the upstream Kubernetes commands that `cargo xtask cluster up`
// builds, and kubeadm and kubectl, which the kind node image adds (see
// xtask/src/cluster/build.rs). Nothing here is compiled into Spawner.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubeadm"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)

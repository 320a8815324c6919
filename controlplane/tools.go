//go:build tools

// Pins etcd's server module, which k8s.io/kubernetes only requires indirectly.
package controlplane

import _ "go.etcd.io/etcd/server/v3/etcdmain"

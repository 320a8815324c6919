//go:build tools

// Pins the CNI plugins the node uses (bridge, host-local, loopback, portmap); testenv builds
// them with `go build` from this module.
package cni

import (
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/containernetworking/plugins/plugins/meta/portmap"
)

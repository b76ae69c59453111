package vcluster

import (
	"strings"
	"testing"

	"github.com/harikube/harikube/tests/testserver"
)

// checkSharedEtcdClient: the kube-apiserver role builds its resource stores
// over one etcd client, so kine (a process of its own) accepts a handful of
// connections from it, not one per resource (about 70 upstream) and per CRD.
func checkSharedEtcdClient(t *testing.T, c *cluster) {
	t.Helper()
	socket := strings.TrimPrefix(kineSocket(c.data), "unix://")
	accepted := testserver.UnixSocketEnds(t, socket) - 1 // less the listener
	t.Logf("kine accepted %d connections", accepted)
	if accepted < 1 || accepted >= 20 {
		t.Fatalf("kine holds %d connections from the kube-apiserver role, want between 1 and 19 with its shared etcd client", accepted)
	}
}

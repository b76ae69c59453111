package vcluster

import (
	"os"
	"strings"
	"testing"
)

// checkSharedEtcdClient: the kube-apiserver role builds its resource stores
// over one etcd client, so kine (a process of its own) accepts a handful of
// connections from it, not one per resource (about 70 upstream) and per CRD.
func checkSharedEtcdClient(t *testing.T, c *cluster) {
	t.Helper()
	socket := strings.TrimPrefix(kineSocket(c.data), "unix://")
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		t.Fatalf("read /proc/net/unix: %v", err)
	}
	accepted := -1 // the listener carries the path too
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasSuffix(line, " "+socket) {
			accepted++
		}
	}
	t.Logf("kine accepted %d connections", accepted)
	if accepted < 1 || accepted >= 20 {
		t.Fatalf("kine holds %d connections from the kube-apiserver role, want between 1 and 19 with its shared etcd client", accepted)
	}
}

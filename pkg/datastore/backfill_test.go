package datastore

import (
	"context"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/harikube/harikube/pkg/index"
)

// Rows another writer added while harikube was stopped are backfilled at
// start, before the apiserver registers its extractors, so they lack the
// resource's selectable fields: a field selector must still find them.
func TestBackfilledRowsUnderConfirmedDefinition(t *testing.T) {
	forEachStore(t, testBackfilledRowsUnderConfirmedDefinition)
}

func testBackfilledRowsUnderConfirmedDefinition(t *testing.T, s store) {
	res := widgets("spec.color")
	res.Definition = "v1"
	registry := index.NewRegistry()
	registry.Register(res)
	e := start(t, s, registry)
	put(t, e.client, prefix+"ns/a", object("a", nil, "blue"))
	e.stop()

	ctx, cancel := context.WithCancel(context.Background())
	ds, err := Start(ctx, Options{DataDir: s.dir, Endpoint: s.endpoint, Unindexed: true})
	if err != nil {
		t.Fatal(err)
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{ds.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	put(t, c, prefix+"ns/b", object("b", nil, "blue"))
	c.Close()
	cancel()
	ds.Wait()

	registry = index.NewRegistry()
	e = start(t, s, registry)
	registry.Register(res) // as the apiserver does, after the datastore serves
	keys, _ := list(t, e.client, selected(t, "", "spec.color=blue"))
	if !equal(keys, []string{prefix + "ns/a", prefix + "ns/b"}) {
		t.Fatalf("spec.color=blue after a backfill: %v", keys)
	}
}

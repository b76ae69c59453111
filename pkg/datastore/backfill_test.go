package datastore

import (
	"testing"

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

	putWithStockKine(t, s, prefix+"ns/b", object("b", nil, "blue"))

	registry = index.NewRegistry()
	e = start(t, s, registry)
	registry.Register(res) // as the apiserver does, after the datastore serves
	keys, _ := list(t, e.client, selected(t, "", "spec.color=blue"))
	if !equal(keys, []string{prefix + "ns/a", prefix + "ns/b"}) {
		t.Fatalf("spec.color=blue after a backfill: %v", keys)
	}
}

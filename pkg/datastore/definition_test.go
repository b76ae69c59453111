package datastore

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/harikube/harikube/pkg/index"
)

// valve blocks the extractions of a definition until it is opened, the way a
// conversion webhook that hangs would.
type valve struct {
	once sync.Once
	ch   chan struct{}
}

func newValve() *valve { return &valve{ch: make(chan struct{})} }
func (v *valve) open() { v.once.Do(func() { close(v.ch) }) }
func (v *valve) wait() { <-v.ch }

// gadgets is a CRD-like resource with the selectable field spec.color whose
// definition may default a missing color, as a CRD schema default does.
func gadgets(definition, defaultColor string, v *valve) index.Resource {
	return index.Resource{Name: "gadgets", Prefix: prefix, Fields: []string{"spec.color"}, Definition: definition, Mutable: true,
		Extract: func(value []byte) (labels.Set, fields.Set, error) {
			if v != nil {
				v.wait()
			}
			var o struct {
				Metadata struct {
					Name, Namespace string
					Labels          map[string]string
				}
				Spec struct{ Color string }
			}
			if err := json.Unmarshal(value, &o); err != nil {
				return nil, nil, err
			}
			if o.Spec.Color == "" {
				o.Spec.Color = defaultColor
			}
			return o.Metadata.Labels, fields.Set{"metadata.name": o.Metadata.Name, "metadata.namespace": o.Metadata.Namespace, "spec.color": o.Spec.Color}, nil
		}}
}

// waitFor polls until the selected list returns want, failing on any result
// that drops one of the keys in mustHave (never fewer) meanwhile.
func waitFor(t *testing.T, c *clientv3.Client, field string, want, mustHave []string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		keys, count := list(t, c, selected(t, "", field))
		if !containsAll(keys, mustHave) || count < int64(len(mustHave)) {
			t.Fatalf("%s: got %v (count %d), which drops one of %v", field, keys, count, mustHave)
		}
		if equal(keys, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %v, want %v", field, keys, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func containsAll(have, want []string) bool {
	set := map[string]bool{}
	for _, k := range have {
		set[k] = true
	}
	for _, k := range want {
		if !set[k] {
			return false
		}
	}
	return true
}

// A definition that changes what extraction computes (a CRD gaining a
// default for a selectable field) re-indexes the prefix; until it has, the
// field is not filtered, so rows indexed under the old definition stay
// candidates. The re-index extracts outside the write gate: while its
// extractions hang, writes of other resources go through.
func TestDefinitionChange(t *testing.T) { forEachStore(t, testDefinitionChange) }

func testDefinitionChange(t *testing.T, s store) {
	a, b, c := prefix+"ns/a", prefix+"ns/b", prefix+"ns/c"
	registry := index.NewRegistry()
	e := start(t, s, registry)
	registry.Register(gadgets("v1", "", nil))
	put(t, e.client, a, object("a", nil, ""))
	put(t, e.client, b, object("b", nil, "red"))
	put(t, e.client, c, object("c", nil, ""))
	waitFor(t, e.client, "spec.color=red", []string{b}, []string{b})
	waitFor(t, e.client, "spec.color=blue", nil, nil)

	hung := newValve()
	defer hung.open()
	registry.Register(gadgets("v2", "blue", hung))
	// The re-index is stuck in extraction: blue must not drop a or c.
	keys, _ := list(t, e.client, selected(t, "", "spec.color=blue"))
	if !containsAll(keys, []string{a, c}) {
		t.Fatalf("during the re-index spec.color=blue returned %v, dropping a or c", keys)
	}
	// Writes elsewhere are not held up by the hanging extraction.
	done := make(chan struct{})
	go func() {
		defer close(done)
		put(t, e.client, "/registry/configmaps/ns/other", object("other", nil, ""))
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("a write of another resource waited for the re-index's extraction")
	}
	hung.open()
	waitFor(t, e.client, "spec.color=blue", []string{a, c}, []string{a, c})
	waitFor(t, e.client, "spec.color=red", []string{b}, []string{b})
	e.stop()

	// Same definition after a restart: the index is trusted at once.
	registry = index.NewRegistry()
	e = start(t, s, registry)
	registry.Register(gadgets("v2", "blue", nil))
	if keys, _ := list(t, e.client, selected(t, "", "spec.color=blue")); !equal(keys, []string{a, c}) {
		t.Fatalf("after a restart with the same definition spec.color=blue = %v, want exactly [a c] with no re-index", keys)
	}
	e.stop()

	// The old definition again (a rollback of the CRD): values of v2 are not
	// trusted under v1.
	registry = index.NewRegistry()
	e = start(t, s, registry)
	registry.Register(gadgets("v1", "", nil))
	waitFor(t, e.client, "spec.color=blue", nil, nil)
	waitFor(t, e.client, "spec.color=", []string{a, c}, []string{a, c})
}

// A mutable resource registered again in the same process (its storage was
// rebuilt after a CRD change) is re-indexed even when the definition it names
// is the same, and a write extracted under the registration before is
// written as not decoded rather than with stale values.
func TestReRegistrationInProcess(t *testing.T) { forEachStore(t, testReRegistrationInProcess) }

func testReRegistrationInProcess(t *testing.T, s store) {
	a, d := prefix+"ns/a", prefix+"ns/d"
	registry := index.NewRegistry()
	e := start(t, s, registry)
	first := newValve()
	first.open()
	registry.Register(gadgets("v1", "", first))
	put(t, e.client, a, object("a", nil, ""))
	waitFor(t, e.client, "spec.color=", []string{a}, []string{a})

	// A write whose extraction (by the first registration) hangs while a new
	// registration, with a new default, takes over.
	slow := newValve()
	registry.Register(gadgets("v1", "", slow))
	written := make(chan struct{})
	go func() {
		defer close(written)
		put(t, e.client, d, object("d", nil, ""))
	}()
	time.Sleep(200 * time.Millisecond)
	second := newValve()
	defer second.open()
	registry.Register(gadgets("v1", "blue", second))
	slow.open()
	<-written
	// d was extracted as "" by a superseded registration: it must be a
	// candidate for blue, as a is while the re-index hangs.
	keys, _ := list(t, e.client, selected(t, "", "spec.color=blue"))
	if !containsAll(keys, []string{a, d}) {
		t.Fatalf("spec.color=blue = %v while re-indexing, dropping a or d", keys)
	}
	param := "?"
	if s.endpoint != "" {
		param = "$1"
	}
	id := scalar(t, s.sql(t), "SELECT MAX(id) FROM kine WHERE name = "+param, d)
	decoded := scalar(t, s.sql(t), "SELECT decoded FROM harikube_rows WHERE id = "+param, id)
	if decoded != 0 {
		t.Fatalf("the row extracted by a superseded registration was indexed as decoded")
	}
	second.open()
	waitFor(t, e.client, "spec.color=blue", []string{a, d}, []string{a, d})
}

// Labels are not filtered while a resource whose values may come through a
// conversion webhook is re-indexed.
func TestConvertedLabelsDuringReindex(t *testing.T) {
	s := store{dir: t.TempDir()}
	a := prefix + "ns/a"
	registry := index.NewRegistry()
	e := start(t, s, registry)
	res := gadgets("v1", "", nil)
	res.LabelsConverted = true
	registry.Register(res)
	put(t, e.client, a, object("a", map[string]string{"tier": "old"}, ""))
	hung := newValve()
	defer hung.open()
	res = gadgets("v2", "", hung)
	res.LabelsConverted = true
	registry.Register(res)
	keys, _ := list(t, e.client, selected(t, "tier=new", ""))
	if !equal(keys, []string{a}) {
		t.Fatalf("tier=new during the re-index of a converted resource = %v, want the unfiltered [a]", keys)
	}
	hung.open()
	deadline := time.Now().Add(30 * time.Second)
	for {
		keys, _ = list(t, e.client, selected(t, "tier=new", ""))
		if len(keys) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("labels still unfiltered after the re-index: %v", keys)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The watch filter's shared cache of extracted values does not outlive the
// definition it was extracted under: a watch started after a new default
// makes an object match receives it, even when an earlier watch cached the
// object's values under the old definition.
func TestWatchFilterFollowsDefinition(t *testing.T) {
	s := store{dir: t.TempDir()}
	a, marker := prefix+"ns/a", prefix+"ns/z"
	registry := index.NewRegistry()
	e := start(t, s, registry)
	registry.Register(gadgets("v1", "", nil))
	first, _ := e.client.Get(context.Background(), prefix+"none")
	put(t, e.client, a, object("a", nil, ""))
	put(t, e.client, marker, object("z", nil, "blue"))

	watchFrom := func(rev int64) []string {
		ctx, cancel := context.WithTimeout(selected(t, "", "spec.color=blue"), 20*time.Second)
		defer cancel()
		wch := e.client.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithRev(rev))
		var got []string
		for {
			select {
			case resp := <-wch:
				for _, ev := range resp.Events {
					got = append(got, string(ev.Kv.Key))
					if string(ev.Kv.Key) == marker {
						return got
					}
				}
			case <-ctx.Done():
				t.Fatalf("timed out; got %v", got)
			}
		}
	}
	if got := watchFrom(first.Header.Revision + 1); !equal(got, []string{marker}) {
		t.Fatalf("under v1 (no default) a blue watch got %v, want only the marker", got)
	}
	registry.Register(gadgets("v2", "blue", nil))
	if got := watchFrom(first.Header.Revision + 1); !equal(got, []string{a, marker}) {
		t.Fatalf("under v2 (default blue) a blue watch got %v, want a and the marker", got)
	}
}

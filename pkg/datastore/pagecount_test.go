package datastore

import (
	"context"
	"fmt"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/harikube/harikube/pkg/index"
	"github.com/harikube/harikube/pkg/selection"
)

// pageOfList is the context the pushdown decorator gives GetList's reads:
// the selection, marked as a page of a LIST.
func pageOfList(t *testing.T, label string) context.Context {
	t.Helper()
	ls, err := labels.Parse(label)
	if err != nil {
		t.Fatal(err)
	}
	s := selection.FromSelectors(ls, fields.Everything())
	s.Page = true
	return selectionContext(t, s)
}

// A page of a marked selection says "more follow" with a Count above the
// page (the rows kine's List found, limit+1) instead of counting every
// match after it, at the current revision and an older one, and pages
// through every match among candidates the walk must reject, every page
// full; an unmarked read and a CountOnly read keep the exact count.
func TestPageCountOfMarkedSelection(t *testing.T) { forEachStore(t, testPageCountOfMarkedSelection) }

func testPageCountOfMarkedSelection(t *testing.T, s store) {
	registry := index.NewRegistry()
	registry.Register(widgets())
	e := start(t, s, registry)
	c := e.client
	// Between the matches (app=web, tier=a) are candidates a page must
	// reject (tier=b, deleted, changed to db after the older revision) and
	// undecodable values, which match every selection.
	const n = 40
	var want []string
	key := func(i int) string { return fmt.Sprintf("%sns/w%02d", prefix, i) }
	for i := range n {
		switch {
		case i%7 == 3:
			put(t, c, key(i), "k8s:enc:aescbc:v1:key1:\x00garbage")
			want = append(want, key(i))
		case i%5 == 1:
			put(t, c, key(i), object(fmt.Sprintf("w%02d", i), map[string]string{"app": "web", "tier": "b"}, ""))
		case i%6 == 4:
			put(t, c, key(i), object(fmt.Sprintf("w%02d", i), map[string]string{"app": "web", "tier": "a"}, ""))
			del(t, c, key(i))
		case i%2 == 0:
			put(t, c, key(i), object(fmt.Sprintf("w%02d", i), map[string]string{"app": "web", "tier": "a"}, ""))
			want = append(want, key(i))
		default:
			put(t, c, key(i), object(fmt.Sprintf("w%02d", i), map[string]string{"app": "db", "tier": "a"}, ""))
		}
	}
	older, err := c.Get(context.Background(), "/x")
	if err != nil {
		t.Fatal(err)
	}
	put(t, c, key(0), object("w00", map[string]string{"app": "db"}, ""))

	for _, rev := range []int64{0, older.Header.Revision} {
		matches := want
		if rev == 0 {
			matches = want[1:]
		}
		const limit = 3
		var got []string
		from := prefix
		for {
			opts := []clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)), clientv3.WithLimit(limit)}
			if rev != 0 {
				opts = append(opts, clientv3.WithRev(rev))
			}
			resp, err := c.Get(pageOfList(t, "app=web,tier=a"), from, opts...)
			if err != nil {
				t.Fatal(err)
			}
			for _, kv := range resp.Kvs {
				got = append(got, string(kv.Key))
			}
			// What the apiserver reads from it (etcd3 store pagedChunks).
			hasMore := int64(len(resp.Kvs)) < resp.Count
			if hasMore != resp.More {
				t.Fatalf("at %d from %s: more=%v but count %d for %d kvs", rev, from, resp.More, resp.Count, len(resp.Kvs))
			}
			if !resp.More {
				break
			}
			if len(resp.Kvs) != limit {
				t.Errorf("at %d from %s: %d kvs on a page with more, want %d", rev, from, len(resp.Kvs), limit)
			}
			if resp.Count != limit+1 {
				t.Errorf("at %d from %s: count %d, want the page's lower bound %d", rev, from, resp.Count, limit+1)
			}
			from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
		if !equal(got, matches) {
			t.Errorf("at %d: pages hold %v, want %v", rev, got, matches)
		}
	}

	// Unmarked, the same page counts exactly.
	resp, err := c.Get(selected(t, "app=web,tier=a", ""), prefix, clientv3.WithPrefix(), clientv3.WithLimit(3))
	if err != nil {
		t.Fatal(err)
	}
	if !resp.More || resp.Count != int64(len(want)-1) {
		t.Errorf("unmarked page: more=%v count=%d, want true, %d", resp.More, resp.Count, len(want)-1)
	}
	// A COUNT-only read counts exactly, marked or not.
	for _, ctx := range []context.Context{pageOfList(t, "app=web,tier=a"), selected(t, "app=web,tier=a", "")} {
		resp, err := c.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		if resp.Count != int64(len(want)-1) {
			t.Errorf("count only: %d, want %d", resp.Count, len(want)-1)
		}
	}
}

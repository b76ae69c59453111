package datastore

import (
	"context"
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"testing"

	sel "k8s.io/apimachinery/pkg/selection"

	"github.com/harikube/harikube/pkg/index"
	"github.com/harikube/harikube/pkg/selection"
	"github.com/harikube/harikube/pkg/selectorsql"
)

// longValues are values of 2-, 3- and 4-byte characters straddling the
// index's cut at every offset, with total lengths around the limit
// (255, 256, 257 bytes and more), and values that share a cut prefix.
func longValues() []string {
	var out []string
	for _, char := range []string{"é", "€", "𝄞"} {
		for pad := selectorsql.MaxValueLen - 2*len(char); pad <= selectorsql.MaxValueLen+1; pad++ {
			v := strings.Repeat("a", pad) + char + char
			out = append(out, v, v+"x", v+"y")
		}
	}
	return out
}

func selectionContext(t *testing.T, s selection.Selection) context.Context {
	t.Helper()
	ctx, err := selection.NewOutgoingContext(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	return ctx
}

// A write never fails because of what the index keeps of a value, and a
// selector on long multi-byte label or field values returns every match.
func TestLongMultiByteValues(t *testing.T) { forEachStore(t, testLongMultiByteValues) }

func testLongMultiByteValues(t *testing.T, s store) {
	registry := index.NewRegistry()
	registry.Register(widgets("spec.color"))
	e := start(t, s, registry)
	values := longValues()
	objects := map[string]string{} // key → its value (label "k" and spec.color)
	for i, v := range values {
		key := fmt.Sprintf("%sns/w%03d", prefix, i)
		// Through the etcd API, so no apiserver validation shortens the
		// label: every value reaches the index as is.
		put(t, e.client, key, object(fmt.Sprintf("w%03d", i), map[string]string{"k": v}, v))
		objects[key] = v
	}
	if n := scalar(t, s.sql(t), "SELECT COUNT(*) FROM "+selectorsql.RowsTable+" WHERE decoded = 1"); n < int64(len(values)) {
		t.Fatalf("%d rows indexed as decoded, want at least %d", n, len(values))
	}

	// Requested: every stored value and every cut prefix of one.
	requested := slices.Clone(values)
	for _, v := range values {
		requested = append(requested, selectorsql.IndexValue(v))
	}
	for _, v := range requested {
		for _, op := range []sel.Operator{sel.Equals, sel.NotEquals} {
			want := func(stored string) bool { return (stored == v) == (op == sel.Equals) }
			for _, s := range []selection.Selection{
				{Labels: []selection.Requirement{{Key: "k", Operator: op, Values: []string{v}}}},
				{Fields: []selection.Requirement{{Key: "spec.color", Operator: op, Values: []string{v}}}},
			} {
				got, count := list(t, e.client, selectionContext(t, s))
				if int64(len(got)) != count {
					t.Errorf("%d-byte value %s: %d keys, count %d", len(v), op, len(got), count)
				}
				for key, stored := range objects {
					if want(stored) && !slices.Contains(got, key) {
						t.Fatalf("%+v: %s (%d bytes) missing from %d results", s, key, len(stored), len(got))
					}
				}
				// = is filtered in SQL: nothing beyond the values that
				// share what the index keeps.
				if op == sel.Equals {
					for _, key := range got {
						if selectorsql.IndexValue(objects[key]) != selectorsql.IndexValue(v) {
							t.Fatalf("%+v returned %s, whose indexed value differs", s, key)
						}
					}
				}
			}
		}
	}
}

// An index row too large for PostgreSQL's B-tree (about 2.7 KB, a third of
// a page) would fail the write: such entries are kept as "not decoded" and
// stay candidates for every selector.
func TestOversizedIndexRowsDoNotFailWrites(t *testing.T) {
	forEachStore(t, testOversizedIndexRowsDoNotFailWrites)
}

func testOversizedIndexRowsDoNotFailWrites(t *testing.T, s store) {
	e := start(t, s, nil)
	rnd := rand.New(rand.NewSource(1))
	random := func(n int) string {
		const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
		b := make([]byte, n)
		for i := range b {
			b[i] = alphabet[rnd.Intn(len(alphabet))]
		}
		return string(b)
	}
	// Incompressible, so PostgreSQL cannot shrink the index row below its
	// limit: a long label key, a value at the cut and a long name.
	name := random(2400)
	key := prefix + "ns/" + name
	lbls := map[string]string{"example.com/" + random(300): random(300), "app": "web"}
	put(t, e.client, key, object(name, lbls, ""))
	keys, _ := list(t, e.client, selected(t, "app=web", ""))
	if !equal(keys, []string{key}) {
		t.Fatalf("app=web: got %d keys, want the oversized object", len(keys))
	}
	keys, _ = list(t, e.client, selected(t, "app=db", ""))
	if !equal(keys, []string{key}) {
		t.Fatalf("app=db: got %d keys, want the oversized object as a candidate", len(keys))
	}
}

package selectorsql

import (
	"testing"

	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/harikube/harikube/pkg/selection"
)

// fuzzFixture fills a database with a few fixed objects: decoded ones with
// numbers, words and empty values, an undecoded one, an unmarked one, a
// deleted key and some history, so past revisions differ from the current one.
// With allRowsIndexed (production's promise) the row that would lack an
// index entry is an undecoded one instead.
func fuzzFixture(f *testing.F, allRowsIndexed bool) *store {
	s := newStore(openTestDB(f, f.TempDir()), "metadata.name", "metadata.namespace", "spec.color", "status.phase")
	s.allRowsIndexed = allRowsIndexed
	if err := s.addCompactKey(s.db); err != nil {
		f.Fatal(err)
	}
	type obj struct {
		key    string
		kind   rowKind
		labels map[string]string
		color  string
		delete bool
	}
	for _, o := range []obj{
		{"/registry/widgets/ns/a", rowIndexed, map[string]string{"app": "web", "n": "7"}, "red", false},
		{"/registry/widgets/ns/b", rowIndexed, map[string]string{"app": "db", "n": "-3", "tier": ""}, "", false},
		{"/registry/widgets/ns/c", rowIndexed, map[string]string{"n": "007", "x.io/k": "abc"}, "O'Brien", false},
		{"/registry/widgets/ns/d", rowIndexed, nil, "", false},
		{"/registry/widgets/ns/a", rowIndexed, map[string]string{"app": "web", "n": "12"}, "blue", false},
		{"/registry/widgets/ns/e", rowUndecoded, map[string]string{"app": "x"}, "red", false},
		{"/registry/widgets/ns/f", rowUnmarked, map[string]string{"app": "x"}, "red", false},
		{"/registry/widgets/ns/g", rowIndexed, map[string]string{"app": "gone"}, "red", false},
		{"/registry/widgets/ns/g", rowIndexed, nil, "", true},
		{"/registry/widgets/other/h", rowIndexed, map[string]string{"app": "web"}, "red", false},
		{"/registry/gadgets/ns/a", rowIndexed, map[string]string{"app": "web"}, "red", false},
	} {
		ns := "ns"
		if o.key == "/registry/widgets/other/h" {
			ns = "other"
		}
		fs := map[string]string{"metadata.name": o.key[len(o.key)-1:], "metadata.namespace": ns, "spec.color": o.color, "status.phase": "Running"}
		kind := o.kind
		if kind == rowUnmarked && allRowsIndexed {
			kind = rowUndecoded
		}
		if _, err := s.put(s.db, o.key, o.delete, kind, o.labels, fs); err != nil {
			f.Fatal(err)
		}
	}
	s.checkPromise(f, s.db)
	return s
}

// clone copies the model so rows written inside a rolled-back transaction
// do not outlive it.
func (s *store) clone() *store {
	c := *s
	c.rows = append([]*mrow{}, s.rows...)
	c.names = append([]string{}, s.names...)
	c.byName = make(map[string][]*mrow, len(s.byName))
	for k, v := range s.byName {
		c.byName[k] = append([]*mrow{}, v...)
	}
	return &c
}

// FuzzTranslate renders selectors the upstream parsers accept and runs them
// against SQLite, next to objects that carry the fuzzed values, checking that
// no matching object is ever left out. Each input runs in both query modes,
// each against data that keeps the mode's promise.
func FuzzTranslate(f *testing.F) {
	for _, seed := range [][4]string{
		{"app=web", "", "web", ""},
		{"app!=web,n>6", "spec.color=red", "web", "7"},
		{"app in (web,db),!tier", "metadata.name!=a", "db", ""},
		{"app notin (web),n<8", "spec.color==O'Brien", "O'Brien", "8"},
		{"x.io/k,app", "status.phase!=Running", "abc", "Running"},
		{"n>0,n<0", "spec.color=red,spec.color!=red", "0", "-1"},
		{"app=", "spec.color=", "", ""},
		{"", `spec.color='; DROP TABLE kine; --`, "'; DROP TABLE kine; --", "%_"},
		{"app==x", `spec.color=a\,b\=c\\d`, `a,b=c\d`, "\x00"},
	} {
		f.Add(seed[0], seed[1], seed[2], seed[3])
	}
	fixtures := map[bool]*store{}
	for _, allRowsIndexed := range queryModes {
		fixtures[allRowsIndexed] = fuzzFixture(f, allRowsIndexed)
	}
	f.Fuzz(func(t *testing.T, labelSelector, fieldSelector, v1, v2 string) {
		lsel, err := labels.Parse(labelSelector)
		if err != nil {
			return
		}
		fsel, err := fields.ParseSelector(fieldSelector)
		if err != nil {
			return
		}
		for _, allRowsIndexed := range queryModes {
			fuzzOne(t, fixtures[allRowsIndexed], lsel, fsel, labelSelector, fieldSelector, v1, v2)
		}
	})
}

// fuzzOne adds objects carrying the fuzzed values to base inside a
// transaction it rolls back, and checks the selectors over them.
func fuzzOne(t *testing.T, base *store, lsel labels.Selector, fsel fields.Selector, labelSelector, fieldSelector, v1, v2 string) {
	s := selection.FromSelectors(lsel, fsel)

	x, err := base.db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer x.Rollback() //nolint:errcheck // the fuzzed rows are thrown away
	m := base.clone()
	// Objects that carry the fuzzed values, under the selector's own
	// label keys and under fixed ones.
	own := map[string]string{}
	for _, r := range s.Labels {
		own[r.Key] = v1
	}
	for i, ls := range []map[string]string{
		own,
		{"app": v1, "n": v2},
		{"tier": v2, "x.io/k": v1},
	} {
		key := "/registry/widgets/ns/fuzz" + string(rune('1'+i))
		fs := map[string]string{"metadata.name": "fuzz", "metadata.namespace": "ns", "spec.color": v1, "status.phase": v2}
		for _, r := range s.Fields {
			if m.fieldIndexed(r.Key) {
				continue
			}
			fs[r.Key] = v2
		}
		if _, err := m.put(x, key, false, rowIndexed, ls, fs); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.put(x, "/registry/widgets/ns/fuzz1", false, rowIndexed, map[string]string{"app": v2}, map[string]string{"metadata.name": v1, "metadata.namespace": "ns", "spec.color": v2, "status.phase": v1}); err != nil {
		t.Fatal(err)
	}
	upstream := func(ls labels.Set, fs fields.Set) bool { return lsel.Matches(ls) && fsel.Matches(fs) }
	for _, c := range []struct {
		r        Range
		rev      int64
		limit    int64
		keysOnly bool
	}{
		{Range{Start: "/registry/widgets/", End: "/registry/widgets0"}, 0, 2, false},
		{Range{Start: "/registry/widgets/ns/", End: "/registry/widgets/ns0"}, m.maxID - 1, 0, true},
		{Range{Start: "/registry/widgets/ns/fuzz1"}, 0, 0, true},
		{Range{}, 3, 1, false},
	} {
		req := Request{Range: c.r, Revision: c.rev, Limit: c.limit, KeysOnly: c.keysOnly, Selection: s, FieldIndexed: m.fieldIndexed, AllRowsIndexed: m.allRowsIndexed}
		checkRendering(t, req)
		if _, err := m.checkCase(x, diffCase{req: req, upstream: upstream, partial: partialSelection(s, lsel, fsel)}); err != nil {
			t.Fatalf("%s: labels %q fields %q values %q %q, range %q, revision %d, limit %d:\n%v", queryModeName(m.allRowsIndexed), labelSelector, fieldSelector, v1, v2, c.r, c.rev, c.limit, err)
		}
	}
}

package selectorsql

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	sel "k8s.io/apimachinery/pkg/selection"
)

// historyStore holds n widgets created with phase=pending and all but the
// first `pending` of them then changed to phase=done, plus a label `stable`
// that never changes on the first `pending` widgets; then, after revision
// older, `later` more widgets change to done (so the older revision has
// more pending widgets than the current one).
func historyStore(t *testing.T, n, pending, later int) (s *store, older int64) {
	t.Helper()
	s = newStore(openTestDB(t, t.TempDir()), "metadata.name", "status.phase")
	s.allRowsIndexed = true
	x, err := s.db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.addCompactKey(x); err != nil {
		t.Fatal(err)
	}
	name := func(i int) string { return fmt.Sprintf("/registry/widgets/ns/w%05d", i) }
	object := func(i int, phase string) (map[string]string, map[string]string) {
		ls := map[string]string{"phase": phase}
		if i < pending+later {
			ls["stable"] = "yes"
		}
		return ls, map[string]string{"metadata.name": fmt.Sprintf("w%05d", i), "status.phase": phase}
	}
	for i := range n {
		ls, fs := object(i, "pending")
		if _, err := s.put(x, name(i), false, rowIndexed, ls, fs); err != nil {
			t.Fatal(err)
		}
	}
	for i := pending + later; i < n; i++ {
		ls, fs := object(i, "done")
		if _, err := s.put(x, name(i), false, rowIndexed, ls, fs); err != nil {
			t.Fatal(err)
		}
	}
	older = s.maxID
	for i := pending; i < pending+later; i++ {
		ls, fs := object(i, "done")
		if _, err := s.put(x, name(i), false, rowIndexed, ls, fs); err != nil {
			t.Fatal(err)
		}
	}
	if err := x.Commit(); err != nil {
		t.Fatal(err)
	}
	return s, older
}

// candidates runs the request's candidate query alone and counts the ids it
// yields: the rows an index-driven read visits before the newest-row check.
func candidates(t *testing.T, s *store, req Request) int {
	t.Helper()
	f := translate(req)
	if f.Drive == "" {
		t.Fatalf("%+v: not index-driven", req.Selection)
	}
	var n int
	if err := s.db.QueryRow("SELECT COUNT(*) FROM ("+f.Drive+") AS c", f.DriveArgs...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// With history (every widget once pending, now done), a selective read by
// label or field visits the rows that match at the revision asked for, not
// every revision that ever matched: the same number as a label that never
// changed. Checked by counting candidates, not by timing.
func TestHistoryDoesNotWidenIndexDrivenReads(t *testing.T) {
	const n, pending, later = 2000, 10, 5
	s, older := historyStore(t, n, pending, later)
	widgets := Range{Start: "/registry/widgets/", End: "/registry/widgets0"}
	for _, c := range []struct {
		title string
		sel   func(v string) Request
		value string
	}{
		{"label", func(v string) Request { return Request{Selection: sel1(rq("phase", sel.Equals, v))} }, "pending"},
		{"label in", func(v string) Request { return Request{Selection: sel1(rq("phase", sel.In, v, "unknown"))} }, "pending"},
		{"field", func(v string) Request { return Request{Selection: self(rq("status.phase", sel.Equals, v))} }, "pending"},
	} {
		for _, rev := range []int64{0, older, s.maxID} {
			req := c.sel(c.value)
			req.Range, req.Revision, req.FieldIndexed, req.AllRowsIndexed = widgets, rev, s.fieldIndexed, true
			want := pending
			if rev == older {
				want = pending + later
			}
			_, _, rows, err := runList(s.db, req)
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) != want {
				t.Fatalf("%s at revision %d: %d rows, want %d", c.title, rev, len(rows), want)
			}
			if _, _, count, err := runCount(s.db, req); err != nil || count != int64(want) {
				t.Fatalf("%s at revision %d: count %d (%v), want %d", c.title, rev, count, err, want)
			}
			// The rows superseded after the older revision are visited
			// too; every other superseded revision is not.
			if got := candidates(t, s, req); got > pending+2*later+1 {
				t.Errorf("%s at revision %d: %d candidate rows for %d matches (history of %d changed objects visited)", c.title, rev, got, want, n-pending)
			}
			stable := Request{Range: widgets, Revision: rev, Selection: sel1(rq("stable", sel.Equals, "yes")), FieldIndexed: s.fieldIndexed, AllRowsIndexed: true}
			if got := candidates(t, s, stable); got > pending+2*later+1 {
				t.Errorf("stable label at revision %d: %d candidates", rev, got)
			}
		}
	}
	// "done" matches n-pending objects now and the history of none: its
	// candidates are the current matches and kine's undecoded
	// compact_rev_key row.
	req := Request{Range: widgets, Selection: sel1(rq("phase", sel.Equals, "done")), FieldIndexed: s.fieldIndexed, AllRowsIndexed: true}
	if got := candidates(t, s, req); got != n-pending+1 {
		t.Errorf("phase=done: %d candidates, want %d", got, n-pending+1)
	}
}

// Rows written before superseded_by existed are unmarked: still found
// (their newest revision is checked against kine's rows), and once marked
// from kine's rows they stop widening reads.
func TestUnmarkedHistoryIsFoundAndMarked(t *testing.T) {
	const n, pending = 300, 7
	s := newStore(openTestDB(t, t.TempDir()), "metadata.name")
	s.allRowsIndexed = true
	s.unmarked = func() bool { return true }
	for i := range n {
		for _, phase := range []string{"pending", "done", "pending", "done"} {
			if i < pending && phase == "done" {
				continue
			}
			name := fmt.Sprintf("/registry/widgets/ns/w%04d", i)
			if _, err := s.put(s.db, name, false, rowIndexed, map[string]string{"phase": phase}, map[string]string{"metadata.name": name[strings.LastIndex(name, "/")+1:]}); err != nil {
				t.Fatal(err)
			}
		}
	}
	older := s.maxID - 2
	widgets := Range{Start: "/registry/widgets/", End: "/registry/widgets0"}
	list := func(rev int64) []string {
		t.Helper()
		_, _, rows, err := runList(s.db, Request{Range: widgets, Revision: rev, Selection: sel1(rq("phase", sel.Equals, "pending")), FieldIndexed: s.fieldIndexed, AllRowsIndexed: true})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, r := range rows {
			names = append(names, r.name)
		}
		return names
	}
	req := Request{Range: widgets, Selection: sel1(rq("phase", sel.Equals, "pending")), FieldIndexed: s.fieldIndexed, AllRowsIndexed: true}
	before, beforeOlder := list(0), list(older)
	if len(before) != pending {
		t.Fatalf("unmarked: %d pending, want %d", len(before), pending)
	}
	if got := candidates(t, s, req); got < n*2 {
		t.Fatalf("unmarked history: only %d candidates; the test data is not what it says", got)
	}
	// Migrate in two batches, checking in between.
	if _, err := s.db.Exec(MarkSupersededSQL, 0, s.maxID/2); err != nil {
		t.Fatal(err)
	}
	if got := list(0); !slices.Equal(got, before) {
		t.Fatalf("half marked: %v, want %v", got, before)
	}
	if _, err := s.db.Exec(MarkSupersededSQL, s.maxID/2, s.maxID); err != nil {
		t.Fatal(err)
	}
	if got, gotOlder := list(0), list(older); !slices.Equal(got, before) || !slices.Equal(gotOlder, beforeOlder) {
		t.Fatalf("marked: %v / %v, want %v / %v", got, gotOlder, before, beforeOlder)
	}
	if got := candidates(t, s, req); got != pending {
		t.Fatalf("marked: %d candidates, want %d", got, pending)
	}
	var wrong int
	if err := s.db.QueryRow("SELECT COUNT(*) FROM " + IndexTable + " AS i WHERE " + SupersededColumn + " IS DISTINCT FROM (SELECT MIN(k.id) FROM kine AS k WHERE k.name = i.key AND k.id > i.id)").Scan(&wrong); err != nil {
		t.Fatal(err)
	}
	if wrong != 0 {
		t.Fatalf("%d index rows marked otherwise than by their key's next revision", wrong)
	}
}

// SQLite answers index-driven reads from the partial indexes of current
// and recently superseded rows, never by walking the revisions of a value.
func TestHistoryQueryPlan(t *testing.T) {
	s, older := historyStore(t, 200, 5, 5)
	widgets := Range{Start: "/registry/widgets/", End: "/registry/widgets0"}
	for _, rev := range []int64{0, older} {
		for _, r := range []Request{
			{Selection: sel1(rq("phase", sel.Equals, "pending"))},
			{Selection: sel1(rq("phase", sel.GreaterThan, "3"))},
			{Selection: self(rq("status.phase", sel.Equals, "pending"))},
		} {
			r.Range, r.Revision, r.FieldIndexed, r.AllRowsIndexed = widgets, rev, s.fieldIndexed, true
			f := translate(r)
			text := strings.Join(queryPlan(t, s.db, f.Drive, f.DriveArgs), "\n")
			if !strings.Contains(text, "harikube_index_current") || (rev > 0) != strings.Contains(text, "harikube_index_superseded") || strings.Contains(text, "SCAN i") {
				t.Errorf("revision %d, %v: plan\n%s", rev, r.Selection, text)
			}
		}
	}
}

// queryPlan returns the details of SQLite's EXPLAIN QUERY PLAN of query.
func queryPlan(t *testing.T, db sqlQuerier, query string, args []any) []string {
	t.Helper()
	rows, err := db.Query("EXPLAIN QUERY PLAN "+query, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return plan
}

package selectorsql

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	sel "k8s.io/apimachinery/pkg/selection"

	"github.com/harikube/harikube/pkg/selection"
)

// pagingStore holds widgets w000..w(n-1) whose label color=red is a
// candidate for many more keys than it matches: between the matches are
// keys that were red and changed with their old row left unmarked, keys
// red until deleted, keys red but failing a second requirement (tier), and
// keys whose newest row is undecoded (a match for every selection). It
// returns the revision before the last round of changes.
func pagingStore(t *testing.T, n int) (s *store, older int64) {
	t.Helper()
	s = newStore(openTestDB(t, t.TempDir()), "metadata.name", "status.phase")
	s.allRowsIndexed = true
	unmarked := false
	s.unmarked = func() bool { return unmarked }
	x, err := s.db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.addCompactKey(x); err != nil {
		t.Fatal(err)
	}
	name := func(i int) string { return fmt.Sprintf("/registry/widgets/ns/w%03d", i) }
	obj := func(i int, color, tier string) (map[string]string, map[string]string) {
		return map[string]string{"color": color, "tier": tier}, map[string]string{"metadata.name": fmt.Sprintf("w%03d", i), "status.phase": color}
	}
	put := func(i int, deleted bool, kind rowKind, color, tier string) {
		t.Helper()
		ls, fs := obj(i, color, tier)
		if _, err := s.put(x, name(i), deleted, kind, ls, fs); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		put(i, false, rowIndexed, "red", "a")
	}
	older = s.maxID
	for i := range n {
		switch i % 6 {
		case 1: // changed to blue, the red row left unmarked
			unmarked = true
			put(i, false, rowIndexed, "blue", "a")
			unmarked = false
		case 2: // deleted, its red row unmarked or marked
			unmarked = i%4 == 0
			put(i, true, rowUnmarked, "red", "a")
			unmarked = false
		case 3: // red, but tier b
			put(i, false, rowIndexed, "red", "b")
		case 4: // newest row undecoded
			put(i, false, rowUndecoded, "", "")
		}
	}
	if err := x.Commit(); err != nil {
		t.Fatal(err)
	}
	return s, older
}

// pages reads the range as kine and the apiserver page through it: ask for
// limit+1 rows, keep limit, continue after the last key while a row was
// left over. It fails when a page holds fewer rows than it should (a walk
// that stopped early makes kine answer "no more").
func pages(t *testing.T, s *store, req Request, limit int64) []string {
	t.Helper()
	var got []string
	start := req.Range.Start
	for range 1000 {
		page := req
		page.Range.Start, page.Limit = start, limit+1
		_, _, rows, err := runList(s.db, page)
		if err != nil {
			t.Fatal(err)
		}
		whole := req
		whole.Range.Start, whole.Limit = start, 0
		_, _, rest, err := runList(s.db, whole)
		if err != nil {
			t.Fatal(err)
		}
		if want := min(int(limit+1), len(rest)); len(rows) != want {
			t.Fatalf("page from %s: %d rows, want %d of the %d after it", start, len(rows), want, len(rest))
		}
		for i, r := range rows {
			if r.name != rest[i].name || r.id != rest[i].id {
				t.Fatalf("page from %s: row %d is %s/%d, want %s/%d", start, i, r.name, r.id, rest[i].name, rest[i].id)
			}
		}
		if int64(len(rows)) <= limit {
			for _, r := range rows {
				got = append(got, r.name)
			}
			return got
		}
		for _, r := range rows[:limit] {
			got = append(got, r.name)
		}
		start = rows[limit-1].name + "\x00"
	}
	t.Fatal("more than 1000 pages")
	return nil
}

// Paging through a selection whose index candidates are mostly rejected
// (superseded but unmarked, deleted, failing another requirement) and
// interleaved with undecoded rows returns every page full and, together,
// exactly what the unlimited LIST returns, by label (= and in) and field,
// at the current and an older revision.
func TestPagingThroughRejectedCandidates(t *testing.T) {
	const n = 120
	s, older := pagingStore(t, n)
	widgets := Range{Start: "/registry/widgets/", End: "/registry/widgets0"}
	for _, selc := range []selection.Selection{
		sel1(rq("color", sel.Equals, "red"), rq("tier", sel.Equals, "a")),
		sel1(rq("tier", sel.NotEquals, "b"), rq("color", sel.In, "red", "green", "red")),
		{Fields: []selection.Requirement{rq("status.phase", sel.Equals, "red")}, Labels: []selection.Requirement{rq("tier", sel.In, "a")}},
	} {
		for _, rev := range []int64{0, older, s.maxID} {
			req := Request{Range: widgets, Revision: rev, Selection: selc, FieldIndexed: s.fieldIndexed, AllRowsIndexed: true}
			if !walked(Request{Limit: 1, AllRowsIndexed: true}, translate(req)) {
				t.Fatalf("%v: not read by walking the index", selc)
			}
			_, _, all, err := runList(s.db, req)
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, r := range all {
				want = append(want, r.name)
			}
			// Matches: i%6 in {0, 5}, and 4 (undecoded); at the older
			// revision every widget.
			if rev != older && len(want) != n/2 || rev == older && len(want) != n {
				t.Fatalf("%v at %d: %d rows; the test data is not what it says", selc, rev, len(want))
			}
			for _, limit := range []int64{1, 2, 3, 7, 50} {
				if got := pages(t, s, req, limit); !slices.Equal(got, want) {
					t.Fatalf("%v at %d, limit %d: pages hold\n%v\nwant\n%v", selc, rev, limit, got, want)
				}
			}
		}
	}
}

// SQLite walks the index of the value in key order from the page's start
// key and stops at the limit: no sort of the candidates before the cut.
func TestPagingQueryPlan(t *testing.T) {
	s, older := pagingStore(t, 60)
	widgets := Range{Start: "/registry/widgets/ns/w010", End: "/registry/widgets0"}
	for _, rev := range []int64{0, older} {
		for _, selc := range []selection.Selection{
			sel1(rq("color", sel.Equals, "red")),
			sel1(rq("color", sel.In, "red", "blue")),
			self(rq("status.phase", sel.Equals, "red")),
		} {
			q := List(Request{Range: widgets, Revision: rev, Limit: 11, Selection: selc, FieldIndexed: s.fieldIndexed, AllRowsIndexed: true})
			plan := queryPlan(t, s.db, q.SQL, q.Args)
			text := strings.Join(plan, "\n")
			// Each walk of current rows is a co-routine read in index
			// order: nothing in it is sorted. (The rows superseded since an
			// older revision are found by revision and sorted.)
			walks := 0
			for i, line := range plan {
				if !strings.HasPrefix(line, "CO-ROUTINE w") {
					continue
				}
				block := plan[i+1:]
				for j, next := range block {
					if strings.HasPrefix(next, "SCAN w") {
						block = block[:j]
						break
					}
				}
				body := strings.Join(block, "\n")
				if strings.Contains(body, "USING INDEX harikube_index_current (kind=? AND name=? AND value=? AND key>? AND key<?)") {
					walks++
					if strings.Contains(body, "TEMP B-TREE") {
						t.Errorf("revision %d, %v: a walk sorts its candidates:\n%s", rev, selc, text)
					}
				}
			}
			values := 1
			if len(selc.Labels) > 0 {
				values = len(selc.Labels[0].Values)
			}
			if walks != values || strings.Contains(text, "SCAN i") || strings.Contains(text, "SCAN kv") {
				t.Errorf("revision %d, %v: %d walks of the current rows for %d values:\n%s", rev, selc, walks, values, text)
			}
		}
	}
}

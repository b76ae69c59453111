package datastore

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/harikube/harikube/pkg/index"
	"github.com/harikube/harikube/pkg/selectorsql"
)

// TestSupersededHistory writes objects whose selected label and field
// change, change back, are deleted and created again, and compares every
// selected read (current, at an older revision, paged across a write) with
// the selectors applied to an unselected read of the same revision, before
// and after a compaction at the older revision; then it
// turns the database into one from before superseded_by existed, starts
// again and checks the same while and after the rows are marked.
func TestSupersededHistory(t *testing.T) {
	forEachStore(t, testSupersededHistory)
}

func testSupersededHistory(t *testing.T, s store) {
	registry := func() *index.Registry {
		r := index.NewRegistry()
		// A definition, as a CRD's, lets the restart below trust the
		// stored index instead of re-indexing in the background, during
		// which field reads are (correctly) unfiltered supersets.
		res := widgets("spec.color")
		res.Definition = "widgets with spec.color"
		r.Register(res)
		return r
	}
	e := start(t, s, registry())
	c := e.client
	key := func(i int) string { return fmt.Sprintf("%sns/w%03d", prefix, i) }
	write := func(i int, phase string) {
		put(t, c, key(i), object(fmt.Sprintf("w%03d", i), map[string]string{"phase": phase, "stable": fmt.Sprint(i < 5)}, phase))
	}
	const n = 60
	for i := range n {
		write(i, "pending")
	}
	for i := 5; i < n; i++ {
		write(i, "done")
	}
	write(7, "pending") // changed back
	del(t, c, key(8))   // deleted, then created again with the value it had
	write(8, "pending")
	del(t, c, key(9))
	older := revisionOf(t, c)
	write(1, "done")
	write(10, "pending")
	write(9, "pending") // created again after the older revision
	write(11, "failed")

	db := s.sql(t)
	checkReads(t, c, older)
	checkMarks(t, db)
	// Compaction at the older revision keeps what reads at it need, and
	// every remaining mark names a remaining next revision.
	rows := scalar(t, db, "SELECT COUNT(*) FROM kine")
	if _, err := c.Compact(context.Background(), older); err != nil {
		t.Fatal(err)
	}
	if after := scalar(t, db, "SELECT COUNT(*) FROM kine"); after >= rows {
		t.Fatalf("compaction removed no rows (%d, then %d)", rows, after)
	}
	checkReads(t, c, older)
	checkMarks(t, db)
	db.Close()

	// A database from before superseded_by: no column, the old indexes,
	// no migration record.
	e.stop()
	db = s.sql(t)
	for _, stmt := range []string{
		"DROP INDEX harikube_index_current", "DROP INDEX harikube_index_current_num", "DROP INDEX harikube_index_superseded",
		"ALTER TABLE " + selectorsql.IndexTable + " DROP COLUMN " + selectorsql.SupersededColumn,
		"CREATE INDEX harikube_index_value ON " + selectorsql.IndexTable + " (kind, name, value, key)",
		"CREATE INDEX harikube_index_num ON " + selectorsql.IndexTable + " (kind, name, num, key) WHERE num IS NOT NULL",
		"DROP TABLE " + migrationTable,
	} {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	db.Close()
	e = start(t, s, registry())
	c = e.client
	db = s.sql(t)
	checkReads(t, c, older) // marked or not yet: the same answers
	deadline := time.Now().Add(time.Minute)
	for {
		var done, target int64
		err := db.QueryRow("SELECT done, target FROM "+migrationTable+" WHERE name = '"+supersededMigration+"'").Scan(&done, &target)
		if err == nil && done >= target && target > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("migration not finished after a minute: done %d of %d (%v)", done, target, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	checkMarks(t, db)
	write(12, "pending")
	checkReads(t, c, older)
	checkMarks(t, db)

	// datastore check agrees.
	e.stop()
	db.Close()
	if report := runCheck(t, s); len(report.Problems) != 0 {
		t.Fatalf("check: %v", report.Problems)
	}
}

func revisionOf(t *testing.T, c *clientv3.Client) int64 {
	t.Helper()
	resp, err := c.Get(context.Background(), "/none")
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

// checkMarks fails when an index row is marked superseded by anything but
// its key's next revision, or left unmarked.
func checkMarks(t *testing.T, db *sql.DB) {
	t.Helper()
	q := "SELECT COUNT(*) FROM " + selectorsql.IndexTable + " AS i WHERE COALESCE(i." + selectorsql.SupersededColumn + ", 0) <> COALESCE((SELECT MIN(k.id) FROM kine AS k WHERE k.name = i.key AND k.id > i.id), 0)"
	var wrong int
	if err := db.QueryRow(q).Scan(&wrong); err != nil {
		t.Fatal(err)
	}
	if wrong != 0 {
		t.Fatalf("%d index rows not marked superseded by their key's next revision", wrong)
	}
}

// checkReads compares selected reads with the selectors applied to the
// whole range read without a selection, at the current revision and at
// older, whole and paged (with a write between the pages).
func checkReads(t *testing.T, c *clientv3.Client, older int64) {
	t.Helper()
	for _, sel := range []struct{ label, field string }{
		{"phase=pending", ""}, {"phase in (pending,failed)", ""}, {"stable=true", ""}, {"", "spec.color=pending"},
		{"phase=done", ""}, {"phase!=done", ""}, {"phase=pending", "spec.color=pending"},
	} {
		for _, rev := range []int64{0, older} {
			want, wantRev := expected(t, c, sel.label, sel.field, rev)
			opts := []clientv3.OpOption{}
			if rev != 0 {
				opts = append(opts, clientv3.WithRev(rev))
			}
			got, count := list(t, c, selected(t, sel.label, sel.field), opts...)
			if !slices.Equal(got, want) || count != int64(len(want)) {
				t.Errorf("%q %q at revision %d: got %v (count %d), want %v", sel.label, sel.field, rev, got, count, want)
			}
			// Paged by 2: the first page fixes the revision; a write
			// between pages is not seen.
			var paged []string
			start, pageRev := prefix, rev
			for page := 0; ; page++ {
				opts := []clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)), clientv3.WithLimit(2)}
				if pageRev != 0 {
					opts = append(opts, clientv3.WithRev(pageRev))
				}
				resp, err := c.Get(selected(t, sel.label, sel.field), start, opts...)
				if err != nil {
					t.Fatal(err)
				}
				if pageRev == 0 {
					pageRev = resp.Header.Revision
					if rev == 0 && pageRev != wantRev {
						t.Fatalf("a write happened between the reads: revision %d, want %d", pageRev, wantRev)
					}
				}
				for _, kv := range resp.Kvs {
					paged = append(paged, string(kv.Key))
				}
				if want := len(want) - len(paged); resp.More && resp.Count < int64(want) {
					t.Errorf("%q %q page %d: count %d, %d more expected", sel.label, sel.field, page, resp.Count, want)
				}
				if !resp.More || len(resp.Kvs) == 0 {
					break
				}
				if page == 0 {
					put(t, c, prefix+"ns/zz-between-pages", object("zz-between-pages", map[string]string{"phase": "pending", "stable": "true"}, "pending"))
					del(t, c, prefix+"ns/zz-between-pages")
				}
				start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
			}
			if !slices.Equal(paged, want) {
				t.Errorf("%q %q at revision %d, paged: got %v, want %v", sel.label, sel.field, rev, paged, want)
			}
		}
	}
}

// expected applies the selectors to every object of the range at rev (0:
// current), read without a selection; it returns the matching keys and the
// revision read.
func expected(t *testing.T, c *clientv3.Client, label, field string, rev int64) ([]string, int64) {
	t.Helper()
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if rev != 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	resp, err := c.Get(context.Background(), prefix, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := labels.Parse(label)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := fields.ParseSelector(field)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		var o struct {
			Metadata struct {
				Name   string
				Labels map[string]string
			}
			Spec struct{ Color string }
		}
		if err := json.Unmarshal(kv.Value, &o); err != nil {
			t.Fatal(err)
		}
		if ls.Matches(labels.Set(o.Metadata.Labels)) && fs.Matches(fields.Set{"spec.color": o.Spec.Color, "metadata.name": o.Metadata.Name, "metadata.namespace": "ns"}) {
			keys = append(keys, string(kv.Key))
		}
	}
	return keys, resp.Header.Revision
}

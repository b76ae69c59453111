package selectorsql

import (
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	sel "k8s.io/apimachinery/pkg/selection"
)

// BenchmarkPage times the SQL of one page (limit 500, as the apiserver
// asks kine for 501 rows) of a paged LIST on SQLite with n widgets of 1 KiB:
// the first, a middle and the last page of the 10 % label decile=7 and the
// page of the 1-object label id=7, and the COUNT kine adds to a page with
// more after it unless the page is marked (selection.Selection.Page).
// Later pages read at an exact revision, as a continue token makes them.
//
//	go test ./pkg/selectorsql -run '^$' -bench Page -benchtime 20x
func BenchmarkPage(b *testing.B) {
	for _, n := range []int{10000, 100000} {
		db := openTestDB(b, b.TempDir())
		for _, stmt := range []string{
			`INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value)
				WITH RECURSIVE g(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM g WHERE x < ` + strconv.Itoa(n-1) + `)
				SELECT printf('/registry/widgets/ns/w%07d', x), 1, 0, 0, 0, 0, randomblob(1024), NULL FROM g`,
			`INSERT INTO ` + RowsTable + ` (id, decoded) SELECT id, 1 FROM kine`,
			`INSERT INTO ` + IndexTable + ` (id, kind, name, value, num, key) SELECT id, 'l', 'decile', CAST((id - 1) % 10 AS TEXT), (id - 1) % 10, name FROM kine`,
			`INSERT INTO ` + IndexTable + ` (id, kind, name, value, num, key) SELECT id, 'l', 'id', CAST(id - 1 AS TEXT), id - 1, name FROM kine`,
			`ANALYZE`,
		} {
			if _, err := db.Exec(stmt); err != nil {
				b.Fatalf("%s: %v", stmt, err)
			}
		}
		var rev int64
		if err := db.QueryRow("SELECT MAX(id) FROM kine").Scan(&rev); err != nil {
			b.Fatal(err)
		}
		key := func(x int) string { return fmt.Sprintf("/registry/widgets/ns/w%07d", x) }
		const end = "/registry/widgets0"
		for _, p := range []struct {
			name, label, value, start string
			revision                  int64
		}{
			{"10%/first", "decile", "7", "/registry/widgets/", 0},
			{"10%/middle", "decile", "7", key(n / 2), rev},
			{"10%/last", "decile", "7", key(n - 10*500), rev},
			{"1-object/first", "id", "7", "/registry/widgets/", 0},
		} {
			req := Request{Range: Range{Start: p.start, End: end}, Revision: p.revision, Limit: 501, KeysOnly: false,
				Selection: sel1(rq(p.label, sel.Equals, p.value)), AllRowsIndexed: true}
			_, _, rows, err := runList(db, req)
			if err != nil {
				b.Fatal(err)
			}
			more := len(rows) == 501
			b.Run(fmt.Sprintf("n=%d/%s/list", n, p.name), func(b *testing.B) {
				timeEach(b, func() error { _, _, _, err := runList(db, req); return err })
			})
			if !more {
				continue
			}
			b.Run(fmt.Sprintf("n=%d/%s/count-of-rest", n, p.name), func(b *testing.B) {
				timeEach(b, func() error { _, _, _, err := runCount(db, req); return err })
			})
		}
	}
}

// timeEach runs op b.N times and reports, beside the mean, the median of
// the runs (p50-ms), which a shared machine's spikes move less.
func timeEach(b *testing.B, op func() error) {
	samples := make([]time.Duration, 0, b.N)
	for range b.N {
		start := time.Now()
		if err := op(); err != nil {
			b.Fatal(err)
		}
		samples = append(samples, time.Since(start))
	}
	slices.Sort(samples)
	b.ReportMetric(float64(samples[len(samples)/2].Microseconds())/1000, "p50-ms")
}

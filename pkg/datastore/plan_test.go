package datastore

import (
	"database/sql"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/k3s-io/kine/pkg/query"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/harikube/harikube/pkg/selection"
	"github.com/harikube/harikube/pkg/selectorsql"
	"github.com/harikube/harikube/tests/pgserver"
)

// TestPostgresPlanForSelectiveList: with 100,000 objects, a one-match
// label or field selector is answered from the indexes — PostgreSQL plans no
// sequential scan of the kine table or the index table, at the current
// revision or an older one.
func TestPostgresPlanForSelectiveList(t *testing.T) {
	db := postgresWidgets(t)
	for _, tc := range []struct{ label, field string }{{"id=777", ""}, {"", "metadata.name=w000777"}, {"id in (5,6),other!=x", ""}} {
		var sel selection.Selection
		if tc.label != "" {
			sel = selection.FromSelectors(labels.Everything().Add(mustParse(t, tc.label)...), fields.Everything())
		} else {
			sel = selection.FromSelectors(labels.Everything(), fields.ParseSelectorOrDie(tc.field))
		}
		var queries []selectorsql.Query
		// At the current revision and at an exact older one (which also
		// reads the rows superseded since).
		for _, rev := range []int64{0, 50000} {
			queries = append(queries,
				selectorsql.List(selectorsql.Request{Range: selectorsql.Range{Start: planWidgets, End: prefixEnd(planWidgets)}, Revision: rev, Limit: 501, Selection: sel, FieldIndexed: func(string) bool { return true }, AllRowsIndexed: true}),
				selectorsql.Count(selectorsql.Request{Range: selectorsql.Range{Start: planWidgets, End: prefixEnd(planWidgets)}, Revision: rev, Selection: sel, FieldIndexed: func(string) bool { return true }, AllRowsIndexed: true}))
		}
		for _, q := range queries {
			text := strings.Join(explainPostgres(t, db, "EXPLAIN ", q), "\n")
			if strings.Contains(text, "Seq Scan on kine") || strings.Contains(text, "Seq Scan on "+selectorsql.IndexTable) {
				t.Errorf("%q %q: sequential scan in plan:\n%s", tc.label, tc.field, text)
			}
		}
	}
}

const planWidgets = "/registry/widgets/"

// postgresWidgets is a datastore's PostgreSQL database holding 100,000
// widgets ns/w000001..ns/w100000, indexed by the labels id (unique) and
// decile (10 %) and the field metadata.name.
func postgresWidgets(t *testing.T) *sql.DB {
	t.Helper()
	pg := pgserver.Start(t)
	s := store{dir: t.TempDir(), endpoint: pg.DSN()}
	start(t, s, nil).stop() // creates the schema
	db := s.sql(t)
	for _, stmt := range []string{
		`INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value)
			SELECT '` + planWidgets + `ns/w' || lpad(g::text, 6, '0'), 1, 0, 0, 0, 0, '\x00'::bytea, NULL FROM generate_series(1, 100000) AS g`,
		`INSERT INTO ` + selectorsql.RowsTable + ` (id, decoded) SELECT id, 1 FROM kine WHERE name LIKE '/registry/%' ON CONFLICT DO NOTHING`,
		`INSERT INTO ` + selectorsql.IndexTable + ` (id, kind, name, value, num, key)
			SELECT id, 'l', 'id', ltrim(substr(name, 23), '0'), NULL, name FROM kine WHERE name LIKE '` + planWidgets + `%'`,
		`INSERT INTO ` + selectorsql.IndexTable + ` (id, kind, name, value, num, key)
			SELECT id, 'l', 'decile', (id % 10)::text, id % 10, name FROM kine WHERE name LIKE '` + planWidgets + `%'`,
		`INSERT INTO ` + selectorsql.IndexTable + ` (id, kind, name, value, num, key)
			SELECT id, 'f', 'metadata.name', substr(name, 22), NULL, name FROM kine WHERE name LIKE '` + planWidgets + `%'`,
		`ANALYZE`,
	} {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	return db
}

// explainPostgres runs explain (EXPLAIN, or EXPLAIN ANALYZE) of q and
// returns the plan's lines.
func explainPostgres(t *testing.T, db *sql.DB, explain string, q selectorsql.Query) []string {
	t.Helper()
	rows, err := db.Query(explain+query.New(q.SQL, "$", true, "").Query, q.Args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, line)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return plan
}

func mustParse(t *testing.T, s string) []labels.Requirement {
	t.Helper()
	sel, err := labels.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	reqs, _ := sel.Requirements()
	return reqs
}

// TestPostgresPlanForPage: a page of a 10 % selection among 100,000 objects
// walks the index of its value in key order from the page's start key and
// stops at the limit, at the current revision and an older one: the index
// rows read (EXPLAIN ANALYZE's actual rows) are about the page, wherever
// the page starts, not the 10,000 matches.
func TestPostgresPlanForPage(t *testing.T) {
	db := postgresWidgets(t)
	const limit = 501
	for _, tc := range []struct{ label, startKey string }{
		{"decile=7", planWidgets},
		{"decile=7", planWidgets + "ns/w050000"},
		{"decile=7", planWidgets + "ns/w099000"},
		{"decile in (3,7)", planWidgets + "ns/w050000"},
	} {
		sel := selection.FromSelectors(labels.Everything().Add(mustParse(t, tc.label)...), fields.Everything())
		for _, rev := range []int64{0, 90000} {
			q := selectorsql.List(selectorsql.Request{Range: selectorsql.Range{Start: tc.startKey, End: prefixEnd(planWidgets)}, Revision: rev, Limit: limit, Selection: sel, FieldIndexed: func(string) bool { return true }, AllRowsIndexed: true})
			plan := explainPostgres(t, db, "EXPLAIN ANALYZE ", q)
			text := strings.Join(plan, "\n")
			if read := indexRowsRead(plan, "harikube_index_current"); read == 0 || read > 2*limit {
				t.Errorf("%s from %s at revision %d: %d index rows read for a page of %d:\n%s", tc.label, tc.startKey, rev, read, limit, text)
			}
			if strings.Contains(text, "Seq Scan") {
				t.Errorf("%s from %s at revision %d: sequential scan in plan:\n%s", tc.label, tc.startKey, rev, text)
			}
		}
	}
}

// indexRowsRead adds up, in an EXPLAIN ANALYZE text, the rows the scans of
// index read: returned (rows × loops) and removed by their filters.
func indexRowsRead(plan []string, index string) int {
	actual := regexp.MustCompile(`actual time=[0-9.]+\.\.[0-9.]+ rows=([0-9]+) loops=([0-9]+)`)
	removed := regexp.MustCompile(`Rows Removed by Filter: ([0-9]+)`)
	total := 0
	for i, line := range plan {
		if !strings.Contains(line, "using "+index+" ") && !strings.Contains(line, "Scan on "+index+" ") {
			continue
		}
		m := actual.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		rows, _ := strconv.Atoi(m[1])
		loops, _ := strconv.Atoi(m[2])
		total += rows * loops
		// The scan's own detail lines follow, indented deeper than it.
		depth := len(line) - len(strings.TrimLeft(line, " "))
		for _, next := range plan[i+1:] {
			if len(next)-len(strings.TrimLeft(next, " ")) <= depth {
				break
			}
			if m := removed.FindStringSubmatch(next); m != nil {
				n, _ := strconv.Atoi(m[1])
				total += n
				break
			}
		}
	}
	return total
}

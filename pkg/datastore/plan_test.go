package datastore

import (
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
	pg := pgserver.Start(t)
	s := store{dir: t.TempDir(), endpoint: pg.DSN()}
	start(t, s, nil).stop() // creates the schema
	db := s.sql(t)
	const widgets = "/registry/widgets/"
	for _, stmt := range []string{
		`INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value)
			SELECT '` + widgets + `ns/w' || g, 1, 0, 0, 0, 0, '\x00'::bytea, NULL FROM generate_series(1, 100000) AS g`,
		`INSERT INTO ` + selectorsql.RowsTable + ` (id, decoded) SELECT id, 1 FROM kine WHERE name LIKE '/registry/%' ON CONFLICT DO NOTHING`,
		`INSERT INTO ` + selectorsql.IndexTable + ` (id, kind, name, value, num, key)
			SELECT id, 'l', 'id', substr(name, 23), NULL, name FROM kine WHERE name LIKE '` + widgets + `%'`,
		`INSERT INTO ` + selectorsql.IndexTable + ` (id, kind, name, value, num, key)
			SELECT id, 'f', 'metadata.name', substr(name, 22), NULL, name FROM kine WHERE name LIKE '` + widgets + `%'`,
		`ANALYZE`,
	} {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	for _, tc := range []struct{ label, field string }{{"id=777", ""}, {"", "metadata.name=w777"}, {"id in (5,6),other!=x", ""}} {
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
				selectorsql.List(selectorsql.Request{Range: selectorsql.Range{Start: widgets, End: prefixEnd(widgets)}, Revision: rev, Limit: 501, Selection: sel, FieldIndexed: func(string) bool { return true }, AllRowsIndexed: true}),
				selectorsql.Count(selectorsql.Request{Range: selectorsql.Range{Start: widgets, End: prefixEnd(widgets)}, Revision: rev, Selection: sel, FieldIndexed: func(string) bool { return true }, AllRowsIndexed: true}))
		}
		for _, q := range queries {
			rows, err := db.Query("EXPLAIN "+query.New(q.SQL, "$", true, "").Query, q.Args...)
			if err != nil {
				t.Fatal(err)
			}
			var plan []string
			for rows.Next() {
				var line string
				if err := rows.Scan(&line); err != nil {
					t.Fatal(err)
				}
				plan = append(plan, line)
			}
			rows.Close()
			text := strings.Join(plan, "\n")
			if strings.Contains(text, "Seq Scan on kine") || strings.Contains(text, "Seq Scan on "+selectorsql.IndexTable) {
				t.Errorf("%q %q: sequential scan in plan:\n%s", tc.label, tc.field, text)
			}
		}
	}
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

package datastore

import (
	"context"
	"strings"
	"testing"

	"github.com/k3s-io/kine/pkg/tls"

	"github.com/harikube/harikube/pkg/selectorsql"
)

func runCheck(t *testing.T, s store) *CheckReport {
	t.Helper()
	var report *CheckReport
	var err error
	if s.endpoint == "" {
		report, err = CheckSQLite(context.Background(), DatabasePath(s.dir))
	} else {
		report, err = CheckPostgres(context.Background(), strings.TrimPrefix(s.endpoint, "postgres://"), tls.Config{})
	}
	if err != nil {
		t.Fatal(err)
	}
	return report
}

// The offline check passes on a clean database and reports each kind of
// disagreement, naming the object, on SQLite and PostgreSQL.
func TestCheckOnBothDatabases(t *testing.T) { forEachStore(t, testCheckOnBothDatabases) }

func testCheckOnBothDatabases(t *testing.T, s store) {
	e := start(t, s, nil)
	put(t, e.client, prefix+"ns/a", object("a", map[string]string{"app": "web"}, ""))
	put(t, e.client, prefix+"ns/b", object("b", map[string]string{"app": "db"}, ""))
	put(t, e.client, prefix+"ns/c", object("c", nil, ""))
	if s.endpoint != "" {
		// While a server holds the database, the check refuses to run.
		_, err := CheckPostgres(context.Background(), strings.TrimPrefix(s.endpoint, "postgres://"), tls.Config{})
		if err == nil || !strings.Contains(err.Error(), "the check needs the server stopped") {
			t.Fatalf("check beside a running server: %v", err)
		}
	}
	e.stop()
	if report := runCheck(t, s); len(report.Problems) != 0 || report.Rows < 3 {
		t.Fatalf("clean database: %+v", report)
	}

	db := s.sql(t)
	for _, stmt := range []string{
		"UPDATE " + selectorsql.IndexTable + " SET value = 'tampered' WHERE kind = 'l' AND key = '" + prefix + "ns/a'",
		"UPDATE " + selectorsql.IndexTable + " SET value = 'x' WHERE kind = 'f' AND name = 'metadata.name' AND key = '" + prefix + "ns/c'",
		"DELETE FROM " + selectorsql.RowsTable + " WHERE id = (SELECT MAX(id) FROM kine WHERE name = '" + prefix + "ns/b')",
		"INSERT INTO " + selectorsql.IndexTable + " (id, kind, name, value, key) VALUES (999999, 'l', 'x', 'y', 'z')",
	} {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	db.Close()
	report := runCheck(t, s)
	var out strings.Builder
	report.Write(&out)
	for _, want := range []string{
		"revision 999999: index entry without data row",
		"ns/b): no index entry",
		"ns/a): labels map[app:web] in the value, map[app:tampered] in the index",
		`ns/c): metadata.name is "c" in the value, "x" in the index`,
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

package datastore

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/k3s-io/kine/pkg/tls"

	"github.com/harikube/harikube/pkg/index"
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

// checkRunning checks a running datastore the way the server's check
// endpoint is paged, two rows a page.
func checkRunning(t *testing.T, ds *Datastore) *CheckReport {
	t.Helper()
	report := &CheckReport{}
	for after, pages := int64(0), 0; ; pages++ {
		page, last, more, err := ds.Check(context.Background(), after, 2)
		if err != nil {
			t.Fatal(err)
		}
		report.Merge(page)
		if !more {
			if pages == 0 {
				t.Fatal("the check did not page")
			}
			return report
		}
		after = last
	}
}

// A running datastore's check recomputes selectable fields with the current
// registration, reports values that differ or are missing, and leaves out
// (with a note) resources whose index holds another definition's values.
func TestCheckRecomputesFields(t *testing.T) { forEachStore(t, testCheckRecomputesFields) }

func testCheckRecomputesFields(t *testing.T, s store) {
	registry := index.NewRegistry()
	res := widgets("spec.color")
	res.Definition = "v1"
	registry.Register(res)
	e := start(t, s, registry)
	put(t, e.client, prefix+"ns/a", object("a", map[string]string{"app": "web"}, "red"))
	put(t, e.client, prefix+"ns/b", object("b", nil, "blue"))
	put(t, e.client, prefix+"ns/c", object("c", nil, ""))
	put(t, e.client, "/registry/other/ns/d", object("d", map[string]string{"app": "db"}, "red"))

	report := checkRunning(t, e.ds)
	if len(report.Problems) != 0 || report.Rows < 4 || report.Recomputed != 3 {
		t.Fatalf("clean database: %+v", report)
	}

	db := s.sql(t)
	exec := func(stmt string) {
		t.Helper()
		if _, err := db.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	exec("UPDATE " + selectorsql.IndexTable + " SET value = 'green' WHERE kind = 'f' AND name = 'spec.color' AND key = '" + prefix + "ns/a'")
	exec("DELETE FROM " + selectorsql.IndexTable + " WHERE kind = 'f' AND name = 'spec.color' AND key = '" + prefix + "ns/b'")
	exec("UPDATE " + selectorsql.IndexTable + " SET value = 'x' WHERE kind = 'l' AND key = '/registry/other/ns/d'")
	var out strings.Builder
	checkRunning(t, e.ds).Write(&out)
	for _, want := range []string{
		`ns/a): spec.color is "red" by the current definition of widgets, "green" in the index`,
		`ns/b): spec.color is "blue" by the current definition of widgets, missing from the index`,
		`/registry/other/ns/d): labels map[app:db] in the value, map[app:x] in the index`,
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "ns/c)") {
		t.Errorf("report names an object that agrees:\n%s", out.String())
	}

	// Coverage recorded for another definition: nothing is claimed for the
	// fields, so nothing is recomputed, and the report says why.
	exec("UPDATE " + coverageTable + " SET definition = 'v0' WHERE prefix = '" + prefix + "'")
	out.Reset()
	report = checkRunning(t, e.ds)
	report.Write(&out)
	if report.Recomputed != 0 || strings.Contains(out.String(), "spec.color") ||
		!strings.Contains(out.String(), "note: widgets is being re-indexed for its current definition") {
		t.Errorf("check of a resource indexed under another definition:\n%s", out.String())
	}

	// A new definition re-indexes the prefix, which repairs the values.
	res.Definition = "v2"
	registry.Register(res)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var def string
		if err := db.QueryRow("SELECT definition FROM " + coverageTable + " WHERE prefix = '" + prefix + "'").Scan(&def); err != nil {
			t.Fatal(err)
		}
		if def == "v2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("re-index under v2 did not finish (coverage definition %q)", def)
		}
		time.Sleep(50 * time.Millisecond)
	}
	out.Reset()
	report = checkRunning(t, e.ds)
	report.Write(&out)
	if report.Recomputed != 3 || strings.Contains(out.String(), "spec.color") {
		t.Errorf("check after the re-index:\n%s", out.String())
	}
}

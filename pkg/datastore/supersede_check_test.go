package datastore

import (
	"strings"
	"testing"

	"github.com/harikube/harikube/pkg/selectorsql"
)

// datastore check accepts the marks writes leave and names a mark below the
// key's next revision (reads between the two would miss the row).
func TestCheckSupersededMarks(t *testing.T) { forEachStore(t, testCheckSupersededMarks) }

func testCheckSupersededMarks(t *testing.T, s store) {
	e := start(t, s, nil)
	for _, app := range []string{"web", "db", "web", "db"} {
		put(t, e.client, prefix+"ns/a", object("a", map[string]string{"app": app}, ""))
		put(t, e.client, prefix+"ns/b", object("b", map[string]string{"app": app}, ""))
	}
	e.stop()
	if report := runCheck(t, s); len(report.Problems) != 0 {
		t.Fatalf("clean database: %v", report.Problems)
	}
	db := s.sql(t)
	if _, err := db.Exec("UPDATE " + selectorsql.IndexTable + " SET " + selectorsql.SupersededColumn + " = id + 1 WHERE key = '" + prefix + "ns/a' AND " + selectorsql.SupersededColumn + " > id + 1"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	report := runCheck(t, s)
	if len(report.Problems) == 0 || !strings.Contains(report.Problems[0], "ns/a): marked superseded by revision") {
		t.Fatalf("check of a wrong mark: %v", report.Problems)
	}
}

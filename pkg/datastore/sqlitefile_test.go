package datastore

import "testing"

func TestSQLiteFilePath(t *testing.T) {
	for dsn, want := range map[string]string{
		"/var/lib/harikube/db/state.db?_journal=WAL&cache=shared": "/var/lib/harikube/db/state.db",
		"./db/state.db":                        "./db/state.db",
		"file:/tmp/x.db?_txlock=immediate":     "/tmp/x.db",
		"":                                     "",
		"?_journal=WAL":                        "",
		":memory:":                             "",
		"file:shared?mode=memory&cache=shared": "",
	} {
		if got := sqliteFilePath(dsn); got != want {
			t.Errorf("sqliteFilePath(%q) = %q, want %q", dsn, got, want)
		}
	}
}

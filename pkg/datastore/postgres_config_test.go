package datastore

import (
	"testing"

	"github.com/k3s-io/kine/pkg/tls"
)

// A PostgreSQL endpoint that names no database uses (and creates) the
// database kubernetes; one that names a database, in its path or as dbname,
// uses that one.
func TestPostgresConfigDatabase(t *testing.T) {
	// pgx, like libpq, takes a database the DSN does not name from
	// PGDATABASE; empty is unset.
	t.Setenv("PGDATABASE", "")
	for _, c := range []struct{ dsn, want string }{
		{"postgres@db.example.com:5432", "kubernetes"},
		{"postgres@db.example.com:5432/", "kubernetes"},
		{"harikube:secret@db.example.com?sslmode=verify-full", "kubernetes"},
		{"postgres@/?host=/run/postgresql", "kubernetes"},
		{"harikube:secret@db.example.com:5432/widgets?sslmode=verify-full", "widgets"},
		{"postgres@/harikube1?host=/run/postgresql", "harikube1"},
		{"postgres@db.example.com?dbname=widgets", "widgets"},
	} {
		cfg, err := postgresConfig(c.dsn, tls.Config{})
		if err != nil {
			t.Errorf("%s: %v", c.dsn, err)
			continue
		}
		if cfg.Database != c.want {
			t.Errorf("%s: database %q, want %q", c.dsn, cfg.Database, c.want)
		}
	}

	t.Setenv("PGDATABASE", "from-env")
	for _, c := range []struct{ dsn, want string }{
		{"postgres@db.example.com:5432", "from-env"},
		{"postgres@db.example.com:5432/widgets", "widgets"},
	} {
		cfg, err := postgresConfig(c.dsn, tls.Config{})
		if err != nil {
			t.Errorf("PGDATABASE=from-env, %s: %v", c.dsn, err)
			continue
		}
		if cfg.Database != c.want {
			t.Errorf("PGDATABASE=from-env, %s: database %q, want %q", c.dsn, cfg.Database, c.want)
		}
	}
}

package datastore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/k3s-io/kine/pkg/query"
	"github.com/k3s-io/kine/pkg/tls"
)

// routesTable is the default datastore's record of where the apiserver has
// stored each resource (key prefix, resource, datastore), so that a restart
// that routes a resource elsewhere is refused while the datastore it left
// still holds objects of it: they would be hidden, not lost.
const routesTable = "harikube_routes"

// A datastore column of "" is the default datastore itself.
const routesSchema = "CREATE TABLE IF NOT EXISTS " + routesTable +
	" (prefix TEXT NOT NULL, resource TEXT NOT NULL, datastore TEXT NOT NULL, PRIMARY KEY (prefix, resource, datastore))"

var errNoIndex = errors.New("the unindexed datastore keeps no routes")

// RecordRoute notes in this (the default) datastore that the apiserver
// stores resource (e.g. "events", "widgets.example.com") under key prefix in
// the datastore of DSN dsn ("" for this one; no password: see Route).
func (d *Datastore) RecordRoute(ctx context.Context, dsn, resource, prefix string) error {
	if d.backend == nil {
		return errNoIndex
	}
	ix := d.backend.idx
	q := ix.sql("INSERT INTO " + routesTable + " (prefix, resource, datastore) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
	err := ix.gate.do(ctx, func() error {
		_, err := ix.db.ExecContext(ctx, q, prefix, resource, dsn)
		return err
	})
	if err != nil {
		return fmt.Errorf("record where %s is stored: %w", resource, err)
	}
	return nil
}

// Route is a key prefix the apiserver has stored in one datastore, with the
// resources stored under it.
type Route struct {
	// Datastore is the DSN of the datastore, its password left out; "" is
	// the default datastore.
	Datastore string
	Prefix    string
	Resources []string
}

// Routes lists what RecordRoute recorded, by datastore and prefix.
func (d *Datastore) Routes(ctx context.Context) ([]Route, error) {
	if d.backend == nil {
		return nil, errNoIndex
	}
	rows, err := d.backend.idx.db.QueryContext(ctx, "SELECT datastore, prefix, resource FROM "+routesTable+" ORDER BY datastore, prefix, resource")
	if err != nil {
		return nil, fmt.Errorf("read where resources are stored: %w", err)
	}
	defer rows.Close()
	var out []Route
	for rows.Next() {
		var r Route
		var resource string
		if err := rows.Scan(&r.Datastore, &r.Prefix, &resource); err != nil {
			return nil, fmt.Errorf("read where resources are stored: %w", err)
		}
		if n := len(out); n == 0 || out[n-1].Datastore != r.Datastore || out[n-1].Prefix != r.Prefix {
			out = append(out, r)
		}
		out[len(out)-1].Resources = append(out[len(out)-1].Resources, resource)
	}
	return out, rows.Err()
}

// ForgetRoute drops the record of a prefix in a datastore that no longer
// holds objects under it.
func (d *Datastore) ForgetRoute(ctx context.Context, dsn, prefix string) error {
	if d.backend == nil {
		return errNoIndex
	}
	ix := d.backend.idx
	q := ix.sql("DELETE FROM " + routesTable + " WHERE datastore = ? AND prefix = ?")
	return ix.gate.do(ctx, func() error {
		_, err := ix.db.ExecContext(ctx, q, dsn, prefix)
		return err
	})
}

// liveKeysSQL counts the keys under a prefix whose newest row is not a
// deletion.
const liveKeysSQL = "SELECT COUNT(*) FROM kine AS k WHERE k.name >= ? AND k.name < ? AND k.deleted = 0 " +
	"AND k.id = (SELECT MAX(m.id) FROM kine AS m WHERE m.name = k.name)"

// LiveKeys counts the objects under prefix in this running datastore.
func (d *Datastore) LiveKeys(ctx context.Context, prefix string) (int64, error) {
	if d.backend == nil {
		return 0, errNoIndex
	}
	ix := d.backend.idx
	var n int64
	if err := ix.db.QueryRowContext(ctx, ix.sql(liveKeysSQL), prefix, prefixEnd(prefix)).Scan(&n); err != nil {
		return 0, fmt.Errorf("count the objects under %s in datastore %s: %w", prefix, d.Name, err)
	}
	return n, nil
}

// LiveKeysAt counts the objects under prefix in the database of endpoint
// (sqlite:///path or postgres://…), which no datastore of this process
// serves: a SQLite file that does not exist holds none.
func LiveKeysAt(ctx context.Context, endpoint string, t tls.Config, prefix string) (int64, error) {
	scheme, dsn, _ := strings.Cut(endpoint, "://")
	var db *sql.DB
	numbered := false
	switch scheme {
	case "sqlite":
		path := sqliteFilePath(dsn)
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
		var err error
		if db, err = sql.Open("sqlite", "file://"+path+"?mode=ro&_pragma=busy_timeout(10000)"); err != nil {
			return 0, fmt.Errorf("open database %s: %w", path, err)
		}
	case "postgres", "postgresql":
		c, err := postgresConfig(dsn, t)
		if err != nil {
			return 0, err
		}
		db, numbered = stdlib.OpenDB(*c), true
	default:
		return 0, fmt.Errorf("datastore endpoint scheme %q is not supported", scheme)
	}
	defer db.Close()
	var tables int
	if err := db.QueryRowContext(ctx, kineTableSQL(numbered)).Scan(&tables); err != nil {
		return 0, fmt.Errorf("open %s: %w", redact(endpoint), err)
	}
	if tables == 0 {
		return 0, nil
	}
	var n int64
	param := "?"
	if numbered {
		param = "$"
	}
	if err := db.QueryRowContext(ctx, query.New(liveKeysSQL, param, numbered, "").Query, prefix, prefixEnd(prefix)).Scan(&n); err != nil {
		return 0, fmt.Errorf("count the objects under %s in %s: %w", prefix, redact(endpoint), err)
	}
	return n, nil
}

func kineTableSQL(postgres bool) string {
	if postgres {
		return "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'kine'"
	}
	return "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'kine'"
}

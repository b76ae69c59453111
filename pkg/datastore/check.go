package datastore

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"maps"
	"sync"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/k3s-io/kine/pkg/query"
	"github.com/k3s-io/kine/pkg/tls"

	"github.com/harikube/harikube/pkg/index"
	"github.com/harikube/harikube/pkg/selectorsql"
)

// CheckReport is the outcome of Check.
type CheckReport struct {
	Rows      int      // live rows checked
	Problems  []string // empty when the index agrees with the data
	truncated int
}

const maxReported = 50

func (r *CheckReport) add(format string, args ...any) {
	if len(r.Problems) >= maxReported {
		r.truncated++
		return
	}
	r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
}

// Write prints the report for a person.
func (r *CheckReport) Write(w io.Writer) {
	if len(r.Problems) == 0 {
		fmt.Fprintf(w, "ok: %d live rows, index consistent with data\n", r.Rows)
		return
	}
	fmt.Fprintf(w, "%d problems in %d live rows:\n", len(r.Problems)+r.truncated, r.Rows)
	for _, p := range r.Problems {
		fmt.Fprintf(w, "  %s\n", p)
	}
	if r.truncated > 0 {
		fmt.Fprintf(w, "  ... and %d more\n", r.truncated)
	}
}

// CheckSQLite verifies the index of a SQLite database file offline: every
// live row has an index entry, no index row outlives its data row, and the
// labels, names and namespaces indexed are the ones stored in the value.
func CheckSQLite(ctx context.Context, path string) (*CheckReport, error) {
	db, err := sql.Open("sqlite", "file://"+path+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	defer db.Close()
	return check(ctx, checkDB{db: db, tables: "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('kine', ?)"})
}

// CheckPostgres is CheckSQLite for a postgres:// endpoint (with Kine's TLS
// options). It holds the database's writer lock while it runs, so it
// refuses to run while a server writes to the database.
func CheckPostgres(ctx context.Context, endpoint string, t tls.Config) (*CheckReport, error) {
	c, err := postgresConfig(endpoint, t)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	if err := holdWriterLock(ctx, &wg, c); err != nil {
		return nil, fmt.Errorf("%w (the check needs the server stopped)", err)
	}
	db := stdlib.OpenDB(*c)
	defer db.Close()
	return check(ctx, checkDB{db: db, numbered: true,
		tables: "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name IN ('kine', ?)"})
}

// checkDB is a database to check: its connection, whether its placeholders
// are numbered ($1), and how to count the tables named kine and ?.
type checkDB struct {
	db       *sql.DB
	numbered bool
	tables   string
}

func (c checkDB) sql(q string) string {
	if !c.numbered {
		return q
	}
	return query.New(q, "$", true, "").Query
}

func check(ctx context.Context, c checkDB) (*CheckReport, error) {
	db := c.db
	r := &CheckReport{}
	var tables int
	if err := db.QueryRowContext(ctx, c.sql(c.tables), selectorsql.RowsTable).Scan(&tables); err != nil {
		return nil, fmt.Errorf("read schema (is this a harikube database?): %w", err)
	}
	if tables != 2 {
		return nil, fmt.Errorf("no kine and index tables found: not a harikube database, or never started")
	}

	// Index rows without their data row.
	rows, err := db.QueryContext(ctx, "SELECT DISTINCT i.id FROM "+selectorsql.IndexTable+" AS i WHERE NOT EXISTS (SELECT 1 FROM kine AS k WHERE k.id = i.id) UNION SELECT r.id FROM "+selectorsql.RowsTable+" AS r WHERE NOT EXISTS (SELECT 1 FROM kine AS k WHERE k.id = r.id)")
	if err != nil {
		return nil, fmt.Errorf("look for orphaned index rows: %w", err)
	}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, err
		}
		r.add("revision %d: index entry without data row", id)
	}
	rows.Close()

	// Every live row against its index entry.
	rows, err = db.QueryContext(ctx, "SELECT k.id, k.name, k.value, r.decoded FROM kine AS k LEFT JOIN "+selectorsql.RowsTable+" AS r ON r.id = k.id WHERE k.deleted = 0 AND k.name NOT LIKE 'gap-%' ORDER BY k.id")
	if err != nil {
		return nil, fmt.Errorf("read rows: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var key string
		var value []byte
		var decoded sql.NullInt64
		if err := rows.Scan(&id, &key, &value, &decoded); err != nil {
			return nil, err
		}
		r.Rows++
		if !decoded.Valid {
			r.add("revision %d (%s): no index entry", id, key)
			continue
		}
		if decoded.Int64 == 0 {
			continue // stored as "may match"; nothing to compare
		}
		if err := checkEntry(ctx, c, r, id, key, value); err != nil {
			return nil, err
		}
	}
	return r, rows.Err()
}

// checkEntry compares what any decoder can read from the value — labels,
// name, namespace — with the index rows of revision id.
func checkEntry(ctx context.Context, c checkDB, r *CheckReport, id int64, key string, value []byte) error {
	idx, err := c.db.QueryContext(ctx, c.sql("SELECT kind, name, value FROM "+selectorsql.IndexTable+" WHERE id = ?"), id)
	if err != nil {
		return fmt.Errorf("read index of revision %d: %w", id, err)
	}
	indexedLabels := map[string]string{}
	indexedFields := map[string]string{}
	for idx.Next() {
		var kind, name, v string
		if err := idx.Scan(&kind, &name, &v); err != nil {
			idx.Close()
			return err
		}
		if kind == selectorsql.KindLabel {
			indexedLabels[name] = v
		} else {
			indexedFields[name] = v
		}
	}
	idx.Close()
	meta, err := index.DecodeMetadata(value)
	if err != nil {
		r.add("revision %d (%s): indexed as decoded, but the value does not decode: %v", id, key, err)
		return nil
	}
	want := map[string]string{}
	for k, v := range meta.Labels {
		want[k] = selectorsql.IndexValue(v)
	}
	if !maps.Equal(want, indexedLabels) {
		r.add("revision %d (%s): labels %v in the value, %v in the index", id, key, want, indexedLabels)
	}
	for field, v := range map[string]string{index.FieldName: meta.Name, index.FieldNamespace: meta.Namespace} {
		got, ok := indexedFields[field]
		// Registered resources index what their attribute function
		// returns, which is the metadata for these two fields.
		if !ok || got != selectorsql.IndexValue(v) {
			r.add("revision %d (%s): %s is %q in the value, %q in the index", id, key, field, v, got)
		}
	}
	return nil
}

package datastore

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"sync"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/k3s-io/kine/pkg/query"
	"github.com/k3s-io/kine/pkg/tls"

	"github.com/harikube/harikube/pkg/index"
	"github.com/harikube/harikube/pkg/selectorsql"
)

// CheckReport is the outcome of a check.
type CheckReport struct {
	Rows     int      `json:"rows"`     // live rows checked
	Problems []string `json:"problems"` // empty when the index agrees with the data
	// Recomputed counts the live rows whose selectable fields were
	// recomputed with their resource's current definition.
	Recomputed int `json:"recomputed"`
	// Notes say what was not verified, and why.
	Notes     []string `json:"notes,omitempty"`
	Truncated int      `json:"truncated,omitempty"` // problems not listed
}

const maxReported = 50

func (r *CheckReport) add(format string, args ...any) {
	if len(r.Problems) >= maxReported {
		r.Truncated++
		return
	}
	r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
}

func (r *CheckReport) note(n string) {
	if !slices.Contains(r.Notes, n) {
		r.Notes = append(r.Notes, n)
	}
}

// Merge adds the report of a later page of the same check.
func (r *CheckReport) Merge(page *CheckReport) {
	r.Rows += page.Rows
	r.Recomputed += page.Recomputed
	for _, p := range page.Problems {
		r.add("%s", p)
	}
	r.Truncated += page.Truncated
	for _, n := range page.Notes {
		r.note(n)
	}
}

// Write prints the report for a person.
func (r *CheckReport) Write(w io.Writer) {
	if len(r.Problems) == 0 {
		fmt.Fprintf(w, "ok: %d live rows, index consistent with data", r.Rows)
		if r.Recomputed > 0 {
			fmt.Fprintf(w, " (selectable fields of %d recomputed from the current definitions)", r.Recomputed)
		}
		fmt.Fprintln(w)
	} else {
		fmt.Fprintf(w, "%d problems in %d live rows:\n", len(r.Problems)+r.Truncated, r.Rows)
		for _, p := range r.Problems {
			fmt.Fprintf(w, "  %s\n", p)
		}
		if r.Truncated > 0 {
			fmt.Fprintf(w, "  ... and %d more\n", r.Truncated)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

// CheckSQLite verifies the index of a SQLite database file offline: every
// live row has an index entry, no index row outlives its data row, and the
// labels, names and namespaces indexed are the ones stored in the value.
// Other selectable fields need the definitions a running server has: see
// Datastore.Check.
func CheckSQLite(ctx context.Context, path string) (*CheckReport, error) {
	db, err := sql.Open("sqlite", "file://"+path+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	defer db.Close()
	return checkOffline(ctx, checkDB{db: db, tables: sqliteTables})
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
	if err := holdWriterLock(ctx, &wg, c, nil); err != nil {
		return nil, fmt.Errorf("%w (the check needs the server stopped)", err)
	}
	db := stdlib.OpenDB(*c)
	defer db.Close()
	return checkOffline(ctx, checkDB{db: db, numbered: true, tables: postgresTables})
}

const (
	sqliteTables   = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('kine', ?)"
	postgresTables = "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name IN ('kine', ?)"
)

// querier is a database or one transaction of it.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// checkDB is a database to check: its connection, whether its placeholders
// are numbered ($1), and how to count the tables named kine and ?.
type checkDB struct {
	db       querier
	numbered bool
	tables   string
}

func (c checkDB) sql(q string) string {
	if !c.numbered {
		return q
	}
	return query.New(q, "$", true, "").Query
}

func checkOffline(ctx context.Context, c checkDB) (*CheckReport, error) {
	r := &CheckReport{}
	if _, _, err := checkPage(ctx, c, r, 0, 0, nil); err != nil {
		return nil, err
	}
	r.note("selectable fields other than metadata.name and metadata.namespace are recomputed only by a check while the server runs")
	return r, nil
}

// checkPage checks the live rows after revision `after`, at most limit of
// them (0: all), and the index rows in the revisions they span. It returns
// the last revision checked and whether rows remain. With definitions, the
// index values of registered resources are recomputed with their current
// extractors; without, what any decoder reads (labels, name, namespace) is
// compared.
func checkPage(ctx context.Context, c checkDB, r *CheckReport, after, limit int64, defs *definitions) (last int64, more bool, err error) {
	db := c.db
	var tables int
	if err := db.QueryRowContext(ctx, c.sql(c.tables), selectorsql.RowsTable).Scan(&tables); err != nil {
		return 0, false, fmt.Errorf("read schema (is this a harikube database?): %w", err)
	}
	if tables != 2 {
		return 0, false, fmt.Errorf("no kine and index tables found: not a harikube database, or never started")
	}

	// Every live row against its index entry.
	q := "SELECT k.id, k.name, k.value, r.decoded FROM kine AS k LEFT JOIN " + selectorsql.RowsTable + " AS r ON r.id = k.id WHERE k.id > ? AND k.deleted = 0 AND k.name NOT LIKE 'gap-%' ORDER BY k.id"
	if limit > 0 {
		q += fmt.Sprintf(" LIMIT %d", limit)
	}
	rows, err := db.QueryContext(ctx, c.sql(q), after)
	if err != nil {
		return 0, false, fmt.Errorf("read rows: %w", err)
	}
	type live struct {
		id      int64
		key     string
		value   []byte
		decoded sql.NullInt64
	}
	var page []live
	for rows.Next() {
		var l live
		if err := rows.Scan(&l.id, &l.key, &l.value, &l.decoded); err != nil {
			rows.Close()
			return 0, false, err
		}
		page = append(page, l)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, false, fmt.Errorf("read rows: %w", err)
	}
	last = after
	more = limit > 0 && int64(len(page)) == limit
	for _, l := range page {
		last = l.id
		r.Rows++
		if !l.decoded.Valid {
			r.add("revision %d (%s): no index entry", l.id, l.key)
			continue
		}
		if l.decoded.Int64 == 0 {
			continue // stored as "may match"; nothing to compare
		}
		if err := checkEntry(ctx, c, r, l.id, l.key, l.value, defs); err != nil {
			return 0, false, err
		}
	}

	// Index rows without their data row, in the revisions this page spans
	// (the last page: every revision after it).
	orphans := "SELECT DISTINCT i.id FROM " + selectorsql.IndexTable + " AS i WHERE i.id > ? AND i.id <= ? AND NOT EXISTS (SELECT 1 FROM kine AS k WHERE k.id = i.id) UNION SELECT r.id FROM " + selectorsql.RowsTable + " AS r WHERE r.id > ? AND r.id <= ? AND NOT EXISTS (SELECT 1 FROM kine AS k WHERE k.id = r.id)"
	upTo := last
	if !more {
		upTo = math.MaxInt64
	}
	if err := checkSuperseded(ctx, c, r, after, upTo); err != nil {
		return 0, false, err
	}
	rows, err = db.QueryContext(ctx, c.sql(orphans), after, upTo, after, upTo)
	if err != nil {
		return 0, false, fmt.Errorf("look for orphaned index rows: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return 0, false, err
		}
		r.add("revision %d: index entry without data row", id)
	}
	return last, more, rows.Err()
}

// checkEntry compares the index rows of revision id with what is computed
// from its value now.
func checkEntry(ctx context.Context, c checkDB, r *CheckReport, id int64, key string, value []byte, defs *definitions) error {
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
	if err := idx.Err(); err != nil {
		return fmt.Errorf("read index of revision %d: %w", id, err)
	}
	meta, err := index.DecodeMetadata(value)
	if err != nil {
		r.add("revision %d (%s): indexed as decoded, but the value does not decode: %v", id, key, err)
		return nil
	}
	for field, v := range map[string]string{index.FieldName: meta.Name, index.FieldNamespace: meta.Namespace} {
		got, ok := indexedFields[field]
		// Registered resources index what their attribute function
		// returns, which is the metadata for these two fields.
		if !ok || got != selectorsql.IndexValue(v) {
			r.add("revision %d (%s): %s is %q in the value, %q in the index", id, key, field, v, got)
		}
	}

	claim := defs.claimFor(key, r)
	labels := meta.Labels
	if claim.res != nil {
		fresh := claim.res.Entry(value)
		if !fresh.Decoded {
			r.add("revision %d (%s): indexed as decoded, but %s's current definition does not decode it", id, key, claim.res.Name)
			return nil
		}
		labels = fresh.Labels
		r.Recomputed++
		for field := range claim.fields {
			want := selectorsql.IndexValue(fresh.Fields[field])
			if got, ok := indexedFields[field]; !ok {
				r.add("revision %d (%s): %s is %q by the current definition of %s, missing from the index", id, key, field, want, claim.res.Name)
			} else if got != want {
				r.add("revision %d (%s): %s is %q by the current definition of %s, %q in the index", id, key, field, want, claim.res.Name, got)
			}
		}
	}
	if !claim.labels {
		return nil
	}
	want := map[string]string{}
	for k, v := range labels {
		want[k] = selectorsql.IndexValue(v)
	}
	if !maps.Equal(want, indexedLabels) {
		r.add("revision %d (%s): labels %v in the value, %v in the index", id, key, want, indexedLabels)
	}
	return nil
}

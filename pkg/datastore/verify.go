package datastore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/k3s-io/kine/pkg/tls"

	"github.com/harikube/harikube/pkg/index"
)

// ErrInUse is matched (errors.Is) by the error for a data directory or a
// database that a running server holds.
var ErrInUse = errors.New("in use by a running server")

type inUseError struct{ msg string }

func (e *inUseError) Error() string        { return e.msg }
func (e *inUseError) Is(target error) bool { return target == ErrInUse }

// InUse returns an error that says msg and matches ErrInUse.
func InUse(msg string) error { return &inUseError{msg: msg} }

// definitions is what a running server knows of each key prefix: the
// registration that extracts it now, and the coverage the index claims for
// it, read in the same transaction as the rows checked.
type definitions struct {
	registry *index.Registry
	coverage map[string]stored
}

// claim is what the index answers in SQL for one key, and so what a check
// must find exact in it.
type claim struct {
	// res recomputes the entry; nil when the index claims no field beyond
	// metadata.name and metadata.namespace for the key.
	res    *index.Resource
	fields map[string]bool
	labels bool
}

// claimFor is the claim for key; it notes in r why a registered resource's
// fields are not recomputed.
func (d *definitions) claimFor(key string, r *CheckReport) claim {
	if d == nil {
		return claim{labels: true}
	}
	res, registered := d.registry.Lookup(key)
	if !registered || res.Extract == nil {
		return claim{labels: true} // the generic decoder: metadata only
	}
	cov, known := d.coverage[res.Prefix]
	if !known || res.Definition == "" || cov.definition != res.Definition {
		r.note(fmt.Sprintf("%s is being re-indexed for its current definition: until that finishes its field "+
			"selectors are filtered by the apiserver, and its stored field values were not recomputed", res.Name))
		return claim{labels: !known || cov.labels}
	}
	fields := map[string]bool{}
	for f := range fieldSet(res) {
		if cov.fields[f] {
			fields[f] = true
		}
	}
	return claim{res: &res, fields: fields, labels: cov.labels}
}

// checkSource opens a read-only view of a running datastore's database.
type checkSource struct {
	open     func() (*sql.DB, error)
	numbered bool
	tables   string
	txOpts   *sql.TxOptions
}

func sqliteCheckSource(path string) checkSource {
	return checkSource{
		open: func() (*sql.DB, error) {
			return sql.Open("sqlite", "file://"+path+"?mode=ro&_pragma=busy_timeout(10000)")
		},
		tables: sqliteTables,
		txOpts: &sql.TxOptions{ReadOnly: true},
	}
}

func postgresCheckSource(dsn string, t tls.Config) checkSource {
	return checkSource{
		open: func() (*sql.DB, error) {
			c, err := postgresConfig(dsn, t)
			if err != nil {
				return nil, err
			}
			return stdlib.OpenDB(*c), nil
		},
		numbered: true,
		tables:   postgresTables,
		// One snapshot for the page: rows, index rows and coverage agree.
		txOpts: &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true},
	}
}

// checker checks a running datastore page by page.
type checker struct {
	src      checkSource
	registry *index.Registry
	once     sync.Once
	db       *sql.DB
	err      error
}

// Check verifies the index of a running datastore, like CheckSQLite, and
// recomputes every value the index answers in SQL — labels and selectable
// fields — with the resource's current definition, as registered by the
// apiserver in this process. It checks at most limit live rows after
// revision after, in one read-only snapshot, so a long check is a series of
// short reads beside the writes; it returns the last revision checked and
// whether rows remain.
func (d *Datastore) Check(ctx context.Context, after, limit int64) (report *CheckReport, last int64, more bool, err error) {
	if d.checker == nil {
		return nil, 0, false, fmt.Errorf("the stock Kine driver has no index to check")
	}
	return d.checker.page(ctx, after, limit)
}

func (c *checker) page(ctx context.Context, after, limit int64) (*CheckReport, int64, bool, error) {
	c.once.Do(func() { c.db, c.err = c.src.open() })
	if c.err != nil {
		return nil, 0, false, fmt.Errorf("open database for the check: %w", c.err)
	}
	tx, err := c.db.BeginTx(ctx, c.src.txOpts)
	if err != nil {
		return nil, 0, false, fmt.Errorf("begin the check's read: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	cdb := checkDB{db: tx, numbered: c.src.numbered, tables: c.src.tables}
	persisted, err := readCoverage(ctx, tx)
	if err != nil {
		return nil, 0, false, err
	}
	defs := &definitions{registry: c.registry, coverage: persisted}
	r := &CheckReport{}
	last, more, err := checkPage(ctx, cdb, r, after, limit, defs)
	if err != nil {
		return nil, 0, false, err
	}
	return r, last, more, nil
}

// close releases the checker's connection.
func (c *checker) close() {
	if c != nil && c.db != nil {
		c.db.Close()
	}
}

package datastore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/k3s-io/kine/pkg/drivers/generic"
	"github.com/k3s-io/kine/pkg/query"
	"github.com/k3s-io/kine/pkg/server"
	"github.com/sirupsen/logrus"

	"github.com/harikube/harikube/pkg/selection"
	"github.com/harikube/harikube/pkg/selectorsql"
)

// dialect is kine's generic SQL dialect with the index kept in step: every
// insert also writes the row's index entries in the same transaction, and
// reads that carry a selection run harikube's filtered SQL instead of kine's.
type dialect struct {
	*generic.Generic
	idx *indexer
	// numbered placeholders ($1, $2, ...) for PostgreSQL, "?" for SQLite.
	param    string
	numbered bool
	// committed is the highest revision committed through this dialect.
	committed atomic.Int64
	gate      *writeGate
	// prepareGrouped: see database.prepareGrouped.
	prepareGrouped bool
}

// noteCommitted records that revision rev is committed.
func (d *dialect) noteCommitted(rev int64) {
	for {
		cur := d.committed.Load()
		if rev <= cur || d.committed.CompareAndSwap(cur, rev) {
			return
		}
	}
}

var _ server.Dialect = (*dialect)(nil)

// prepare converts the "?" placeholders selectorsql renders for this database.
func (d *dialect) prepare(q selectorsql.Query, name string) (string, []any) {
	return query.New(q.SQL, d.param, d.numbered, name).Query, q.Args
}

func (d *dialect) selected(ctx context.Context) (selection.Selection, bool) {
	s, ok, err := selection.FromIncomingContext(ctx)
	if err != nil {
		// An unreadable selection only costs the pushdown.
		logrus.Debugf("Ignoring selection: %v", err)
		return selection.Selection{}, false
	}
	if n := selectionTerms(s); n > maxSelectionTerms {
		// Each key and value is a bind parameter, twice when the term
		// drives the query: past SQLite's 32,766 (PostgreSQL's 65,535)
		// the statement fails. The apiserver filters the unfiltered range.
		logrus.Debugf("Ignoring selection: %d keys and values, more than %d", n, maxSelectionTerms)
		return selection.Selection{}, false
	}
	return s, ok
}

// maxSelectionTerms bounds the keys and values of a selection answered in
// SQL, well below the databases' bind-parameter limits.
const maxSelectionTerms = 8000

func selectionTerms(s selection.Selection) int {
	n := 0
	for _, reqs := range [][]selection.Requirement{s.Labels, s.Fields} {
		for _, r := range reqs {
			n += 1 + len(r.Values)
		}
	}
	return n
}

func (d *dialect) request(key, end string, limit, revision int64, includeDeleted, keysOnly bool, s selection.Selection) selectorsql.Request {
	fieldIndexed, labels := d.idx.coverageFor(key)
	if !labels {
		s.Labels = nil
	}
	return selectorsql.Request{
		Range:          selectorsql.Range{Start: key, End: end},
		Revision:       revision,
		Limit:          limit,
		IncludeDeleted: includeDeleted,
		KeysOnly:       keysOnly,
		Selection:      s,
		FieldIndexed:   fieldIndexed,
		// Every insert indexes its row in its own transaction, and rows
		// from before the index are backfilled before the server starts.
		AllRowsIndexed: true,
	}
}

// ListCurrent and List answer range reads with harikube's SQL, with or
// without a selection: kine's own range query materialises every key of the
// range (values included) before applying the limit, so each page of a
// paginated list costs as much as the whole list; this one walks the key
// index in order and stops at the limit. Single keys and the whole keyspace
// stay with kine.
func (d *dialect) ListCurrent(ctx context.Context, key, end string, limit int64, includeDeleted, keysOnly bool) (*sql.Rows, error) {
	s, ok := d.selected(ctx)
	if !ok && (key == "" || end == "") {
		return d.Generic.ListCurrent(ctx, key, end, limit, includeDeleted, keysOnly)
	}
	q, args := d.prepare(selectorsql.List(d.request(key, end, limit, 0, includeDeleted, keysOnly, s)), "HarikubeListCurrent")
	return d.DB.QueryContext(ctx, q, args...)
}

func (d *dialect) List(ctx context.Context, key, end string, limit, revision int64, includeDeleted, keysOnly bool) (*sql.Rows, error) {
	s, ok := d.selected(ctx)
	if !ok && (key == "" || end == "") {
		return d.Generic.List(ctx, key, end, limit, revision, includeDeleted, keysOnly)
	}
	q, args := d.prepare(selectorsql.List(d.request(key, end, limit, revision, includeDeleted, keysOnly, s)), "HarikubeList")
	return d.DB.QueryContext(ctx, q, args...)
}

func (d *dialect) CountCurrent(ctx context.Context, key, end string) (int64, int64, error) {
	s, ok := d.selected(ctx)
	if !ok {
		return d.Generic.CountCurrent(ctx, key, end)
	}
	rev, _, count, err := d.count(ctx, d.request(key, end, 0, 0, false, true, s))
	return rev, count, err
}

func (d *dialect) Count(ctx context.Context, key, end string, revision int64) (int64, int64, int64, error) {
	s, ok := d.selected(ctx)
	if !ok {
		return d.Generic.Count(ctx, key, end, revision)
	}
	return d.count(ctx, d.request(key, end, 0, revision, false, true, s))
}

func (d *dialect) count(ctx context.Context, req selectorsql.Request) (int64, int64, int64, error) {
	q, args := d.prepare(selectorsql.Count(req), "HarikubeCount")
	var rev, compact sql.NullInt64
	var count int64
	if err := d.DB.QueryRowContext(ctx, q, args...).Scan(&rev, &compact, &count); err != nil {
		return 0, 0, 0, fmt.Errorf("count with selection: %w", err)
	}
	return rev.Int64, compact.Int64, count, nil
}

// BeginTx returns a transaction whose inserts also write the index. A
// client's write (withGroupCommit) joins the open write group.
func (d *dialect) BeginTx(ctx context.Context, opts *sql.TxOptions) (server.Transaction, error) {
	if opts == nil {
		opts = &sql.TxOptions{Isolation: sql.LevelRepeatableRead}
	}
	if groupCommit(ctx) && d.gate != nil {
		return d.beginGrouped(ctx, opts)
	}
	leave, err := d.gate.enter(ctx)
	if err != nil {
		return nil, err
	}
	d.idx.defs.RLock()
	release := sync.OnceFunc(func() {
		d.idx.defs.RUnlock()
		leave()
	})
	x, err := d.DB.BeginTx(ctx, opts)
	if err != nil {
		release()
		return nil, err
	}
	return &tx{x: x, d: d, release: release}, nil
}

// groupSavepoint encloses each write of a group, so a failed one rolls
// back alone.
const groupSavepoint = "harikube_write"

// beginGrouped joins the open write group, or opens one, once through the
// gate. The group holds the definitions' read lock for its whole life; a
// registration waiting for it ends the group instead of waiting for it to
// fill up.
func (d *dialect) beginGrouped(ctx context.Context, opts *sql.TxOptions) (server.Transaction, error) {
	if err := d.gate.take(ctx, true); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		d.gate.pass()
		return nil, err
	}
	grp := d.gate.group()
	if grp != nil {
		if d.idx.defs.TryRLock() {
			d.idx.defs.RUnlock()
		} else {
			d.gate.flush()
			grp = nil
		}
	}
	if grp == nil {
		d.idx.defs.RLock()
		// The group outlives the context of the write that opened it.
		x, err := d.DB.BeginTx(context.Background(), opts)
		if err != nil {
			d.idx.defs.RUnlock()
			d.gate.pass()
			return nil, err
		}
		grp = newWriteGroup(x, func(grp *writeGroup) {
			if grp.err == nil && grp.inserted != 0 {
				d.noteCommitted(grp.inserted)
			}
			d.idx.defs.RUnlock()
		})
		d.gate.setGroup(grp)
	}
	grp.writes++
	if _, err := grp.x.ExecContext(context.WithoutCancel(ctx), "SAVEPOINT "+groupSavepoint); err != nil {
		grp.fail(err)
		d.gate.pass()
		return nil, errors.Join(err, grp.wait())
	}
	return &tx{x: grp.x, d: d, group: grp}, nil
}

// Fill writes the gap row kine's poller inserts for a revision it saw
// missing; it takes its turn at the write gate like every other write.
func (d *dialect) Fill(ctx context.Context, revision int64) error {
	return d.gate.do(ctx, func() error { return d.Generic.Fill(ctx, revision) })
}

// PostCompact checkpoints SQLite's write-ahead log after a compaction. The
// checkpoint waits for the writer to finish; at the gate it gets its turn
// instead of polling for a pause in a stream of writes.
func (d *dialect) PostCompact(ctx context.Context) error {
	return d.gate.do(ctx, func() error { return d.Generic.PostCompact(ctx) })
}

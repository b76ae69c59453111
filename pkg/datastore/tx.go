package datastore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/k3s-io/kine/pkg/server"
	"github.com/sirupsen/logrus"

	"github.com/harikube/harikube/pkg/index"
)

// tx mirrors kine's generic transaction, whose fields are unexported, and
// adds the index rows to each insert.
type tx struct {
	x *sql.Tx
	d *dialect
	// inserted is the highest revision this transaction inserted.
	inserted int64
	// release lets the next writer through the dialect's gate and ends the
	// transaction's hold on the indexer's registrations.
	release func()
	// group, when set, is the write group whose transaction x is: this
	// write is its savepoint groupSavepoint, and ended says it was
	// released or rolled back.
	group *writeGroup
	ended bool
}

var _ server.Transaction = (*tx)(nil)

// Commit commits, or for a grouped write releases its savepoint and waits
// for the group's commit: a write is answered only once it is durable.
func (t *tx) Commit() error {
	if t.group != nil {
		return t.endGrouped(true)
	}
	defer t.release()
	err := t.x.Commit()
	if err == nil && t.inserted != 0 {
		t.d.noteCommitted(t.inserted)
	}
	return err
}

func (t *tx) Rollback() error {
	if t.group != nil {
		return t.endGrouped(false)
	}
	defer t.release()
	return t.x.Rollback()
}

// endGrouped releases (commit) or rolls back this write's savepoint, hands
// the gate on and waits for the group to end. A failure here dooms the
// group: its transaction may no longer be the one the savepoint was in.
func (t *tx) endGrouped(commit bool) error {
	if t.ended {
		return sql.ErrTxDone
	}
	t.ended = true
	grp := t.group
	if grp.waiting.IsZero() {
		grp.waiting = time.Now()
	}
	stmts := []string{"ROLLBACK TO SAVEPOINT " + groupSavepoint, "RELEASE SAVEPOINT " + groupSavepoint}
	if commit {
		stmts = stmts[1:]
	}
	for _, stmt := range stmts {
		if _, err := t.x.ExecContext(context.Background(), stmt); err != nil {
			grp.fail(fmt.Errorf("%s: %w", stmt, err))
			break
		}
	}
	if commit {
		grp.inserted = max(grp.inserted, t.inserted)
	}
	t.d.gate.pass()
	return grp.wait()
}

func (t *tx) MustCommit() {
	if err := t.Commit(); err != nil {
		logrus.Fatalf("Transaction commit failed: %v", err)
	}
}

func (t *tx) MustRollback() {
	if err := t.Rollback(); err != nil && !errors.Is(err, sql.ErrTxDone) {
		logrus.Fatalf("Transaction rollback failed: %v", err)
	}
}

func (t *tx) scalar(ctx context.Context, q string, args ...any) (int64, error) {
	var v sql.NullInt64
	err := t.x.QueryRowContext(ctx, q, args...).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return v.Int64, err
}

func (t *tx) GetCompactRevision(ctx context.Context) (int64, error) {
	return t.scalar(ctx, t.d.CompactRevSQL.Query)
}

func (t *tx) SetCompactRevision(ctx context.Context, revision int64) error {
	_, err := t.x.ExecContext(ctx, t.d.UpdateCompactSQL.Query, revision)
	return err
}

// Compact deletes superseded rows; the delete trigger removes their index
// rows in this same transaction.
func (t *tx) Compact(ctx context.Context, from, to int64) (int64, error) {
	res, err := t.x.ExecContext(ctx, t.d.CompactSQL.Query, from, to, from, to)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func (t *tx) DeleteRevision(ctx context.Context, revision int64) error {
	_, err := t.x.ExecContext(ctx, t.d.DeleteSQL.Query, revision)
	return err
}

func (t *tx) CurrentRevision(ctx context.Context) (int64, error) {
	return t.scalar(ctx, t.d.CurrentRevSQL.Query)
}

// Insert appends a kine row exactly as kine does (zero id when the
// optimistic-concurrency check fails) and indexes it in the same transaction,
// so a committed row always has its index entry.
func (t *tx) Insert(ctx context.Context, key string, created, deleted bool, previousRevision, ttl int64, value []byte) (id int64, err error) {
	if t.group != nil {
		// Once admitted, a grouped write runs to its end: an interrupted
		// statement could roll back the whole group's transaction.
		ctx = context.WithoutCancel(ctx)
	}
	if t.d.TranslateErr != nil {
		defer func() {
			if err != nil {
				err = t.d.TranslateErr(err)
			}
		}()
	}
	cols := []any{previousRevision, key, boolToInt(created), boolToInt(deleted), previousRevision, ttl, value, key, previousRevision}
	if t.d.LastInsertID {
		res, err := t.ExecContext(ctx, t.d.InsertSQL.Query, cols...)
		if err != nil {
			return 0, err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return 0, err
		}
		if id, err = res.LastInsertId(); err != nil {
			return 0, err
		}
	} else {
		var err error
		if id, err = t.insertReturning(ctx, cols); err != nil || id == 0 {
			return 0, err
		}
	}
	t.inserted = max(t.inserted, id)
	if previousRevision != 0 {
		// The insert succeeded only if previousRevision is the key's newest
		// row: from now on it is superseded by this one.
		if _, err := t.ExecContext(ctx, t.d.supersedeSQL(), id, previousRevision, key); err != nil {
			return 0, fmt.Errorf("mark revision %d superseded: %w", previousRevision, err)
		}
	}
	if deleted {
		// Tombstones are never returned by a filtered read.
		return id, nil
	}
	entry, ok := extractedEntry(ctx, key, value)
	if !ok {
		entry = t.d.idx.registry.Extract(key, value)
	}
	if !t.d.idx.accepted(entry) {
		// Extracted under a definition the index no longer takes: a
		// candidate for every read until the re-index extracts it again.
		entry = index.Entry{}
	}
	if err := t.d.idx.writeEntry(ctx, t, id, key, entry); err != nil {
		return 0, err
	}
	return id, nil
}

// ExecContext runs an insert's statement, on SQLite prepared once per group
// for the writes of a group: SQLite parsed each statement anew, 20 % of a
// create's CPU in the datastore benchmark.
func (t *tx) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	if t.group == nil || !t.d.prepareGrouped {
		return t.x.ExecContext(ctx, q, args...)
	}
	s, err := t.group.prepared(ctx, q)
	if err != nil {
		return nil, err
	}
	return s.ExecContext(ctx, args...)
}

type extractedKey struct{}

type extracted struct {
	key   string
	value []byte
	entry index.Entry
}

// withExtracted carries the index entry of a value to the transaction that
// writes it, so a write extracts (decodes, perhaps converts) before it waits
// for the write gate rather than while holding it.
func withExtracted(ctx context.Context, key string, value []byte, entry index.Entry) context.Context {
	return context.WithValue(ctx, extractedKey{}, extracted{key: key, value: value, entry: entry})
}

func extractedEntry(ctx context.Context, key string, value []byte) (index.Entry, bool) {
	e, ok := ctx.Value(extractedKey{}).(extracted)
	if !ok || e.key != key || !bytes.Equal(e.value, value) {
		return index.Entry{}, false
	}
	return e.entry, true
}

// insertReturning runs the insert on databases whose ids come from a
// sequence (PostgreSQL). Kine's poller fills an id it sees missing with a
// gap row; if that lands between the sequence handing the id to this insert
// and the row being written, the insert fails on the primary key. Kine
// retries such inserts outside any transaction; here a savepoint keeps the
// transaction usable for the retry.
func (t *tx) insertReturning(ctx context.Context, cols []any) (int64, error) {
	for attempt := 0; ; attempt++ {
		if _, err := t.x.ExecContext(ctx, "SAVEPOINT harikube_insert"); err != nil {
			return 0, err
		}
		var id int64
		err := t.x.QueryRowContext(ctx, t.d.InsertReturningSQL.Query, cols...).Scan(&id)
		if err == nil || errors.Is(err, sql.ErrNoRows) {
			if _, rerr := t.x.ExecContext(ctx, "RELEASE SAVEPOINT harikube_insert"); rerr != nil {
				return 0, rerr
			}
			return id, nil
		}
		if attempt >= 20 || t.d.InsertRetry == nil || !t.d.InsertRetry(err) {
			return 0, err
		}
		if _, rerr := t.x.ExecContext(ctx, "ROLLBACK TO SAVEPOINT harikube_insert"); rerr != nil {
			return 0, errors.Join(err, rerr)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 10 * time.Millisecond):
		}
	}
}

func boolToInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

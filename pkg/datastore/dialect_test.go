package datastore

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/k3s-io/kine/pkg/drivers"
	"github.com/k3s-io/kine/pkg/drivers/generic"
	"github.com/k3s-io/kine/pkg/drivers/sqlite"
	"github.com/k3s-io/kine/pkg/server"

	"github.com/harikube/harikube/pkg/selectorsql"
)

// openKineSQLite opens a SQLite database with kine's tables and settings,
// closed when the test ends.
func openKineSQLite(t *testing.T) *generic.Generic {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	wg := &sync.WaitGroup{}
	t.Cleanup(func() { cancel(); wg.Wait() })
	cfg := &drivers.Config{DataSourceName: filepath.Join(t.TempDir(), "state.db") + "?" + sqlite.DefaultParams}
	_, g, err := sqlite.NewVariant(ctx, wg, "sqlite3", cfg)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// TestWriteTransactionsTakeTurns checks the SQLite write gate: a second
// write transaction waits for the first to commit or roll back (instead of
// polling SQLite's lock), gives up when its context ends, and every way a
// transaction ends hands the slot on.
func TestWriteTransactionsTakeTurns(t *testing.T) {
	ctx := context.Background()
	g := openKineSQLite(t)
	gate := newWriteGate()
	d := &dialect{Generic: g, gate: gate, idx: newIndexer(nil, g.DB, gate, "?", false)}

	first, err := d.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitBriefly := func() error {
		waitCtx, stop := context.WithTimeout(ctx, 100*time.Millisecond)
		defer stop()
		x, err := d.BeginTx(waitCtx, nil)
		if err == nil {
			x.Rollback()
		}
		return err
	}
	if err := waitBriefly(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second write transaction while the first is open: got %v, want it to wait until its context ends", err)
	}

	type begun struct {
		x   server.Transaction
		err error
	}
	began := make(chan begun, 1)
	go func() {
		x, err := d.BeginTx(ctx, nil)
		began <- begun{x, err}
	}()
	select {
	case b := <-began:
		t.Fatalf("second write transaction began while the first was open (err %v)", b.err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := first.Commit(); err != nil {
		t.Fatal(err)
	}
	var second begun
	select {
	case second = <-began:
		if second.err != nil {
			t.Fatal(second.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first transaction committed but the second did not begin")
	}
	if err := second.x.Rollback(); err != nil {
		t.Fatal(err)
	}

	third, err := d.BeginTx(ctx, nil)
	if err != nil {
		t.Fatalf("write transaction after a rollback: %v", err)
	}
	// Ending a transaction twice must not free the slot of another one.
	if err := third.Rollback(); err != nil {
		t.Fatal(err)
	}
	fourth, err := d.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fourth.Rollback()
	_ = third.Rollback()
	if err := waitBriefly(); err == nil {
		t.Fatal("a repeated rollback freed the slot held by another transaction")
	}
}

// TestEveryWriterTakesItsTurn checks that the writes outside kine's
// transactions (gap rows, checkpoints, reindexing, coverage) also wait at
// the write gate rather than compete for SQLite's lock.
func TestEveryWriterTakesItsTurn(t *testing.T) {
	ctx := context.Background()
	g := openKineSQLite(t)
	gate := newWriteGate()
	d := &dialect{Generic: g, gate: gate, idx: newIndexer(nil, g.DB, gate, "?", false)}
	for _, stmt := range append(selectorsql.SQLiteSchema(), coverageSchema) {
		if _, err := g.DB.ExecContext(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	if err := migrateCoverage(ctx, g.DB); err != nil {
		t.Fatal(err)
	}
	// A row for the re-index to write (it reads outside the gate).
	if _, err := g.DB.ExecContext(ctx, "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value) VALUES (?, 1, 0, 0, 0, 0, ?, NULL)", prefix+"ns/a", object("a", nil, "red")); err != nil {
		t.Fatal(err)
	}
	ix := newIndexer(nil, g.DB, gate, "?", false)
	writers := map[string]func(context.Context) error{
		"fill":        func(ctx context.Context) error { return d.Fill(ctx, 1_000_000) },
		"postCompact": d.PostCompact,
		"coverage": func(ctx context.Context) error {
			return ix.storeCoverage(ctx, prefix, stored{coverage: coverage{fields: map[string]bool{"spec.color": true}, labels: true}})
		},
		"reindex": func(ctx context.Context) error {
			_, err := ix.reindexRows(ctx, "SELECT id, name, value FROM kine WHERE id > ?", nil, nil, ix.registry.Extract)
			return err
		},
	}
	for name, write := range writers {
		t.Run(name, func(t *testing.T) {
			release, err := gate.enter(ctx)
			if err != nil {
				t.Fatal(err)
			}
			waitCtx, stop := context.WithTimeout(ctx, 100*time.Millisecond)
			err = write(waitCtx)
			stop()
			release()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("with the gate held: got %v, want the write to wait until its context ends", err)
			}
			if err := write(ctx); err != nil {
				t.Fatalf("with the gate free: %v", err)
			}
		})
	}
}

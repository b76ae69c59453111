package datastore

import (
	"context"
	"sync"
)

// writeGate admits one writer at a time. On SQLite, which has a single
// writer, left to itself a SQLite transaction that finds the write
// lock taken sleeps in the busy handler for 1, 2, 5, 10… ms and tries again:
// under concurrent writes most of the time goes to sleeping, and a writer
// that keeps losing the race (a reindex next to a stream of creates) can
// time out. Waiting here hands the lock over the moment it is free, in
// arrival order. On PostgreSQL it keeps commits in revision order (see
// newIndexedBackend). Every write of this process goes through the gate; a
// nil gate admits everyone.
type writeGate chan struct{}

func newWriteGate() writeGate { return make(writeGate, 1) }

// enter waits for the gate or for ctx to end. release lets the next writer
// in; calling it again does nothing.
func (g writeGate) enter(ctx context.Context) (release func(), err error) {
	if g == nil {
		return func() {}, nil
	}
	select {
	case g <- struct{}{}:
		return sync.OnceFunc(func() { <-g }), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// do runs write once it is through the gate.
func (g writeGate) do(ctx context.Context, write func() error) error {
	release, err := g.enter(ctx)
	if err != nil {
		return err
	}
	defer release()
	return write()
}

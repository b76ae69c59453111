package datastore

import (
	"context"
	"database/sql"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
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
//
// Clients' writes (kine appends marked by withGroupCommit) that queue behind
// one another share one transaction, a group: each runs in a savepoint of
// the open group instead of waiting for its commit, and is answered once the
// group commits, so N queued writes cost one commit. A writer of any other
// kind commits the open group before it starts.
type writeGate struct {
	mu    sync.Mutex
	held  bool
	queue []*gateWaiter // in arrival order
	// open is the group transaction, only ever set while the gate is held.
	open *writeGroup
	// groups and grouped count the groups ended and the writes in them.
	groups, grouped atomic.Int64
}

type gateWaiter struct {
	ready   chan struct{}
	grouped bool
	granted bool
}

// A group ends at groupMaxWrites writes, or groupMaxAge after its first
// write finished, so that write waits for a bounded number of others.
// Before ending a group nobody waits to join, the gate yields the processor
// up to groupYields times: on a busy machine the next writers are often
// runnable but not running, and each that joins saves a commit (groups of
// 3 writes became 10 in the datastore benchmark, CPU per create -15 %).
const (
	groupMaxWrites = 64
	groupMaxAge    = 10 * time.Millisecond
	groupYields    = 3
)

func newWriteGate() *writeGate { return &writeGate{} }

// take waits for the gate or for ctx to end. grouped writers may be handed
// the gate with a group open, to join it.
func (g *writeGate) take(ctx context.Context, grouped bool) error {
	g.mu.Lock()
	if !g.held && len(g.queue) == 0 {
		g.held = true
		g.mu.Unlock()
		return nil
	}
	w := &gateWaiter{ready: make(chan struct{}), grouped: grouped}
	g.queue = append(g.queue, w)
	g.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	if w.granted {
		// Handed the gate as ctx ended: hand it on, which commits the
		// open group if nobody else joins it.
		g.mu.Unlock()
		g.pass()
		return ctx.Err()
	}
	g.queue = slices.DeleteFunc(g.queue, func(q *gateWaiter) bool { return q == w })
	g.mu.Unlock()
	return ctx.Err()
}

// pass hands the gate to the next writer. The open group stays open only
// for a grouped writer next in line; otherwise it is committed first.
func (g *writeGate) pass() {
	g.mu.Lock()
	for i := 0; i < groupYields && g.open != nil && len(g.queue) == 0 && g.open.err == nil && g.open.writes < groupMaxWrites; i++ {
		g.mu.Unlock()
		runtime.Gosched()
		g.mu.Lock()
	}
	if grp := g.open; grp != nil && !g.joinable(grp) {
		g.open = nil
		g.mu.Unlock()
		g.end(grp)
		g.mu.Lock()
	}
	if len(g.queue) == 0 {
		g.held = false
	} else {
		w := g.queue[0]
		g.queue = g.queue[1:]
		w.granted = true
		close(w.ready)
	}
	g.mu.Unlock()
}

// joinable reports whether the next writer may join grp; g.mu is held.
func (g *writeGate) joinable(grp *writeGroup) bool {
	return len(g.queue) > 0 && g.queue[0].grouped && grp.err == nil &&
		grp.writes < groupMaxWrites && (grp.waiting.IsZero() || time.Since(grp.waiting) < groupMaxAge)
}

// group is the open group, for the holder of the gate.
func (g *writeGate) group() *writeGroup {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.open
}

// setGroup opens grp; the caller holds the gate.
func (g *writeGate) setGroup(grp *writeGroup) {
	g.mu.Lock()
	g.open = grp
	g.mu.Unlock()
}

// flush commits the open group; the caller holds the gate.
func (g *writeGate) flush() {
	g.mu.Lock()
	grp := g.open
	g.open = nil
	g.mu.Unlock()
	if grp != nil {
		g.end(grp)
	}
}

// end commits grp, or rolls it back if it failed; the caller holds the gate.
func (g *writeGate) end(grp *writeGroup) {
	grp.finish()
	g.groups.Add(1)
	g.grouped.Add(int64(grp.writes))
}

// enter waits for the gate or for ctx to end, with no group open. release
// lets the next writer in; calling it again does nothing.
func (g *writeGate) enter(ctx context.Context) (release func(), err error) {
	if g == nil {
		return func() {}, nil
	}
	if err := g.take(ctx, false); err != nil {
		return nil, err
	}
	g.flush()
	return sync.OnceFunc(g.pass), nil
}

// do runs write once it is through the gate.
func (g *writeGate) do(ctx context.Context, write func() error) error {
	release, err := g.enter(ctx)
	if err != nil {
		return err
	}
	defer release()
	return write()
}

// writeGroup is one transaction shared by the writes of a group. Its fields
// are used only by the holder of the gate, and err and inserted by members
// once done is closed.
type writeGroup struct {
	x *sql.Tx
	// waiting is when the first write finished and began to wait for the
	// commit.
	waiting time.Time
	writes  int
	// inserted is the highest revision a released member inserted.
	inserted int64
	// err is the first failure that dooms the group (it then rolls back),
	// or the commit's.
	err  error
	done chan struct{}
	// stmts are the statements prepared in x, by query.
	stmts map[string]*sql.Stmt
	// ended runs after the commit or rollback, before members are told.
	ended func(*writeGroup)
}

func newWriteGroup(x *sql.Tx, ended func(*writeGroup)) *writeGroup {
	return &writeGroup{x: x, done: make(chan struct{}), ended: ended}
}

// prepared returns q prepared in the group's transaction, which closes it.
func (grp *writeGroup) prepared(ctx context.Context, q string) (*sql.Stmt, error) {
	if s, ok := grp.stmts[q]; ok {
		return s, nil
	}
	// modernc.org/sqlite keeps a statement parsed only when nothing, not even
	// whitespace (kine's insert ends in some), follows it.
	s, err := grp.x.PrepareContext(ctx, strings.TrimSpace(q))
	if err != nil {
		return nil, err
	}
	if grp.stmts == nil {
		grp.stmts = map[string]*sql.Stmt{}
	}
	grp.stmts[q] = s
	return s, nil
}

// fail dooms the group: it rolls back, and each of its writes fails.
func (grp *writeGroup) fail(err error) {
	if grp.err == nil {
		grp.err = fmt.Errorf("a write grouped with this one failed, the group was rolled back: %w", err)
	}
}

func (grp *writeGroup) finish() {
	if grp.err == nil {
		if err := grp.x.Commit(); err != nil {
			grp.err = fmt.Errorf("commit %d grouped writes: %w", grp.writes, err)
		}
	} else if err := grp.x.Rollback(); err != nil {
		logrus.Debugf("Rolling back a failed write group: %v", err)
	}
	grp.ended(grp)
	close(grp.done)
}

// wait blocks until the group has committed or rolled back.
func (grp *writeGroup) wait() error {
	<-grp.done
	return grp.err
}

type groupCommitKey struct{}

// withGroupCommit marks ctx as a client's write (kine's append from Create,
// Update or Delete), whose transaction may be grouped with others.
func withGroupCommit(ctx context.Context) context.Context {
	return context.WithValue(ctx, groupCommitKey{}, true)
}

func groupCommit(ctx context.Context) bool {
	v, _ := ctx.Value(groupCommitKey{}).(bool)
	return v
}

package datastore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/k3s-io/kine/pkg/server"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/harikube/harikube/pkg/selectorsql"
)

// Concurrent creates, updates and deletes of the same keys through the etcd
// API, grouped: exactly one write per key and revision wins, the others are
// refused, every acknowledged write is stored at the revision it was
// answered with, and the index agrees with the data.
func TestGroupedWritesOfTheSameKeys(t *testing.T) { forEachStore(t, testGroupedWritesOfTheSameKeys) }

func testGroupedWritesOfTheSameKeys(t *testing.T, s store) {
	e := start(t, s, nil)
	ctx := context.Background()
	const keys, contenders = 12, 8
	key := func(k int) string { return fmt.Sprintf("%sns/k%02d", prefix, k) }

	all := make([]int, keys)
	for k := range all {
		all[k] = k
	}
	// race runs one write per contender on each of ks at once and returns,
	// per key, the revisions of the writes that succeeded.
	race := func(op string, ks []int, write func(k, c int) (*clientv3.TxnResponse, error)) [][]int64 {
		var mu sync.Mutex
		won := make([][]int64, keys)
		g, _ := errgroup.WithContext(ctx)
		for _, k := range ks {
			for c := range contenders {
				g.Go(func() error {
					resp, err := write(k, c)
					if err != nil {
						return fmt.Errorf("%s %s: %w", op, key(k), err)
					}
					if resp.Succeeded {
						mu.Lock()
						won[k] = append(won[k], resp.Header.Revision)
						mu.Unlock()
					}
					return nil
				})
			}
		}
		if err := g.Wait(); err != nil {
			t.Fatal(err)
		}
		for _, k := range ks {
			if n := len(won[k]); n != 1 {
				t.Fatalf("%s of %s by %d clients at once: %d succeeded, want exactly 1", op, key(k), contenders, n)
			}
		}
		return won
	}
	stored := func(k int) (int64, string) {
		resp, err := e.client.Get(ctx, key(k))
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			return 0, ""
		}
		return resp.Kvs[0].ModRevision, string(resp.Kvs[0].Value)
	}
	value := func(k, c int, phase string) string {
		return object(fmt.Sprintf("k%02d", k), map[string]string{"phase": phase, "writer": fmt.Sprint(c)}, "")
	}

	created := race("create", all, func(k, c int) (*clientv3.TxnResponse, error) {
		return e.client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key(k)), "=", 0)).Then(clientv3.OpPut(key(k), value(k, c, "created"))).Commit()
	})
	for k := range keys {
		if rev, _ := stored(k); rev != created[k][0] {
			t.Fatalf("%s created at revision %d, stored at %d", key(k), created[k][0], rev)
		}
	}
	updated := race("update", all, func(k, c int) (*clientv3.TxnResponse, error) {
		return e.client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key(k)), "=", created[k][0])).
			Then(clientv3.OpPut(key(k), value(k, c, "updated"))).Else(clientv3.OpGet(key(k))).Commit()
	})
	for k := range keys {
		if rev, v := stored(k); rev != updated[k][0] {
			t.Fatalf("%s updated at revision %d, stored at %d (%s)", key(k), updated[k][0], rev, v)
		}
	}
	keys1, _ := list(t, e.client, selected(t, "phase=updated", ""))
	if len(keys1) != keys {
		t.Fatalf("phase=updated after the updates: %d keys, want %d", len(keys1), keys)
	}
	var even []int
	for k := 0; k < keys; k += 2 {
		even = append(even, k)
	}
	deleted := race("delete", even, func(k, c int) (*clientv3.TxnResponse, error) {
		return e.client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key(k)), "=", updated[k][0])).
			Then(clientv3.OpDelete(key(k))).Else(clientv3.OpGet(key(k))).Commit()
	})
	for k := range keys {
		rev, _ := stored(k)
		if k%2 == 0 && rev != 0 {
			t.Fatalf("%s deleted at revision %d but still stored at %d", key(k), deleted[k][0], rev)
		}
		if k%2 == 1 && rev != updated[k][0] {
			t.Fatalf("%s not deleted: stored at %d, want %d", key(k), rev, updated[k][0])
		}
	}
	if gate := e.ds.backend.idx.gate; gate.grouped.Load() <= gate.groups.Load() {
		t.Errorf("%d writes at once in %d groups: no two shared a commit", gate.grouped.Load(), gate.groups.Load())
	}
	e.stop()
	if report := runCheck(t, s); len(report.Problems) != 0 || report.Rows == 0 {
		t.Fatalf("check after the grouped writes: %+v, want rows and no problems", report)
	}
}

// groupedDialect is a dialect over a fresh SQLite database with the index
// tables, for tests that hold the write gate themselves.
func groupedDialect(t *testing.T) *dialect {
	t.Helper()
	ctx := context.Background()
	g := openKineSQLite(t)
	for _, stmt := range append(selectorsql.SQLiteSchema(), coverageSchema) {
		if _, err := g.DB.ExecContext(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	if err := migrateCoverage(ctx, g.DB); err != nil {
		t.Fatal(err)
	}
	gate := newWriteGate()
	return &dialect{Generic: g, gate: gate, idx: newIndexer(nil, g.DB, gate, "?", false), prepareGrouped: true}
}

type appended struct {
	rev int64
	err error
}

// appendAsync appends key the way kine's Append does, in a grouped
// transaction; rollback ends it with Rollback after the insert instead (a
// write whose later step failed).
func appendAsync(ctx context.Context, d *dialect, key string, rollback bool) <-chan appended {
	out := make(chan appended, 1)
	go func() {
		x, err := d.BeginTx(withGroupCommit(ctx), &sql.TxOptions{Isolation: sql.LevelReadCommitted})
		if err != nil {
			out <- appended{err: err}
			return
		}
		rev, err := x.Insert(ctx, key, true, false, 0, 0, []byte(object(key, map[string]string{"app": "web"}, "")))
		if err != nil || rollback {
			out <- appended{err: errors.Join(err, x.Rollback(), errRolledBack)}
			return
		}
		out <- appended{rev: rev, err: x.Commit()}
	}()
	return out
}

var errRolledBack = errors.New("rolled back")

// waitQueued waits until n writers wait at the gate.
func waitQueued(t *testing.T, g *writeGate, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		g.mu.Lock()
		queued := len(g.queue)
		g.mu.Unlock()
		if queued >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d writers wait at the gate, want %d", queued, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func receive[T any](t *testing.T, what string, c <-chan T) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: no answer after 20 s", what)
		panic("unreachable")
	}
}

// storedKeys lists the keys of kine's rows, read on another connection:
// only committed rows.
func storedKeys(t *testing.T, d *dialect) map[string]int64 {
	t.Helper()
	rows, err := d.DB.Query("SELECT name, id FROM kine WHERE name LIKE 'k-%'")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var name string
		var id int64
		if err := rows.Scan(&name, &id); err != nil {
			t.Fatal(err)
		}
		out[name] = id
	}
	return out
}

// A group of writes queued behind an open one: a write that rolls back,
// one whose context ends while it waits, and a duplicate create fail alone;
// the others commit together and are answered only after the commit.
func TestGroupMembersFailAlone(t *testing.T) {
	ctx := context.Background()
	d := groupedDialect(t)
	first, err := d.BeginTx(withGroupCommit(ctx), nil)
	if err != nil {
		t.Fatal(err)
	}
	firstRev, err := first.Insert(ctx, "k-a", true, false, 0, 0, []byte(object("a", nil, "")))
	if err != nil || firstRev == 0 {
		t.Fatalf("insert k-a: %d, %v", firstRev, err)
	}
	rolledBack := appendAsync(ctx, d, "k-b", true)
	waitQueued(t, d.gate, 1)
	cancelled, cancel := context.WithCancel(ctx)
	abandoned := appendAsync(cancelled, d, "k-c", false)
	waitQueued(t, d.gate, 2)
	duplicate := appendAsync(ctx, d, "k-a", false)
	waitQueued(t, d.gate, 3)
	last := appendAsync(ctx, d, "k-d", false)
	waitQueued(t, d.gate, 4)
	cancel()
	if got := receive(t, "cancelled waiter", abandoned); !errors.Is(got.err, context.Canceled) {
		t.Fatalf("a write whose context ended at the gate: %+v, want context.Canceled", got)
	}

	committed := make(chan error, 1)
	go func() { committed <- first.Commit() }()
	if err := receive(t, "first write", committed); err != nil {
		t.Fatalf("commit k-a: %v", err)
	}
	if got := receive(t, "rolled back write", rolledBack); got.err == nil || !errors.Is(got.err, errRolledBack) || got.rev != 0 {
		t.Fatalf("rolled back k-b: %+v", got)
	}
	if got := receive(t, "duplicate create", duplicate); got.err != nil || got.rev != 0 {
		t.Fatalf("second create of k-a: %+v, want revision 0 (the key exists)", got)
	}
	lastGot := receive(t, "last write", last)
	if lastGot.err != nil || lastGot.rev == 0 {
		t.Fatalf("create k-d: %+v", lastGot)
	}
	want := map[string]int64{"k-a": firstRev, "k-d": lastGot.rev}
	if got := storedKeys(t, d); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("committed rows %v, want %v", got, want)
	}
	if groups, writes := d.gate.groups.Load(), d.gate.grouped.Load(); groups != 1 || writes != 4 {
		t.Fatalf("%d groups of %d writes, want one group of 4 (k-a, k-b, the duplicate, k-d)", groups, writes)
	}
	if d.committed.Load() != lastGot.rev {
		t.Fatalf("highest committed revision %d, want %d", d.committed.Load(), lastGot.rev)
	}
}

// Writes of other kinds (a gap row, a compaction's transaction) queued
// behind a group commit it before they start, and a registration waiting
// for the definitions lock ends the group instead of deadlocking its next
// write.
func TestGroupEndsForOtherWriters(t *testing.T) {
	ctx := context.Background()
	d := groupedDialect(t)
	open := func(key string) server.Transaction {
		x, err := d.BeginTx(withGroupCommit(ctx), nil)
		if err != nil {
			t.Fatal(err)
		}
		if rev, err := x.Insert(ctx, key, true, false, 0, 0, []byte(object(key, nil, ""))); err != nil || rev == 0 {
			t.Fatalf("insert %s: %d, %v", key, rev, err)
		}
		return x
	}
	commitAsync := func(x server.Transaction) <-chan error {
		out := make(chan error, 1)
		go func() { out <- x.Commit() }()
		return out
	}

	x := open("k-a")
	sawCommitted := make(chan bool, 1)
	other := make(chan error, 1)
	go func() {
		other <- d.gate.do(ctx, func() error {
			_, ok := storedKeys(t, d)["k-a"]
			sawCommitted <- ok
			return nil
		})
	}()
	waitQueued(t, d.gate, 1)
	joiner := appendAsync(ctx, d, "k-b", false)
	waitQueued(t, d.gate, 2)
	if err := receive(t, "k-a", commitAsync(x)); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, "other writer", other); err != nil || !receive(t, "other writer", sawCommitted) {
		t.Fatalf("a writer of another kind ran before the open group committed (err %v)", err)
	}
	if got := receive(t, "k-b", joiner); got.err != nil || got.rev == 0 {
		t.Fatalf("k-b after the other writer: %+v", got)
	}

	// kine's compaction: a transaction that is not an append.
	x = open("k-c")
	compaction := make(chan error, 1)
	go func() {
		c, err := d.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelSerializable})
		if err == nil {
			if _, ok := storedKeys(t, d)["k-c"]; !ok {
				err = errors.New("began before the open group committed")
			}
			err = errors.Join(err, c.Commit())
		}
		compaction <- err
	}()
	waitQueued(t, d.gate, 1)
	if err := receive(t, "k-c", commitAsync(x)); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, "compaction", compaction); err != nil {
		t.Fatalf("compaction transaction: %v", err)
	}

	// A registration takes the definitions lock while a group is open and
	// a write waits to join it.
	groups := d.gate.groups.Load()
	x = open("k-e")
	joiner = appendAsync(ctx, d, "k-f", false)
	waitQueued(t, d.gate, 1)
	registered := make(chan struct{})
	go func() {
		d.idx.defs.Lock()
		d.idx.defs.Unlock()
		close(registered)
	}()
	for d.idx.defs.TryRLock() { // until the registration waits
		d.idx.defs.RUnlock()
		time.Sleep(time.Millisecond)
	}
	if err := receive(t, "k-e", commitAsync(x)); err != nil {
		t.Fatal(err)
	}
	receive(t, "registration", registered)
	if got := receive(t, "k-f", joiner); got.err != nil || got.rev == 0 {
		t.Fatalf("k-f after the registration: %+v", got)
	}
	if n := d.gate.groups.Load() - groups; n != 2 {
		t.Fatalf("k-e and k-f committed in %d groups, want 2 (the registration ends the first)", n)
	}
}

// Writers whose contexts end at random moments, while others keep writing:
// no group is stranded (every writer gets an answer), every acknowledged
// write is committed and no refused one is.
func TestCancelledWritersNeverStrandAGroup(t *testing.T) {
	ctx := context.Background()
	d := groupedDialect(t)
	const writers = 300
	answers := make([]<-chan appended, writers)
	for i := range writers {
		wctx := ctx
		if i%3 != 0 {
			var cancel context.CancelFunc
			wctx, cancel = context.WithTimeout(ctx, time.Duration(rand.IntN(3000))*time.Microsecond)
			defer cancel()
		}
		answers[i] = appendAsync(wctx, d, fmt.Sprintf("k-%03d", i), false)
	}
	stored := map[string]int64{}
	acked := 0
	for i, c := range answers {
		got := receive(t, fmt.Sprintf("writer %d", i), c)
		switch {
		case got.err == nil:
			stored[fmt.Sprintf("k-%03d", i)] = got.rev
			acked++
		case i%3 == 0:
			t.Fatalf("writer %d without a deadline failed: %v", i, got.err)
		case !errors.Is(got.err, context.DeadlineExceeded):
			t.Fatalf("writer %d: %v, want success or its deadline", i, got.err)
		}
	}
	if got := storedKeys(t, d); fmt.Sprint(got) != fmt.Sprint(stored) {
		t.Fatalf("committed rows differ from the acknowledged writes:\n got %v\nwant %v", got, stored)
	}
	t.Logf("%d of %d writes acknowledged, in %d groups", acked, writers, d.gate.groups.Load())
}

package pushdown

import (
	"context"
	"database/sql"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/harikube/harikube/tests/pgserver"
)

// TestWatchSeesRevisionCommittedLate: on PostgreSQL, revisions come from a
// sequence when a row is inserted, so a transaction can commit revision N
// after another one has committed N+1 (concurrent writes of the apiserver
// do). A watch started in between must still receive N. Found by
// TestStorageConformance's WatchSemantics suites on PostgreSQL, which lost
// such an event now and then; here the late commit is made deterministic
// by holding one insert open in SQL.
func TestWatchSeesRevisionCommittedLate(t *testing.T) {
	dsn := pgserver.Start(t).DSN()
	f := newFixture(t, dsn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	first, err := f.client.KV.Put(ctx, "/pods/ns/first", "x")
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	late, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Rollback() //nolint:errcheck // after Commit this is a no-op
	// A create of /pods/ns/late as kine writes it, not yet committed.
	var lateRev int64
	if err := late.QueryRowContext(ctx, `INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value)
		VALUES ('/pods/ns/late', 1, 0, 0, 0, 0, 'x', NULL) RETURNING id`).Scan(&lateRev); err != nil {
		t.Fatal(err)
	}
	next, err := f.client.KV.Put(ctx, "/pods/ns/next", "x")
	if err != nil {
		t.Fatal(err)
	}
	if next.Header.Revision <= lateRev {
		t.Fatalf("revision of the later put %d, want above the open insert's %d", next.Header.Revision, lateRev)
	}

	// Watch from just after the first put: both later revisions are due.
	w := f.client.Watch(ctx, "/pods/", clientv3.WithPrefix(), clientv3.WithRev(first.Header.Revision+1))
	time.Sleep(200 * time.Millisecond) // the watch is established while lateRev is uncommitted
	if err := late.Commit(); err != nil {
		t.Fatal(err)
	}

	seen := map[string]int64{}
	deadline := time.After(10 * time.Second)
	for seen["/pods/ns/late"] == 0 || seen["/pods/ns/next"] == 0 {
		select {
		case resp, ok := <-w:
			if !ok {
				t.Fatalf("watch closed after %v", seen)
			}
			if err := resp.Err(); err != nil {
				t.Fatal(err)
			}
			for _, e := range resp.Events {
				seen[string(e.Kv.Key)] = e.Kv.ModRevision
			}
		case <-deadline:
			t.Fatalf("after 10 s the watch from revision %d received %v; want /pods/ns/late at %d and /pods/ns/next at %d",
				first.Header.Revision+1, seen, lateRev, next.Header.Revision)
		}
	}
}

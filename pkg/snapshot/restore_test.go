package snapshot

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/harikube/harikube/pkg/datastore"
)

// TestRestoreCompactsAndBumps: a restored database keeps the live rows of
// the snapshot with their revisions, has no history or index rows of
// superseded or deleted rows left, and records the bumped revision as both
// the newest and the compacted one — counted from the replaced database's
// revision when that is newer than the snapshot's.
func TestRestoreCompactsAndBumps(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	live := writeSome(t, dir, 0)

	info, err := Save(ctx, SaveOptions{Database: datastore.DatabasePath(dir), Dir: filepath.Join(dir, "snapshots"), Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	writeSome(t, target, 200) // a replaced database further ahead than the snapshot
	replacedRev := maxID(t, datastore.DatabasePath(target))
	if replacedRev <= info.Revision {
		t.Fatalf("setup: replaced database at %d, snapshot at %d", replacedRev, info.Revision)
	}
	res, err := Restore(ctx, RestoreOptions{Snapshot: info.Path, Database: datastore.DatabasePath(target), BumpRevision: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if res.Revision != replacedRev+1000 {
		t.Errorf("restored revision %d, want the replaced database's %d + 1000", res.Revision, replacedRev)
	}
	db := openDB(t, datastore.DatabasePath(target))
	var newest, compacted int64
	must(t, db.QueryRow("SELECT MAX(id) FROM kine").Scan(&newest))
	must(t, db.QueryRow("SELECT prev_revision FROM kine WHERE name = 'compact_rev_key'").Scan(&compacted))
	if newest != res.Revision || compacted != res.Revision {
		t.Errorf("newest revision %d, compacted %d; want both %d", newest, compacted, res.Revision)
	}
	rows, err := db.Query("SELECT name, id FROM kine WHERE name LIKE '/registry/configmaps/%'")
	must(t, err)
	got := map[string]int64{}
	for rows.Next() {
		var name string
		var id int64
		must(t, rows.Scan(&name, &id))
		if _, dup := got[name]; dup {
			t.Errorf("%s has more than one row: history was not compacted", name)
		}
		got[name] = id
	}
	must(t, rows.Err())
	if fmt.Sprint(got) != fmt.Sprint(live) {
		t.Errorf("rows after restore %v, want the snapshot's live rows %v", got, live)
	}
	var orphans int
	must(t, db.QueryRow("SELECT COUNT(*) FROM harikube_index WHERE id NOT IN (SELECT id FROM kine)").Scan(&orphans))
	if orphans != 0 {
		t.Errorf("%d index rows of compacted rows left", orphans)
	}
	var meta int
	must(t, db.QueryRow("SELECT COUNT(*) FROM sqlite_master WHERE name = ?", metaTable).Scan(&meta))
	if meta != 0 {
		t.Error("the snapshot metadata table is still in the restored database")
	}
	report, err := datastore.CheckSQLite(ctx, datastore.DatabasePath(target))
	must(t, err)
	if len(report.Problems) > 0 {
		t.Errorf("datastore check: %v", report.Problems)
	}
}

// writeSome creates, updates and deletes keys in a datastore in dir, stops
// it, and returns the live keys with their revisions.
func writeSome(t *testing.T, dir string, extra int) map[string]int64 {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ds, err := datastore.Start(ctx, datastore.Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Wait()
	defer cancel()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{ds.Endpoint}, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	live := map[string]int64{}
	value := func(name string, gen int) string {
		return fmt.Sprintf(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":%q,"namespace":"ns","labels":{"gen":"%d"}}}`, name, gen)
	}
	for i := range 20 + extra {
		name := fmt.Sprintf("o%03d", i)
		key := "/registry/configmaps/ns/" + name
		for gen := range 3 {
			r, err := c.Put(ctx, key, value(name, gen))
			must(t, err)
			live[key] = r.Header.Revision
		}
		if i%4 == 0 {
			r, err := c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", live[key])).Then(clientv3.OpDelete(key)).Else(clientv3.OpGet(key)).Commit()
			must(t, err)
			if !r.Succeeded {
				t.Fatalf("delete %s: not applied", key)
			}
			delete(live, key)
		}
	}
	return live
}

func maxID(t *testing.T, path string) int64 {
	var id int64
	must(t, openDB(t, path).QueryRow("SELECT MAX(id) FROM kine").Scan(&id))
	return id
}

func openDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	must(t, err)
	t.Cleanup(func() { db.Close() })
	return db
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestRestoreAsRootKeepsTheOwner: root restoring into a data directory that
// another user owns (a pod's, from a debug pod or a Job) leaves the restored
// database to that user, who runs the server.
func TestRestoreAsRootKeepsTheOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to restore into another user's data directory")
	}
	const uid, gid = 1000680000, 1000680000
	ctx := context.Background()
	dir := t.TempDir()
	writeSome(t, dir, 0)
	info, err := Save(ctx, SaveOptions{Database: datastore.DatabasePath(dir), Dir: filepath.Join(dir, "snapshots"), Name: "test"})
	must(t, err)

	target := t.TempDir()
	writeSome(t, target, 0)
	must(t, filepath.WalkDir(target, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, uid, gid)
	}))
	database := datastore.DatabasePath(target)
	_, err = Restore(ctx, RestoreOptions{Snapshot: info.Path, Database: database, BumpRevision: 1})
	must(t, err)
	st, err := os.Stat(database)
	must(t, err)
	if owner := st.Sys().(*syscall.Stat_t); owner.Uid != uid || owner.Gid != gid {
		t.Errorf("restored %s belongs to %d:%d, want the data directory's %d:%d", database, owner.Uid, owner.Gid, uid, gid)
	}

	// Into a data directory without a database directory yet: that of its
	// parent.
	fresh := filepath.Join(t.TempDir(), "data")
	must(t, os.Mkdir(fresh, 0o700))
	must(t, os.Chown(fresh, uid, gid))
	database = datastore.DatabasePath(fresh)
	_, err = Restore(ctx, RestoreOptions{Snapshot: info.Path, Database: database, BumpRevision: 1})
	must(t, err)
	for _, path := range []string{filepath.Dir(database), database} {
		st, err := os.Stat(path)
		must(t, err)
		if owner := st.Sys().(*syscall.Stat_t); owner.Uid != uid {
			t.Errorf("%s belongs to %d, want the data directory's %d", path, owner.Uid, uid)
		}
	}
}

package snapshot

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/harikube/harikube/pkg/datastore"
)

// TestSaveAppearsOnlyComplete: while a save is under way its data is in a
// hidden partial file that ls skips, and the snapshot's own name does not
// exist; once Save returns, the directory holds that name only, mode 0600.
// A save that fails leaves nothing behind.
func TestSaveAppearsOnlyComplete(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	writeSome(t, dir, 0)
	database := datastore.DatabasePath(dir)

	// A WAL database never blocks a reader. With a rollback journal, a
	// writer's exclusive lock holds the snapshot's read back, which holds
	// the save at a known point: after it created its file, before it
	// wrote the snapshot into it.
	db, err := sql.Open("sqlite", "file:"+database)
	must(t, err)
	defer db.Close()
	conn, err := db.Conn(ctx)
	must(t, err)
	defer conn.Close()
	var mode string
	must(t, conn.QueryRowContext(ctx, "PRAGMA journal_mode=DELETE").Scan(&mode))
	if mode != "delete" {
		t.Fatalf("journal mode %q, want delete", mode)
	}
	_, err = conn.ExecContext(ctx, "BEGIN EXCLUSIVE")
	must(t, err)

	out := filepath.Join(t.TempDir(), "snapshots")
	type result struct {
		info Info
		err  error
	}
	done := make(chan result, 1)
	go func() {
		info, err := Save(ctx, SaveOptions{Database: database, Dir: out, Name: "test"})
		done <- result{info, err}
	}()

	// Save waits up to busyTimeout (30 s) for the lock: look well before.
	var during []os.DirEntry
	for deadline := time.Now().Add(10 * time.Second); len(during) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no file in %s 10 s into a save", out)
		}
		during, _ = os.ReadDir(out)
	}
	select {
	case r := <-done:
		t.Fatalf("Save returned (%v, %v) while the database was locked", r.info.Path, r.err)
	default:
	}
	if len(during) != 1 || !strings.HasPrefix(during[0].Name(), ".") || !strings.HasSuffix(during[0].Name(), ".partial") {
		t.Errorf("during a save the directory holds %v, want one hidden .partial file", names(during))
	}
	if fi, err := os.Stat(filepath.Join(out, during[0].Name())); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("file of a save under way: %v (%v), want mode 0600", fi, err)
	}
	if list, err := List(ctx, out); err != nil || len(list) != 0 {
		t.Errorf("List during a save: %v (%v), want no snapshot", list, err)
	}

	_, err = conn.ExecContext(ctx, "COMMIT")
	must(t, err)
	r := <-done
	must(t, r.err)
	after, err := os.ReadDir(out)
	must(t, err)
	if got, want := names(after), []string{filepath.Base(r.info.Path)}; !slices.Equal(got, want) {
		t.Errorf("after the save the directory holds %v, want %v", got, want)
	}
	if !strings.HasPrefix(filepath.Base(r.info.Path), "test-") || !strings.HasSuffix(r.info.Path, fileExt) {
		t.Errorf("snapshot path %s, want test-<time>%s", r.info.Path, fileExt)
	}
	if fi, err := os.Stat(r.info.Path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("snapshot file: %v (%v), want mode 0600", fi, err)
	}
	if r.info.Revision != maxID(t, database) {
		t.Errorf("snapshot revision %d, want the database's %d", r.info.Revision, maxID(t, database))
	}

	// A database without Kine's table fails after the file was created.
	notKine := filepath.Join(t.TempDir(), "other.db")
	other, err := sql.Open("sqlite", "file:"+notKine)
	must(t, err)
	_, err = other.Exec("CREATE TABLE t (x INTEGER)")
	must(t, err)
	must(t, other.Close())
	failed := filepath.Join(t.TempDir(), "failed")
	if _, err := Save(ctx, SaveOptions{Database: notKine, Dir: failed, Name: "test"}); err == nil || !strings.Contains(err.Error(), "holds no kine table") {
		t.Errorf("Save of a database without the kine table: %v, want it refused", err)
	}
	if left, err := os.ReadDir(failed); err != nil || len(left) != 0 {
		t.Errorf("a failed save left %v (%v) in its directory", names(left), err)
	}
}

// TestScheduleRetention: retention 0 keeps every scheduled snapshot;
// retention 2 keeps the newest two, and snapshots of other names are not
// touched by either.
func TestScheduleRetention(t *testing.T) {
	dir := t.TempDir()
	writeSome(t, dir, 0)
	database := datastore.DatabasePath(dir)
	const fires = 4
	for _, c := range []struct{ retain, want int }{{0, fires}, {2, 2}} {
		out := t.TempDir()
		other, err := Save(context.Background(), SaveOptions{Database: database, Dir: out, Name: "on-demand"})
		must(t, err)
		m, err := NewMetrics(nil)
		must(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		sched := &firingSchedule{fires: fires, done: cancel}
		finished := make(chan struct{})
		go func() {
			defer close(finished)
			Schedule(ctx, sched, SaveOptions{Database: database, Dir: out}, c.retain, m)
		}()
		select {
		case <-finished:
		case <-time.After(2 * time.Minute):
			cancel()
			t.Fatalf("retention %d: %d scheduled snapshots not done in 2 minutes", c.retain, fires)
		}
		list, err := List(context.Background(), out)
		must(t, err)
		var scheduled []string
		otherKept := false
		for _, s := range list {
			switch s.Name {
			case ScheduledName:
				scheduled = append(scheduled, s.Path)
			case "on-demand":
				otherKept = s.Path == other.Path
			}
		}
		if len(scheduled) != c.want || !otherKept {
			t.Errorf("retention %d after %d scheduled snapshots: %d kept %v, on-demand snapshot kept: %v; want %d and the on-demand one", c.retain, fires, len(scheduled), scheduled, otherKept, c.want)
		}
	}
}

// firingSchedule fires fires times in quick succession, then ends the
// schedule's context: Schedule asks for the next time only after it saved
// and pruned the previous snapshot, so all are done then.
type firingSchedule struct {
	fires, asked int
	done         func()
}

func (s *firingSchedule) Next(now time.Time) time.Time {
	s.asked++
	if s.asked > s.fires {
		s.done()
		return now.Add(time.Hour)
	}
	// File names carry the time to the millisecond: keep them apart.
	return now.Add(20 * time.Millisecond)
}

func names(entries []os.DirEntry) []string {
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

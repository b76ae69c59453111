package e2e

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/harikube/harikube/pkg/datastore"
	"github.com/harikube/harikube/tests/pgserver"
	"github.com/harikube/harikube/tests/testserver"
)

// TestPostgresOutage: PostgreSQL stops at once under a running harikube (a
// crash, a failover) and comes back on the same data. The server keeps
// running and serves again once the database answers, with every
// acknowledged write and selectors answered by the index; it takes its
// writer lock again, so a second server on the database is still refused.
func TestPostgresOutage(t *testing.T) {
	t.Parallel()
	pg := pgserver.Start(t)
	dsn := pg.DSN()
	s := testserver.Start(t, "--datastore-endpoint="+dsn)
	ctx := context.Background()
	dyn := createGadgetCRD(t, s.Config).Namespace("default")
	// Each gadget is labelled with its name's prefix.
	create := func(ctx context.Context, name string) error {
		phase, _, _ := strings.Cut(name, "-")
		_, err := dyn.Create(ctx, gadget(name, map[string]string{"outage": phase}, "red"), metav1.CreateOptions{})
		return err
	}
	for i := range 10 {
		if err := create(ctx, fmt.Sprintf("before-%d", i)); err != nil {
			t.Fatal(err)
		}
	}

	// The controller manager builds every controller before it runs any,
	// and a build that cannot reach the API ends it, as upstream's does
	// (then the server exits 1 for its supervisor to restart). The root CA
	// publisher's ConfigMap in a new namespace shows the controllers run.
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "outage"}}
	if _, err := s.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pollUntil(t, "the controllers to run (kube-root-ca.crt published in a new namespace)", func(ctx context.Context) bool {
		_, err := s.Client.CoreV1().ConfigMaps("outage").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		return err == nil
	})

	if err := pg.Halt(); err != nil {
		t.Fatal(err)
	}
	// What is asked while the database is away fails or waits; it is not
	// acknowledged, and it does not end the server.
	down, cancel := context.WithTimeout(ctx, 5*time.Second)
	if err := create(down, "during-0"); err == nil {
		t.Error("a create acknowledged while PostgreSQL was stopped")
	}
	cancel()
	time.Sleep(5 * time.Second)
	if err := pg.Resume(); err != nil {
		t.Fatal(err)
	}

	var last error
	err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		last = create(ctx, "after-0")
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("no create succeeded within 2 minutes of PostgreSQL's return: %v", last)
	}
	selected := s.Metric(t, "harikube_datastore_selection_rows_total", `resource="gadgets.pushdown.harikube.io"`)
	list, err := dyn.List(ctx, metav1.ListOptions{LabelSelector: "outage=before"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 10 {
		t.Errorf("outage=before after the outage: %d gadgets, want the 10 created before it", len(list.Items))
	}
	if s.Metric(t, "harikube_datastore_selection_rows_total", `resource="gadgets.pushdown.harikube.io"`) != selected+10 {
		t.Error("the selector LIST after the outage was not answered by the index")
	}

	// The writer lock, lost with its session, is taken again.
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		var held int
		err := db.QueryRowContext(ctx, `SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
			WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1 AND a.datname = current_database()`, datastore.WriterLockApp).Scan(&held)
		return err == nil && held == 1, nil
	})
	if err != nil {
		t.Fatal("the writer lock was not taken again within 2 minutes of PostgreSQL's return")
	}
	out, code := runBinary(t, "server", "--data-dir", t.TempDir(), "--bind-address", "127.0.0.1",
		"--https-listen-port", strconv.Itoa(testserver.FreePort(t)), "--datastore-endpoint="+dsn)
	if code == 0 || !strings.Contains(out, "is in use by another harikube datastore") {
		t.Fatalf("second server on the database after the outage: exit %d\n%s", code, out)
	}

	// Should another session take the lock while this server's is lost,
	// the server stops: two servers must not write one database.
	holder, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if _, err := holder.ExecContext(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE application_name = $1 AND datname = current_database()`, datastore.WriterLockApp); err != nil {
		t.Fatal(err)
	}
	// Waits until the terminated session has let the lock go, unless the
	// server takes it back first.
	lockCtx, cancelLock := context.WithTimeout(ctx, time.Minute)
	defer cancelLock()
	if _, err := holder.ExecContext(lockCtx, "SELECT pg_advisory_lock($1)", int64(datastore.WriterLockKey)); err != nil {
		t.Fatal(err)
	}
	if code := s.WaitExit(t, time.Minute); code != 1 {
		t.Errorf("server whose writer lock another session took: exit code %d, want 1", code)
	}
	log, err := os.ReadFile(s.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Lost the writer lock on PostgreSQL database", "Took the writer lock on PostgreSQL database",
		"datastore default: lost the writer lock on PostgreSQL database", "with its session, and another harikube datastore took it",
	} {
		if !strings.Contains(string(log), want) {
			t.Errorf("the server's log does not say %q", want)
		}
	}
}

// TestKineRoleStopsWhenWriterLockTaken: the kine role (vCluster's
// per-component /binaries/kine) on PostgreSQL exits 1, saying why, when
// another session takes its writer lock while its own is lost.
func TestKineRoleStopsWhenWriterLockTaken(t *testing.T) {
	t.Parallel()
	pg := pgserver.Start(t)
	dsn := pg.DSN()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testserver.Binary(t), "kine", "--endpoint="+dsn,
		"--listen-address=unix://"+filepath.Join(dir, "kine.sock"), "--metrics-bind-address=0")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// The database exists once kine has started.
	var holder *sql.Conn
	var terminated int
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		if holder == nil {
			if holder, err = db.Conn(ctx); err != nil {
				holder = nil
				return false, nil
			}
		}
		// Only once the lock is granted: terminated before, the start fails.
		err := holder.QueryRowContext(ctx, `SELECT count(pg_terminate_backend(a.pid)) FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
			WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1 AND a.datname = current_database()`, datastore.WriterLockApp).Scan(&terminated)
		return err == nil && terminated == 1, nil
	})
	if holder != nil {
		defer holder.Close()
	}
	if err != nil {
		cancel()
		<-done
		t.Fatalf("the kine role's writer lock session did not appear:\n%s", out.String())
	}
	if _, err := holder.ExecContext(ctx, "SELECT pg_advisory_lock($1)", int64(datastore.WriterLockKey)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(time.Minute):
		cancel()
		<-done
		t.Fatalf("the kine role still runs a minute after another session took its writer lock:\n%s", out.String())
	}
	if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(out.String(), "with its session, and another harikube datastore took it") {
		t.Errorf("kine role: exit code %d, want 1 with the reason:\n%s", code, out.String())
	}
}

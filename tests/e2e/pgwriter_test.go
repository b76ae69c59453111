package e2e

import (
	"strconv"
	"strings"
	"testing"

	"github.com/harikube/harikube/tests/pgserver"
	"github.com/harikube/harikube/tests/testserver"
)

// TestPostgresOneServerPerDatabase: a second harikube server on the
// database of a running one exits at start with a message naming the
// database; `datastore check` goes through the running server, and reads
// the database itself once it has stopped.
func TestPostgresOneServerPerDatabase(t *testing.T) {
	pg := pgserver.Start(t)
	dsn := pg.DSN()
	first := testserver.Start(t, "--datastore-endpoint="+dsn)

	out, code := runBinary(t, "server", "--data-dir", t.TempDir(), "--bind-address", "127.0.0.1",
		"--https-listen-port", strconv.Itoa(testserver.FreePort(t)), "--datastore-endpoint="+dsn)
	if code == 0 || !strings.Contains(out, "is in use by another harikube datastore") || !strings.Contains(out, "Stop the other server") {
		t.Fatalf("second server on the same database: exit %d\n%s", code, out)
	}

	// Beside the running server the check goes through it, and so needs
	// its kubeconfig.
	out, code = runBinary(t, "datastore", "check", "--datastore-endpoint="+dsn, "--data-dir", t.TempDir())
	if code == 0 || !strings.Contains(out, "the server is running and no kubeconfig was found to reach it: pass --kubeconfig") {
		t.Fatalf("datastore check beside the server, no kubeconfig: exit %d\n%s", code, out)
	}
	out, code = runBinary(t, "datastore", "check", "--datastore-endpoint="+dsn, "--kubeconfig", first.Kubeconfig)
	if code != 0 || !strings.HasPrefix(out, "ok: ") || !strings.Contains(out, "recomputed from the current definitions") {
		t.Fatalf("datastore check through the server: exit %d\n%s", code, out)
	}
	if code := first.Stop(t); code != 0 {
		t.Fatalf("stop exit code %d", code)
	}
	out, code = runBinary(t, "datastore", "check", "--datastore-endpoint="+dsn)
	if code != 0 || !strings.HasPrefix(out, "ok: ") {
		t.Fatalf("datastore check of the stopped server's database: exit %d\n%s", code, out)
	}
}

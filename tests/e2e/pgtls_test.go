package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/harikube/harikube/pkg/datastore"
	"github.com/harikube/harikube/tests/pgserver"
	"github.com/harikube/harikube/tests/testserver"
)

// TestServerDatastoreTLSFlags: `harikube server` and `harikube datastore
// check` reach a PostgreSQL that accepts only TLS with a client certificate
// of its CA through their --datastore-cafile, --datastore-certfile and
// --datastore-keyfile; without the CA the server's certificate is not
// trusted and both stop, saying so.
func TestServerDatastoreTLSFlags(t *testing.T) {
	t.Parallel()
	pg := pgserver.StartTLS(t)
	endpoint := "--datastore-endpoint=" + pg.Endpoint("kubernetes")
	certAndKey := []string{"--datastore-certfile=" + pg.CertFile, "--datastore-keyfile=" + pg.KeyFile}
	tlsFlags := append([]string{endpoint, "--datastore-cafile=" + pg.CAFile}, certAndKey...)
	noCA := append([]string{endpoint}, certAndKey...)
	const untrusted = "tls: failed to verify certificate: x509: certificate signed by unknown authority"

	out, code := runBinary(t, append([]string{"server", "--data-dir", t.TempDir(), "--bind-address", "127.0.0.1",
		"--https-listen-port", strconv.Itoa(testserver.FreePort(t))}, noCA...)...)
	if code != 1 || !strings.Contains(out, `harikube: start datastore: failed to create driver for configured endpoint: connect to PostgreSQL database "kubernetes"`) || !strings.Contains(out, untrusted) {
		t.Fatalf("server without --datastore-cafile: exit %d, want 1 and an error naming the database and the untrusted certificate:\n%s", code, out)
	}

	s := testserver.Start(t, tlsFlags...)
	if out, code := s.Run(t, "kubectl", "create", "configmap", "over-tls", "--from-literal=k=v"); code != 0 {
		t.Fatalf("kubectl create configmap: exit %d\n%s", code, out)
	}
	if out, code := s.Run(t, "kubectl", "get", "configmap", "over-tls", "-o", "jsonpath={.data.k}"); code != 0 || out != "v" {
		t.Fatalf("kubectl get configmap: exit %d, data.k %q, want v", code, out)
	}
	// Over TCP the server admits nothing else, so the datastore's sessions
	// are TLS with the client certificate; the local socket looks at them.
	db, err := sql.Open("pgx", fmt.Sprintf("postgres://postgres@/kubernetes?sslmode=disable&host=%s&port=%d", pg.Dir(), pg.Port))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var lockSSL bool
	var lockDN string
	if err := db.QueryRowContext(context.Background(), `SELECT s.ssl, COALESCE(s.client_dn, '') FROM pg_stat_ssl AS s JOIN pg_stat_activity AS a ON a.pid = s.pid
		WHERE a.application_name = $1 AND a.datname = 'kubernetes'`, datastore.WriterLockApp).Scan(&lockSSL, &lockDN); err != nil {
		t.Fatalf("the server's writer lock session: %v", err)
	}
	if !lockSSL || lockDN != "/CN=postgres" {
		t.Errorf("the server's writer lock session: ssl %v, client certificate %q, want TLS with /CN=postgres", lockSSL, lockDN)
	}

	check := append([]string{"datastore", "check", "--data-dir", s.DataDir}, tlsFlags...)
	// With the server running, the check finds its writer lock held and
	// asks the server.
	if out, code := runBinary(t, check...); code != 0 || !strings.HasPrefix(out, "ok: ") || !strings.Contains(out, "recomputed from the current definitions") {
		t.Fatalf("datastore check beside the running server: exit %d\n%s", code, out)
	}
	if code := s.Stop(t); code != 0 {
		t.Fatalf("server stopped with exit code %d", code)
	}
	// Stopped, the check reads the database itself, over TLS.
	out, code = runBinary(t, check...)
	if code != 0 || !strings.HasPrefix(out, "ok: ") || !strings.Contains(out, "recomputed only by a check while the server runs") {
		t.Fatalf("datastore check of the stopped server's database: exit %d, want an offline ok\n%s", code, out)
	}
	out, code = runBinary(t, append([]string{"datastore", "check", "--data-dir", s.DataDir}, noCA...)...)
	if code != 1 || !strings.Contains(out, `harikube: connect to PostgreSQL database "kubernetes"`) || !strings.Contains(out, untrusted) {
		t.Fatalf("datastore check without --datastore-cafile: exit %d, want 1 and an error naming the database and the untrusted certificate:\n%s", code, out)
	}
}

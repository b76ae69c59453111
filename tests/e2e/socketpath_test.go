package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/harikube/harikube/pkg/datastore"
	"github.com/harikube/harikube/tests/testserver"
)

// TestDataDirSocketPathLimit: the deepest data directory whose kine.sock
// fits in a unix socket address serves; one byte deeper is refused up front,
// in one line naming a shorter place, instead of a bind failure.
func TestDataDirSocketPathLimit(t *testing.T) {
	t.Parallel()
	fits := pathOfLength(t, t.TempDir(), datastore.MaxSocketPath()-len("/kine.sock"))
	tooLong := fits + "x"

	t.Run("OneByteTooLong", func(t *testing.T) {
		port := strconv.Itoa(testserver.FreePort(t))
		out, code := runBinary(t, "server", "--data-dir", tooLong, "--https-listen-port", port, "--bind-address", "127.0.0.1")
		msg := strings.TrimSpace(out)
		if code == 0 || strings.Contains(msg, "\n") || !strings.Contains(msg, "data directory "+tooLong+" is too long") ||
			!strings.Contains(msg, "choose a shorter --data-dir, such as ") {
			t.Errorf("exit code %d, output:\n%s\nwant a non-zero exit and one line naming the directory and a shorter one", code, out)
		}
		if _, err := os.Stat(tooLong); !os.IsNotExist(err) {
			t.Errorf("the refused data directory was created (%v)", err)
		}
	})
	t.Run("Fits", func(t *testing.T) {
		s := testserver.Start(t, "--data-dir", fits)
		if _, err := s.Client.CoreV1().Namespaces().List(context.Background(), metav1.ListOptions{}); err != nil {
			t.Fatalf("list namespaces through the %d-byte socket: %v", len(datastore.SocketPath(fits)), err)
		}
		if fi, err := os.Stat(datastore.SocketPath(fits)); err != nil || fi.Mode().Type() != os.ModeSocket {
			t.Errorf("no socket at %s: %v", datastore.SocketPath(fits), err)
		}
	})
}

// pathOfLength extends base with directories to a path of exactly n bytes.
func pathOfLength(t *testing.T, base string, n int) string {
	t.Helper()
	if n-len(base) < 2 {
		t.Fatalf("temp dir %s leaves no room for a %d-byte path", base, n)
	}
	p := base
	for rest := n - len(p); rest > 0; rest = n - len(p) {
		seg := rest - 1
		if rest > 60 {
			seg = 40 // leaves at least 20: never a 1-byte remainder
		}
		p = filepath.Join(p, strings.Repeat("d", seg))
	}
	return p
}

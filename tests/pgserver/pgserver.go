// Package pgserver gives a test a private, throwaway PostgreSQL server
// (pkg/pglocal) for its lifetime. Tests skip, saying why, when PostgreSQL's
// server binaries are not installed (`apt-get install postgresql`; make test
// installs it).
package pgserver

import (
	"errors"
	"testing"

	"github.com/harikube/harikube/pkg/pglocal"
)

// Start runs a PostgreSQL server until the test ends.
func Start(t testing.TB) *pglocal.Server {
	t.Helper()
	s, err := pglocal.Start("")
	if errors.Is(err, pglocal.ErrNotInstalled) {
		t.Skipf("%v; skipping PostgreSQL tests", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Logf("stop PostgreSQL: %v", err)
		}
	})
	return s
}

// Package pgserver starts a private, throwaway PostgreSQL server for a test:
// initdb and pg_ctl on a temporary directory, reachable only through a unix
// socket in that directory. Tests skip, saying why, when PostgreSQL's server
// binaries are not installed (`apt-get install postgresql`; .ci/run does).
package pgserver

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
)

var databases atomic.Int64

// Server is a running PostgreSQL.
type Server struct {
	dir string
}

// binDir finds the newest installed PostgreSQL server binaries.
func binDir() (string, bool) {
	if dir := os.Getenv("HARIKUBE_PG_BIN"); dir != "" {
		return dir, true
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(matches) == 0 {
		if path, err := exec.LookPath("initdb"); err == nil {
			return filepath.Dir(path), true
		}
		return "", false
	}
	sort.Strings(matches)
	return filepath.Dir(matches[len(matches)-1]), true
}

// Start runs a PostgreSQL server until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, ok := binDir()
	if !ok {
		t.Skip("PostgreSQL server binaries not installed (apt-get install postgresql); skipping PostgreSQL tests")
	}
	dir, err := os.MkdirTemp("", "pg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	data := filepath.Join(dir, "data")
	run := func(name string, args ...string) {
		t.Helper()
		cmd := exec.Command(filepath.Join(bin, name), args...)
		asPostgres(t, cmd, dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	run("initdb", "--auth=trust", "--username=postgres", "--encoding=UTF8", "--no-sync", "-D", data)
	opts := fmt.Sprintf("-c listen_addresses='' -c unix_socket_directories=%s -c fsync=off -c max_connections=200", dir)
	run("pg_ctl", "-D", data, "-o", opts, "-l", filepath.Join(dir, "log"), "-w", "-t", "60", "start")
	t.Cleanup(func() {
		cmd := exec.Command(filepath.Join(bin, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop")
		asPostgres(t, cmd, dir)
		_ = cmd.Run()
	})
	return &Server{dir: dir}
}

// DSN returns a postgres:// endpoint for a new, not yet existing database
// (harikube creates it).
func (s *Server) DSN() string {
	return fmt.Sprintf("postgres://postgres@/harikube%d?host=%s&sslmode=disable", databases.Add(1), s.dir)
}

// asPostgres runs cmd as the unprivileged "postgres" user when the test
// runs as root, which initdb refuses.
func asPostgres(t testing.TB, cmd *exec.Cmd, dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		return
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Skip("running as root without a postgres user; skipping PostgreSQL tests")
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
}

// Package pglocal runs a private PostgreSQL server for tests and benchmarks:
// initdb and pg_ctl on a directory of its own, reachable only through a unix
// socket in that directory, with trust authentication.
package pglocal

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync/atomic"
	"syscall"
)

// ErrNotInstalled means PostgreSQL's server binaries were not found.
var ErrNotInstalled = errors.New("PostgreSQL server binaries not found (install the postgresql package, or set HARIKUBE_PG_BIN)")

// Server is a running private PostgreSQL.
type Server struct {
	dir, bin string
	opts     string // the server's command-line settings
	cred     *syscall.Credential
	dbs      atomic.Int64
	halted   bool
}

// BinDir finds the newest installed PostgreSQL server binaries.
func BinDir() (string, error) {
	if dir := os.Getenv("HARIKUBE_PG_BIN"); dir != "" {
		return dir, nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(matches) > 0 {
		sort.Strings(matches)
		return filepath.Dir(matches[len(matches)-1]), nil
	}
	if path, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(path), nil
	}
	return "", ErrNotInstalled
}

// Available says whether Start can work here: it needs the server binaries
// and, for root, a postgres user to run them as.
func Available() error {
	bin, err := BinDir()
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(bin, "initdb")); err != nil {
		return fmt.Errorf("%w: %v", ErrNotInstalled, err)
	}
	_, err = serverUser()
	return err
}

// serverUser is the account the server runs as: nil for the current one.
// initdb refuses to run as root, so root runs it as the postgres user.
func serverUser() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs a postgres user for PostgreSQL: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// Config adds to a server's default configuration (unix socket only, trust).
type Config struct {
	// Settings are postgresql.conf settings passed on the command line,
	// e.g. "ssl=on"; file paths in them may be relative to the data directory.
	Settings []string
	// HBA, when not empty, replaces pg_hba.conf.
	HBA string
	// Files are written into the data directory before the start, readable
	// by the server only (keys, certificates).
	Files map[string][]byte
}

// Start initialises and starts a server in a new directory under parent
// ("" for the system temp dir). Stop removes it again.
func Start(parent string) (*Server, error) { return StartWith(parent, Config{}) }

// StartWith is Start with c added to the configuration.
func StartWith(parent string, c Config) (*Server, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	cred, err := serverUser()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(parent, "pg")
	if err != nil {
		return nil, fmt.Errorf("create PostgreSQL directory: %w", err)
	}
	s := &Server{dir: dir, bin: bin, cred: cred}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	data := filepath.Join(dir, "data")
	if err := s.run("initdb", "--auth=trust", "--username=postgres", "--encoding=UTF8", "--no-sync", "-D", data); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := s.configure(data, c); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s.opts = fmt.Sprintf("-c listen_addresses='' -c unix_socket_directories=%s -c fsync=off -c max_connections=200", dir)
	for _, setting := range c.Settings {
		s.opts += " -c " + setting
	}
	if err := s.start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

func (s *Server) start() error {
	return s.run("pg_ctl", "-D", filepath.Join(s.dir, "data"), "-o", s.opts, "-l", filepath.Join(s.dir, "log"), "-w", "-t", "60", "start")
}

// Halt stops the server at once, as a crash or a failover would, and keeps
// its data for Resume.
func (s *Server) Halt() error {
	if err := s.run("pg_ctl", "-D", filepath.Join(s.dir, "data"), "-m", "immediate", "-w", "stop"); err != nil {
		return err
	}
	s.halted = true
	return nil
}

// Resume starts a halted server again on the same data and socket.
func (s *Server) Resume() error {
	if err := s.start(); err != nil {
		return err
	}
	s.halted = false
	return nil
}

// configure writes c's files into the data directory.
func (s *Server) configure(data string, c Config) error {
	files := maps.Clone(c.Files)
	if c.HBA != "" {
		if files == nil {
			files = map[string][]byte{}
		}
		files["pg_hba.conf"] = []byte(c.HBA)
	}
	for name, content := range files {
		path := filepath.Join(data, name)
		if err := os.WriteFile(path, content, 0o600); err != nil {
			return fmt.Errorf("configure PostgreSQL: %w", err)
		}
		if s.cred != nil {
			if err := os.Chown(path, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
				return fmt.Errorf("configure PostgreSQL: %w", err)
			}
		}
	}
	return nil
}

func (s *Server) run(name string, args ...string) error {
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	if s.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w\n%s", name, err, out)
	}
	return nil
}

// DSN returns a postgres:// endpoint for a new, not yet existing database
// (harikube creates it).
func (s *Server) DSN() string {
	return fmt.Sprintf("postgres://postgres@/harikube%d?host=%s&sslmode=disable", s.dbs.Add(1), s.dir)
}

// Dir holds the server's data and socket.
func (s *Server) Dir() string { return s.dir }

// Stop shuts the server down immediately and removes its directory.
func (s *Server) Stop() error {
	err := s.run("pg_ctl", "-D", filepath.Join(s.dir, "data"), "-m", "immediate", "-w", "stop")
	if s.halted {
		err = nil // not running, unless a failed Resume started it after all
	}
	if rmErr := os.RemoveAll(s.dir); err == nil {
		err = rmErr
	}
	return err
}

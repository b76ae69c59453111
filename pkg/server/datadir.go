package server

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/harikube/harikube/pkg/datastore"
)

// prepareDataDir creates the data directory (0700) and proves it writable.
func prepareDataDir(dir string) error {
	if dir == "" {
		return errors.New("no data directory: set --data-dir")
	}
	if sock := datastore.SocketPath(dir); len(sock) > datastore.MaxSocketPath() {
		return fmt.Errorf("data directory %s is too long: its socket %s would be %d bytes, and %s allows at most %d for a unix socket path; choose a shorter --data-dir%s",
			dir, sock, len(sock), runtime.GOOS, datastore.MaxSocketPath(), suggestShorter(dir))
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data directory %s cannot be created: %w; choose another --data-dir", dir, err)
	}
	warnIfShared(dir)
	probe, err := os.CreateTemp(dir, ".write-test-*")
	if err != nil {
		return fmt.Errorf("data directory %s is not writable: %w; fix its permissions or choose another --data-dir", dir, err)
	}
	probe.Close()
	return os.Remove(probe.Name())
}

// suggestShorter names a data directory whose socket path fits, if it finds
// one: the home directory's .harikube, else one in the temp directory.
func suggestShorter(dir string) string {
	var candidates []string
	if home, err := os.UserHomeDir(); err == nil {
		candidates = append(candidates, filepath.Join(home, ".harikube"))
	}
	candidates = append(candidates, filepath.Join(os.TempDir(), "harikube-"+strconv.Itoa(os.Getuid())))
	for _, c := range candidates {
		if c != dir && len(datastore.SocketPath(c)) <= datastore.MaxSocketPath() {
			return ", such as " + c
		}
	}
	return ""
}

// warnIfShared warns, as etcd does, about a data directory that existed with
// access for other users. Its secrets stay private (every key, credential,
// database and socket is 0600), so the start goes on; a directory the user
// made is not re-permissioned behind their back.
func warnIfShared(dir string) {
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm()&0o077 == 0 {
		return
	}
	logrus.Warnf("Data directory %s has mode %o: other users can list it. Its files are private, but run 'chmod 700 %s' to keep the directory so too",
		dir, fi.Mode().Perm(), dir)
}

type dirLock struct{ f *os.File }

// LockDataDir takes the data directory's lock for an offline tool (such as
// the datastore check) and returns its release function.
func LockDataDir(dir string) (func(), error) {
	l, err := lockDataDir(dir)
	if err != nil {
		return nil, err
	}
	return l.release, nil
}

// lockDataDir takes an exclusive lock for the server's lifetime, so a second
// server cannot share (and corrupt) the database or replace the socket. The
// kernel drops the lock when the process dies, even on SIGKILL.
func lockDataDir(dir string) (*dirLock, error) {
	path := filepath.Join(dir, "harikube.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		owner, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			pid := strings.TrimSpace(string(owner))
			if pid == "" {
				pid = "unknown"
			}
			return nil, datastore.InUse(fmt.Sprintf("data directory %s is in use by another harikube server (pid %s); stop it or choose another --data-dir", dir, pid))
		}
		return nil, fmt.Errorf("lock data directory %s: %w", dir, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &dirLock{f: f}, nil
}

func (l *dirLock) release() {
	_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	l.f.Close()
}

func redactEndpoint(ep string) string {
	if u, err := url.Parse(ep); err == nil && u.User != nil {
		return u.Redacted()
	}
	return ep
}

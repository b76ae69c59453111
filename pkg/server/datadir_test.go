package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/harikube/harikube/pkg/datastore"
)

func TestPrepareDataDir(t *testing.T) {
	hook := logtest.NewGlobal()
	defer hook.Reset()

	fresh := filepath.Join(t.TempDir(), "new", "data")
	if err := prepareDataDir(fresh); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(fresh); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("new data directory: %v, %v; want mode 700", fi.Mode(), err)
	}
	if len(hook.AllEntries()) != 0 {
		t.Errorf("warned about a new data directory: %q", hook.LastEntry().Message)
	}

	shared := t.TempDir()
	if err := os.Chmod(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := prepareDataDir(shared); err != nil {
		t.Fatal(err)
	}
	last := hook.LastEntry()
	if last == nil || last.Level != logrus.WarnLevel || !strings.Contains(last.Message, "chmod 700 "+shared) {
		t.Errorf("no warning naming chmod 700 for a 755 data directory: %+v", last)
	}
	if fi, _ := os.Stat(shared); fi.Mode().Perm() != 0o755 {
		t.Errorf("the user's directory was re-permissioned to %o", fi.Mode().Perm())
	}

	if os.Geteuid() != 0 { // root writes anywhere
		readOnly := t.TempDir()
		if err := os.Chmod(readOnly, 0o500); err != nil {
			t.Fatal(err)
		}
		if err := prepareDataDir(readOnly); err == nil || !strings.Contains(err.Error(), "is not writable") {
			t.Errorf("read-only data directory: %v, want 'is not writable'", err)
		}
	}
}

func TestPrepareDataDirSocketPath(t *testing.T) {
	base := t.TempDir()
	// <dir>/kine.sock is exactly the longest unix socket path of this OS.
	fits := filepath.Join(base, strings.Repeat("d", datastore.MaxSocketPath()-len("/kine.sock")-len(base)-1))
	if err := prepareDataDir(fits); err != nil {
		t.Errorf("data directory whose socket path is %d bytes: %v", len(datastore.SocketPath(fits)), err)
	}

	tooLong := fits + "d"
	err := prepareDataDir(tooLong)
	if err == nil || !strings.Contains(err.Error(), "data directory "+tooLong+" is too long") ||
		!strings.Contains(err.Error(), "choose a shorter --data-dir, such as ") {
		t.Errorf("data directory one byte too long: %v, want an error naming it and a shorter place", err)
	}
	if _, err := os.Stat(tooLong); !os.IsNotExist(err) {
		t.Errorf("the refused data directory was created: %v", err)
	}
}

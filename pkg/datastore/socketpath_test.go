package datastore

import (
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestMaxSocketPath(t *testing.T) {
	want := map[string]int{"linux": 107, "darwin": 103}[runtime.GOOS]
	if got := MaxSocketPath(); want != 0 && got != want {
		t.Errorf("MaxSocketPath() on %s = %d, want %d", runtime.GOOS, got, want)
	}

	// The kernel agrees: a path of the limit binds, one byte more does not
	// and is refused by checkSocketPath first.
	dir := t.TempDir()
	fits := filepath.Join(dir, strings.Repeat("s", MaxSocketPath()-len(dir)-1))
	if len(fits) != MaxSocketPath() {
		t.Fatalf("temp dir %s too long to build a %d-byte path", dir, MaxSocketPath())
	}
	if err := checkSocketPath(fits); err != nil {
		t.Errorf("checkSocketPath(%d bytes): %v", len(fits), err)
	}
	l, err := net.Listen("unix", fits)
	if err != nil {
		t.Fatalf("listen on a %d-byte path: %v", len(fits), err)
	}
	l.Close()

	tooLong := fits + "s"
	if l, err := net.Listen("unix", tooLong); err == nil {
		l.Close()
		t.Errorf("listen on a %d-byte path succeeded; the limit is wrong", len(tooLong))
	}
	err = checkSocketPath(tooLong)
	if err == nil || !strings.Contains(err.Error(), tooLong) || !strings.Contains(err.Error(), "shorter path") {
		t.Errorf("checkSocketPath(%d bytes) = %v, want an error naming the path and asking for a shorter one", len(tooLong), err)
	}
}

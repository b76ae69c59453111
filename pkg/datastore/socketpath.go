package datastore

import (
	"fmt"
	"runtime"
	"syscall"
)

// MaxSocketPath is the longest unix socket path bind(2) takes on this OS:
// sun_path less its terminating NUL, 107 bytes on Linux and 103 on macOS.
func MaxSocketPath() int { return len(syscall.RawSockaddrUnix{}.Path) - 1 }

// checkSocketPath turns what would be bind's "invalid argument" into a
// message that says what is wrong.
func checkSocketPath(path string) error {
	if len(path) <= MaxSocketPath() {
		return nil
	}
	return fmt.Errorf("unix socket path %s is %d bytes long; %s allows at most %d: listen on a shorter path",
		path, len(path), runtime.GOOS, MaxSocketPath())
}

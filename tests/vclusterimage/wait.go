package vclusterimage

import (
	"os"
	"strings"
	"testing"
	"time"
)

// Poll calls cond every interval until it returns true. It fails the test
// after timeout, or as soon as one of alive reports that a process the wait
// depends on has exited.
func Poll(t testing.TB, what string, interval, timeout time.Duration, cond func() (bool, error), alive ...func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ok, err := cond()
		if ok {
			return
		}
		last = err
		for _, exited := range alive {
			if err := exited(); err != nil {
				t.Fatalf("waiting for %s: %v", what, err)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: timed out after %s (last error: %v)", what, timeout, last)
		}
		time.Sleep(interval)
	}
}

// Tail is the last n lines of a log file, or why it cannot be read.
func Tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

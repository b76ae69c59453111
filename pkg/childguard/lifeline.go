//go:build unix

package childguard

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
)

// watchScript waits for a line on stdin. A line means the child ended as
// expected; end of file means every copy of the write end is closed, that is
// this process is gone, and the shell kills the child's process group. It
// ignores the signals a terminal or a supervisor sends to a whole group.
const watchScript = `trap '' INT TERM HUP QUIT
if read -r _; then exit 0; fi
kill -s KILL -- "-$1"`

// lifeline is a pipe whose read end a watcher shell holds; this process
// holds the only write end (close-on-exec, so no other child inherits it).
type lifeline struct {
	w       *os.File
	watcher *exec.Cmd
}

// startLifeline watches the process group pgid.
func startLifeline(pgid int) (*lifeline, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("lifeline pipe: %w", err)
	}
	watcher := exec.Command("/bin/sh", "-c", watchScript, "harikube-lifeline", strconv.Itoa(pgid))
	watcher.Stdin = r
	// A group of its own: signals to the starter's group do not reach it.
	watcher.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = watcher.Start()
	r.Close()
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("start lifeline watcher: %w", err)
	}
	return &lifeline{w: w, watcher: watcher}, nil
}

// release tells the watcher the child ended as expected and waits for it.
func (l *lifeline) release() error {
	_, werr := l.w.Write([]byte("released\n"))
	l.w.Close()
	if err := l.watcher.Wait(); err != nil {
		return fmt.Errorf("lifeline watcher: %w", err)
	}
	return werr
}

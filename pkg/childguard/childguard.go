// Package childguard starts child processes that do not outlive the process
// that started them, however it ends (a return, a crash or SIGKILL): on
// Linux through the kernel's parent-death signal, on macOS, which has none,
// through a lifeline pipe watched by a small shell.
package childguard

import (
	"os/exec"
	"syscall"
)

// Start starts cmd. Call the returned done once cmd.Wait has returned: it
// releases what guards the child.
func Start(cmd *exec.Cmd) (done func(), err error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	return start(cmd)
}

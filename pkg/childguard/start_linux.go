package childguard

import (
	"os/exec"
	"syscall"
)

// The kernel sends SIGKILL to the child when the thread that started it
// exits; Go keeps its threads for the life of the process.
func start(cmd *exec.Cmd) (func(), error) {
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return func() {}, nil
}

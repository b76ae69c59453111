package childguard

import (
	"fmt"
	"os/exec"
)

// macOS has no parent-death signal: the child leads a process group of its
// own, and a lifeline kills that group when this process ends.
func start(cmd *exec.Cmd) (func(), error) {
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	l, err := startLifeline(cmd.Process.Pid)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("guard %s: %w", cmd.Path, err)
	}
	return func() { _ = l.release() }, nil
}

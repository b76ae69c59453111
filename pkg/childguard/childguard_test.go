//go:build unix

package childguard

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary a starter: it starts "sleep" guarded as
// the variable's value says, reports the sleep's pid and waits to be killed.
const helperEnv = "HARIKUBE_CHILDGUARD_STARTER"

func TestMain(m *testing.M) {
	if how := os.Getenv(helperEnv); how != "" {
		if err := runStarter(how); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		time.Sleep(time.Hour) // until the test kills it
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// runStarter gives the sleep fd 3 as its stdout, so that the test sees its
// end as end of file on the other end of that pipe.
func runStarter(how string) error {
	alive := os.NewFile(3, "alive")
	sleep := exec.Command("sleep", "300")
	sleep.Stdout = alive
	switch how {
	case "start":
		if _, err := Start(sleep); err != nil {
			return err
		}
	case "lifeline", "unguarded":
		sleep.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := sleep.Start(); err != nil {
			return err
		}
		if how == "lifeline" {
			if _, err := startLifeline(sleep.Process.Pid); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("unknown starter %q", how)
	}
	alive.Close()
	fmt.Printf("%d\n", sleep.Process.Pid)
	return nil
}

// TestChildEndsWithStarter kills a starter with SIGKILL, which it cannot
// catch, and checks whether its child lived on.
func TestChildEndsWithStarter(t *testing.T) {
	for _, tc := range []struct {
		how       string
		wantAlive bool
	}{
		{"start", false},    // this OS's guard, as the bench and tests use it
		{"lifeline", false}, // macOS's guard, which also works here
		{"unguarded", true}, // the control: without a guard the child stays
	} {
		t.Run(tc.how, func(t *testing.T) {
			alive, aliveW, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer alive.Close()
			starter := exec.Command(os.Args[0], "-test.run=^$")
			starter.Env = append(os.Environ(), helperEnv+"="+tc.how)
			starter.ExtraFiles = []*os.File{aliveW}
			starter.Stderr = os.Stderr
			out, err := starter.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := starter.Start(); err != nil {
				t.Fatal(err)
			}
			aliveW.Close()
			line, err := bufio.NewReader(out).ReadString('\n')
			if err != nil {
				_ = starter.Process.Kill()
				t.Fatalf("starter reported no child: %v", err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(line))
			if err != nil {
				t.Fatalf("starter said %q", line)
			}
			// Whatever the outcome, the sleep does not outlive the test.
			defer syscall.Kill(pid, syscall.SIGKILL)

			if err := starter.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			_ = starter.Wait()

			// Generous for the guards: the machine may be busy.
			wait := 20 * time.Second
			if tc.wantAlive {
				wait = 2 * time.Second
			}
			_ = alive.SetReadDeadline(time.Now().Add(wait))
			_, err = alive.Read(make([]byte, 1))
			switch {
			case errors.Is(err, io.EOF) && tc.wantAlive:
				t.Fatal("the unguarded child ended with its starter; the test cannot tell guards from no guard")
			case errors.Is(err, io.EOF):
			case errors.Is(err, os.ErrDeadlineExceeded) && tc.wantAlive:
			case errors.Is(err, os.ErrDeadlineExceeded):
				t.Fatalf("child %d outlived its starter by %s", pid, wait)
			default:
				t.Fatalf("read the child's pipe: %v", err)
			}
		})
	}
}

// TestLifelineReleaseSparesGroup: after release, the watcher exits without
// killing, so a process group that lives on (or a reused id) is left alone.
func TestLifelineReleaseSparesGroup(t *testing.T) {
	sleep := exec.Command("sleep", "300")
	sleep.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	l, err := startLifeline(sleep.Process.Pid)
	if err != nil {
		_ = sleep.Process.Kill()
		t.Fatal(err)
	}
	if err := l.release(); err != nil {
		t.Errorf("release: %v", err)
	}
	// Had the watcher killed the group, the sleep would have died of SIGKILL.
	_ = sleep.Process.Signal(syscall.SIGTERM)
	_ = sleep.Wait()
	if ws := sleep.ProcessState.Sys().(syscall.WaitStatus); ws.Signal() != syscall.SIGTERM {
		t.Errorf("sleep ended by %v, want the test's SIGTERM", ws.Signal())
	}
}

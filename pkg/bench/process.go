package bench

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/harikube/harikube/pkg/childguard"
)

// process is a child the bench started: a harikube server or the etcd
// helper, with its output in a log file.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // valid once done is closed
	// peakAnon is the largest anonymous resident size sampled so far, in
	// bytes (Linux only: RssAnon). The peak RSS also counts the pages of the
	// 160 MiB executable the process has touched, which are shared, clean
	// page cache; RssAnon is the process's own memory, and the kernel keeps
	// no high-water mark of it.
	peakAnon atomic.Int64
	// phase names what the bench is doing to the process; peakAnonPhase is
	// the phase of the peakAnon sample.
	phase, peakAnonPhase atomic.Pointer[string]
	// peakResident is the largest resident size sampled so far, in bytes.
	peakResident atomic.Int64
}

// setPhase names what the bench does to the process from now on, for
// peakAnonDuring.
func (p *process) setPhase(name string) { p.phase.Store(&name) }

// peakAnonDuring names the phase of the largest anonymous memory sample.
func (p *process) peakAnonDuring() string {
	if phase := p.peakAnonPhase.Load(); phase != nil {
		return *phase
	}
	return ""
}

// startProcess starts bin, inside memCap's cgroup when memCap is set.
func startProcess(name, bin string, args []string, logPath string, memCap *memoryCap) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	path, argv := memCap.command(bin, args)
	cmd := exec.Command(path, argv...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// A child must not outlive the bench, however the bench ends.
	released, err := childguard.Start(cmd)
	if err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		released()
		logFile.Close()
		close(p.done)
	}()
	go p.sampleMemory(memorySampleInterval)
	return p, nil
}

// memory is a sample of a process's resident memory, in bytes.
type memory struct{ resident, anon int64 }

func (p *process) sampleMemory(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if m, err := readMemory(p.cmd.Process.Pid); err == nil {
			// The only writer of peakAnon: no other sample can come between.
			if m.anon > p.peakAnon.Load() {
				p.peakAnon.Store(m.anon)
				p.peakAnonPhase.Store(p.phase.Load())
			}
			storeMax(&p.peakResident, m.resident)
		}
		select {
		case <-p.done:
			return
		case <-t.C:
		}
	}
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// peakRSS is the process's peak resident set size in bytes: the kernel's
// high-water mark where it keeps one, else the largest sample.
func (p *process) peakRSS() (int64, error) {
	if kernel, ok, err := kernelPeakRSS(p.cmd.Process.Pid); ok || err != nil {
		return kernel, err
	}
	return p.peakResident.Load(), nil
}

func storeMax(peak *atomic.Int64, v int64) {
	for old := peak.Load(); v > old && !peak.CompareAndSwap(old, v); old = peak.Load() {
	}
}

// stop sends SIGTERM and waits for a clean exit; after timeout it kills the
// process and reports that. A non-zero exit is an error too.
func (p *process) stop(timeout time.Duration) error {
	if !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop within %s of SIGTERM; killed", p.name, timeout)
	}
	if p.err != nil {
		return fmt.Errorf("%s: %w\n%s", p.name, p.err, p.logTail(20))
	}
	return nil
}

// exitError describes a process that ended by itself.
func (p *process) exitError() error {
	<-p.done
	err := p.err
	if err == nil {
		err = errors.New("exited with status 0")
	}
	return fmt.Errorf("%s stopped unexpectedly: %w\n%s", p.name, err, p.logTail(20))
}

// logTail is the end of the process's log, for error messages (the bench
// deletes the log with the data directory).
func (p *process) logTail(lines int) string {
	data, err := os.ReadFile(p.log)
	if err != nil {
		return ""
	}
	all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return "--- last lines of " + p.name + " log ---\n" + strings.Join(all, "\n")
}

// freePort asks the kernel for a loopback port nobody listens on.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// dirSize sums the sizes of the regular files below dir.
func dirSize(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
		}
		return nil
	})
	return total, err
}

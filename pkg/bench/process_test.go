package bench

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// TestProcessMemory: the samples and the peak of a real child are read the
// way this OS allows.
func TestProcessMemory(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	p, err := startProcess("sleep", sleep, []string{"60"}, filepath.Join(t.TempDir(), "sleep.log"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	}()
	deadline := time.Now().Add(30 * time.Second)
	for p.peakResident.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(memorySampleInterval)
	}
	if p.peakResident.Load() == 0 {
		t.Fatal("no resident size sampled in 30s")
	}
	if runtime.GOOS == "linux" && p.peakAnon.Load() == 0 {
		t.Error("no anonymous resident size sampled")
	}
	rss, err := p.peakRSS()
	if err != nil || rss < p.peakResident.Load()/2 {
		t.Errorf("peakRSS() = %d, %v; want about the sampled %d or more", rss, err, p.peakResident.Load())
	}
}

// TestStallWatch: the watch cancels the mode only when the server stays
// unanswering while the cgroup is at its limit, check after check.
func TestStallWatch(t *testing.T) {
	down := func(context.Context) error { return errors.New("no answer") }
	up := func(context.Context) error { return nil }
	for _, tc := range []struct {
		name    string
		answers func(context.Context) error
		atLimit bool
		stalled bool
	}{
		{"unanswering at the limit", down, true, true},
		{"unanswering below the limit", down, false, false},
		{"answering at the limit", up, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			w := stallWatch{every: 5 * time.Millisecond, strikes: 3, answers: tc.answers, atLimit: func() bool { return tc.atLimit }}
			done := make(chan struct{})
			go func() { w.run(ctx, cancel); close(done) }()
			select {
			case <-done:
			case <-time.After(500 * time.Millisecond):
			}
			if got := errors.Is(context.Cause(ctx), errStalledAtLimit); got != tc.stalled {
				t.Errorf("stalled: %v, want %v", got, tc.stalled)
			}
		})
	}
}

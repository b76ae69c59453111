package bench

import (
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

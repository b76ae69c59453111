package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestHitsLimitWithin: a process in the cgroup that keeps reading a file
// larger than the limit keeps the cgroup at its limit (the kernel reclaims
// the page cache it charges); once it is gone, the cgroup is not.
func TestHitsLimitWithin(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating a memory cgroup needs root (CI runs as root)")
	}
	if _, err := os.Stat(cgroupMemoryRoot); err != nil {
		t.Skip("needs the cgroup v1 memory controller: ", err)
	}
	c, release, err := capMemory(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := release(); err != nil {
			t.Error(err)
		}
	}()
	// Written here, then dropped from the page cache, so the reads charge
	// the cgroup.
	src := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(src, make([]byte, 64<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	big, err := uncachedCopy(src, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if c.hitsLimitWithin(time.Second) {
		t.Fatal("an empty cgroup is at its limit")
	}
	path, argv := c.command("/bin/sh", []string{"-c", `while :; do cat "$0" > /dev/null; done`, big})
	reader := exec.Command(path, argv...)
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	if !c.hitsLimitWithin(2 * time.Second) {
		t.Error("a cgroup whose process keeps reading a file four times its limit is not at its limit")
	}
	_ = reader.Process.Kill()
	_ = reader.Wait()
	time.Sleep(500 * time.Millisecond)
	if c.hitsLimitWithin(time.Second) {
		t.Error("the cgroup is still at its limit after its process exited")
	}
}

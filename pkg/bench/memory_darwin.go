package bench

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// memorySampleInterval: each sample runs ps, a few milliseconds of CPU.
const memorySampleInterval = 500 * time.Millisecond

// macOS tells other processes no anonymous share: memory.anon stays 0.
func readMemory(pid int) (memory, error) {
	out, err := exec.Command("/bin/ps", "-o", "rss=", "-p", strconv.Itoa(pid)).Output()
	if err != nil {
		return memory{}, fmt.Errorf("ps -p %d: %w", pid, err)
	}
	kb, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		return memory{}, fmt.Errorf("ps -p %d: resident size %q: %w", pid, out, err)
	}
	return memory{resident: kb * 1024}, nil
}

// kernelPeakRSS: macOS keeps a high-water mark (ru_maxrss) only for a child
// that has exited, so the peak is the largest sample.
func kernelPeakRSS(int) (int64, bool, error) { return 0, false, nil }

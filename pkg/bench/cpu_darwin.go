package bench

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// cpuSeconds is the user and system CPU time a process has used, from
// ps's cputime ([[dd-]hh:]mm:ss.ss).
func cpuSeconds(pid int) (float64, error) {
	out, err := exec.Command("/bin/ps", "-o", "time=", "-p", strconv.Itoa(pid)).Output()
	if err != nil {
		return 0, fmt.Errorf("ps -p %d: %w", pid, err)
	}
	text := strings.TrimSpace(string(out))
	days := 0.0
	if d, rest, ok := strings.Cut(text, "-"); ok {
		v, err := strconv.ParseFloat(d, 64)
		if err != nil {
			return 0, fmt.Errorf("ps cputime %q: %w", text, err)
		}
		days, text = v, rest
	}
	total := 0.0
	for _, part := range strings.Split(text, ":") {
		v, err := strconv.ParseFloat(part, 64)
		if err != nil {
			return 0, fmt.Errorf("ps cputime %q: %w", string(out), err)
		}
		total = total*60 + v
	}
	return days*86400 + total, nil
}

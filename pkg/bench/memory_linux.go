package bench

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// memorySampleInterval is short enough to catch the peaks of LISTs and
// seeding, which last seconds; reading /proc costs microseconds.
const memorySampleInterval = 100 * time.Millisecond

func readMemory(pid int) (memory, error) {
	kb, err := procStatusKB(pid, "VmRSS", "RssAnon")
	if err != nil {
		return memory{}, err
	}
	return memory{resident: kb[0] * 1024, anon: kb[1] * 1024}, nil
}

// kernelPeakRSS is VmHWM, the kernel's high-water mark of the resident set.
func kernelPeakRSS(pid int) (int64, bool, error) {
	kb, err := procStatusKB(pid, "VmHWM")
	if err != nil {
		return 0, true, err
	}
	return kb[0] * 1024, true, nil
}

// procStatusKB reads "kB" fields of /proc/<pid>/status, in the order asked.
func procStatusKB(pid int, fields ...string) ([]int64, error) {
	path := fmt.Sprintf("/proc/%d/status", pid)
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	values, found := make([]int64, len(fields)), 0
	s := bufio.NewScanner(f)
	for s.Scan() {
		name, rest, ok := strings.Cut(s.Text(), ":")
		if !ok {
			continue
		}
		for i, field := range fields {
			if name == field {
				if values[i], err = strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64); err != nil {
					return nil, fmt.Errorf("%s in %s: %w", field, path, err)
				}
				found++
			}
		}
	}
	if found != len(fields) {
		return nil, fmt.Errorf("%s lacks one of %v", path, fields)
	}
	return values, s.Err()
}

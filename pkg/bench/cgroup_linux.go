package bench

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// cgroupMemoryRoot is where cgroup v1 mounts its memory controller.
const cgroupMemoryRoot = "/sys/fs/cgroup/memory"

// memoryCap is a cgroup v1 memory cgroup with a limit: what a container's
// memory limit is. A process that grows past it is killed by the kernel's
// OOM killer, which the cgroup counts, so the bench can tell that end from
// others.
type memoryCap struct {
	dir   string
	limit int64
}

// ownMemoryCgroup is the memory cgroup this process is in.
func ownMemoryCgroup() (string, error) {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		// v1 lines are "id:controllers:path"; v2's single line is "0::path".
		parts := strings.SplitN(s.Text(), ":", 3)
		if len(parts) == 3 && slices.Contains(strings.Split(parts[1], ","), "memory") {
			return filepath.Join(cgroupMemoryRoot, parts[2]), nil
		}
	}
	if err := s.Err(); err != nil {
		return "", err
	}
	return "", errors.New("no cgroup v1 memory controller in /proc/self/cgroup (--memory-limit needs cgroup v1, as on this machine; on cgroup v2 run the bench in a unit or container with a memory limit instead)")
}

// capMemory puts this process into a new memory cgroup, below the one it is
// in, limited to limit bytes; the servers and etcd it starts from then on
// start in it, so that the limit is theirs from their first instruction (a
// server derives its Go soft limit from it, as in a container). release
// moves this process back and removes the cgroup.
func capMemory(limit int64) (c *memoryCap, release func() error, err error) {
	own, err := ownMemoryCgroup()
	if err != nil {
		return nil, nil, err
	}
	c = &memoryCap{dir: filepath.Join(own, fmt.Sprintf("harikube-bench-%d", os.Getpid())), limit: limit}
	if err := os.Mkdir(c.dir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("create memory cgroup (--memory-limit): %w", err)
	}
	if err := c.write("memory.limit_in_bytes", strconv.FormatInt(limit, 10)); err != nil {
		_ = os.Remove(c.dir)
		return nil, nil, err
	}
	if err := c.write("cgroup.procs", strconv.Itoa(os.Getpid())); err != nil {
		_ = os.Remove(c.dir)
		return nil, nil, err
	}
	release = func() error {
		if err := os.WriteFile(filepath.Join(own, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			return fmt.Errorf("leave memory cgroup %s: %w", c.dir, err)
		}
		return c.remove()
	}
	return c, release, nil
}

func (c *memoryCap) write(file, value string) error {
	if err := os.WriteFile(filepath.Join(c.dir, file), []byte(value), 0o644); err != nil {
		return fmt.Errorf("memory cgroup %s: %w", c.dir, err)
	}
	return nil
}

func (c *memoryCap) readInt(file string) (int64, error) {
	data, err := os.ReadFile(filepath.Join(c.dir, file))
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
}

// oomKills is how many processes the OOM killer has killed in the cgroup
// (and its children).
func (c *memoryCap) oomKills() (int64, error) {
	data, err := os.ReadFile(filepath.Join(c.dir, "memory.oom_control"))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("%s/memory.oom_control has no oom_kill count", c.dir)
}

// peak is the cgroup's largest memory use (page cache included).
func (c *memoryCap) peak() (int64, error) { return c.readInt("memory.max_usage_in_bytes") }

// resetPeak starts a new high-water mark (for the next mode).
func (c *memoryCap) resetPeak() error { return c.write("memory.max_usage_in_bytes", "0") }

// remove deletes the cgroup once its processes have exited (the kernel
// removes a process from its cgroup a moment after it is reaped).
func (c *memoryCap) remove() error {
	var err error
	for range 50 {
		if err = os.Remove(c.dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("remove memory cgroup: %w", err)
}

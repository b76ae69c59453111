package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
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

// capMemory creates a memory cgroup below the one this process is in,
// limited to limit bytes, for the servers and etcd the bench starts from then
// on (command): the limit is theirs alone, as a container's, and the bench's
// own client (which decodes every LIST it times) stays outside it. release
// removes the cgroup once they have exited.
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
	return c, c.remove, nil
}

// command is the command line that runs bin in the cgroup: a shell joins
// it and then execs bin, so the process is inside from its first
// instruction (a server derives its Go soft limit from the cgroup at start).
// cgroup v1 cannot start a process in another cgroup directly.
func (c *memoryCap) command(bin string, args []string) (string, []string) {
	if c == nil {
		return bin, args
	}
	return "/bin/sh", append([]string{"-c", `echo $$ > "$1" && shift && exec "$@"`, "harikube-bench-cgroup", filepath.Join(c.dir, "cgroup.procs"), bin}, args...)
}

// uncachedCopy copies bin into dir and drops the copy from the page cache,
// so the pages the servers run from are charged to the cgroup when they
// first touch them, as a container's image is, rather than to the bench
// that runs from bin and loaded them first. On tmpfs the pages cannot
// leave memory, so dir must be on a disk.
func uncachedCopy(bin, dir string) (string, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return "", err
	}
	if fs.Type == unix.TMPFS_MAGIC {
		return "", fmt.Errorf("%s is on tmpfs, whose pages stay in memory and would not be charged to the servers; give --work-dir a directory on a disk", dir)
	}
	src, err := os.Open(bin)
	if err != nil {
		return "", err
	}
	defer src.Close()
	path := filepath.Join(dir, filepath.Base(bin))
	dst, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o700)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return "", fmt.Errorf("copy %s: %w", bin, err)
	}
	// Written pages are dirty and stay cached until written back.
	if err := dst.Sync(); err != nil {
		dst.Close()
		return "", err
	}
	if err := unix.Fadvise(int(dst.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		dst.Close()
		return "", fmt.Errorf("drop %s from the page cache: %w", path, err)
	}
	return path, dst.Close()
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

// limitHits is how often the cgroup's memory reached its limit (each time,
// the kernel reclaimed pages or killed a process).
func (c *memoryCap) limitHits() (int64, error) { return c.readInt("memory.failcnt") }

// hitsLimitWithin waits d and reports whether the cgroup reached its limit
// meanwhile.
func (c *memoryCap) hitsLimitWithin(d time.Duration) bool {
	before, err := c.limitHits()
	if err != nil {
		return false
	}
	time.Sleep(d)
	after, err := c.limitHits()
	return err == nil && after > before
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

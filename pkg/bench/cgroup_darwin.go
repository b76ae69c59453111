package bench

import (
	"errors"
	"time"
)

// memoryCap is a cgroup memory limit, which macOS does not have.
type memoryCap struct {
	dir   string
	limit int64
}

func capMemory(int64) (*memoryCap, func() error, error) {
	return nil, nil, errors.New("--memory-limit needs Linux cgroups")
}

func (c *memoryCap) oomKills() (int64, error) { return 0, nil }
func (c *memoryCap) peak() (int64, error)     { return 0, nil }

func (c *memoryCap) hitsLimitWithin(time.Duration) bool { return false }
func (c *memoryCap) resetPeak() error                   { return nil }

func (c *memoryCap) command(bin string, args []string) (string, []string) { return bin, args }
func uncachedCopy(bin, _ string) (string, error)                          { return bin, nil }

package server

import (
	"math"
	"os"
	"runtime/debug"
	"testing"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// unsetenv removes a variable for the test; t.Setenv restores it after.
func unsetenv(t *testing.T, name string) {
	t.Setenv(name, "")
	if err := os.Unsetenv(name); err != nil {
		t.Fatal(err)
	}
}

func TestGoMemoryLimitFollowsTheCgroup(t *testing.T) {
	t.Cleanup(func() { debug.SetMemoryLimit(math.MaxInt64) })
	unsetenv(t, "AUTOMEMLIMIT")
	unsetenv(t, "GOMEMLIMIT")

	var cgroupLimit uint64 = 1 << 30
	got, err := setGoMemoryLimit(memlimit.Limit(cgroupLimit))
	if err != nil {
		t.Fatal(err)
	}
	want := int64(float64(cgroupLimit) * memoryLimitRatio)
	if got != want || debug.SetMemoryLimit(-1) != want {
		t.Errorf("limit %d (runtime: %d), want %d: 90 %% of the cgroup's 1 GiB", got, debug.SetMemoryLimit(-1), want)
	}

	debug.SetMemoryLimit(math.MaxInt64)
	if _, err := setGoMemoryLimit(func() (uint64, error) { return 0, memlimit.ErrNoLimit }); err != nil {
		t.Fatal(err)
	}
	if l := debug.SetMemoryLimit(-1); l != math.MaxInt64 {
		t.Errorf("no cgroup limit set a Go limit of %d", l)
	}
}

func TestGoMemoryLimitLeavesGOMEMLIMITAlone(t *testing.T) {
	t.Cleanup(func() { debug.SetMemoryLimit(math.MaxInt64) })
	t.Setenv("GOMEMLIMIT", "512MiB")
	debug.SetMemoryLimit(512 << 20)
	if _, err := setGoMemoryLimit(memlimit.Limit(1 << 30)); err != nil {
		t.Fatal(err)
	}
	if l := debug.SetMemoryLimit(-1); l != 512<<20 {
		t.Errorf("GOMEMLIMIT=512MiB replaced by %d", l)
	}
}

func TestGCPercentDefaultsTo50UnlessGOGCIsSet(t *testing.T) {
	t.Cleanup(func() { debug.SetGCPercent(100); debug.SetMemoryLimit(math.MaxInt64) })
	unsetenv(t, "GOGC")
	debug.SetGCPercent(100)
	TuneGarbageCollector()
	if got := debug.SetGCPercent(100); got != defaultGCPercent {
		t.Errorf("GOGC unset: GC percent %d, want %d", got, defaultGCPercent)
	}
	t.Setenv("GOGC", "200")
	debug.SetGCPercent(200)
	TuneGarbageCollector()
	if got := debug.SetGCPercent(100); got != 200 {
		t.Errorf("GOGC=200: GC percent %d", got)
	}
}

func TestGoMemoryLimitFollowsAUTOMEMLIMIT(t *testing.T) {
	t.Cleanup(func() { debug.SetMemoryLimit(math.MaxInt64) })
	unsetenv(t, "GOMEMLIMIT")
	var cgroupLimit uint64 = 1 << 30

	t.Setenv("AUTOMEMLIMIT", "off")
	debug.SetMemoryLimit(math.MaxInt64)
	if _, err := setGoMemoryLimit(memlimit.Limit(cgroupLimit)); err != nil {
		t.Fatal(err)
	}
	if l := debug.SetMemoryLimit(-1); l != math.MaxInt64 {
		t.Errorf("AUTOMEMLIMIT=off set a Go limit of %d", l)
	}

	t.Setenv("AUTOMEMLIMIT", "0.5")
	if _, err := setGoMemoryLimit(memlimit.Limit(cgroupLimit)); err != nil {
		t.Fatal(err)
	}
	if l, want := debug.SetMemoryLimit(-1), int64(cgroupLimit/2); l != want {
		t.Errorf("AUTOMEMLIMIT=0.5: Go limit %d, want %d (half the cgroup's 1 GiB)", l, want)
	}
}

package server

import (
	"context"
	"fmt"
	"math"
	"os"
	"runtime/debug"
	"slices"
	"testing"
	"time"

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

func TestGCPercentTunedUnlessGOGCIsSet(t *testing.T) {
	t.Cleanup(func() { debug.SetGCPercent(100); debug.SetMemoryLimit(math.MaxInt64) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	unsetenv(t, "GOGC")
	debug.SetGCPercent(100)
	TuneGarbageCollector(ctx)
	// The start is at the idle target; TestIdleTuner covers the rest.
	if got := debug.SetGCPercent(100); got != idleGCPercent {
		t.Errorf("GOGC unset: GC percent %d at the start, want %d", got, idleGCPercent)
	}
	t.Setenv("GOGC", "200")
	debug.SetGCPercent(200)
	TuneGarbageCollector(ctx)
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

// fakeCollector records what the tuner asks of the runtime.
type fakeCollector struct{ calls []string }

func (f *fakeCollector) allocatedBytes() uint64 { return 0 }
func (f *fakeCollector) setGCPercent(p int)     { f.calls = append(f.calls, fmt.Sprintf("gogc %d", p)) }
func (f *fakeCollector) release()               { f.calls = append(f.calls, "release") }

func TestIdleTuner(t *testing.T) {
	const mib = 1 << 20
	start := time.Unix(0, 0)
	for _, tc := range []struct {
		name  string
		rates []float64 // one check every idleCheckInterval
		want  []string  // after the start at the idle target
	}{
		{"idle from the start stays so", []float64{0.4 * mib, 0.2 * mib, 1.5 * mib}, []string{"release"}},
		{"busy at the first check", []float64{50 * mib, 3 * mib, 1.5 * mib}, []string{"gogc 50"}},
		{"idle again lowers the target and releases once", []float64{50 * mib, 0.4 * mib, 0.2 * mib}, []string{"gogc 50", "gogc 10", "release"}},
		{"between the thresholds nothing changes", []float64{50 * mib, 1.5 * mib, 0.5 * mib, 1.9 * mib}, []string{"gogc 50", "gogc 10", "release"}},
		// Idle again within minReleaseInterval: only the target drops.
		{"releases at most once a minute", []float64{50 * mib, 0.5 * mib, 30 * mib, 0.5 * mib},
			[]string{"gogc 50", "gogc 10", "release", "gogc 50", "gogc 10"}},
		{"releases again after a minute", append(append([]float64{50 * mib, 0.5 * mib}, slices.Repeat([]float64{30 * mib}, 12)...), 0.5*mib),
			[]string{"gogc 50", "gogc 10", "release", "gogc 50", "gogc 10", "release"}},
		// Idle at 10 s, then for two minutes more: released at 10, 70, 130 s.
		{"idle for minutes releases once a minute", append([]float64{50 * mib}, slices.Repeat([]float64{0.5 * mib}, 25)...),
			[]string{"gogc 50", "gogc 10", "release", "release", "release"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeCollector{}
			tuner := newIdleTuner(f, 50)
			for i, r := range tc.rates {
				tuner.observe(r, start.Add(time.Duration(i+1)*idleCheckInterval))
			}
			if want := append([]string{"gogc 10"}, tc.want...); !slices.Equal(f.calls, want) {
				t.Errorf("calls %q, want %q", f.calls, want)
			}
		})
	}
}

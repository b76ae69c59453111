package bench

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Target is one of the goals, as measured in this run.
type Target struct {
	Name string `json:"name"`
	// Status is "met", "missed", or "not measured" when the run lacks the
	// mode or size the target is about (Detail then gives the nearest
	// figures the run has).
	Status string `json:"status"`
	Detail string `json:"detail"`
}

const (
	targetN       = 100000
	targetSmallN  = 1000
	speedupGoal   = 100.0
	scalingGoal   = 2.0
	rssGoalBytes  = 400 << 20
	createGoal    = 1.0
	idleGoalBytes = 150 << 20
	statusMet     = "met"
	statusMissed  = "missed"
	statusMissing = "not measured"
)

func evaluateTargets(r *Report) []Target {
	return []Target{speedupTarget(r), scalingTarget(r), rssTarget(r), idleTarget(r), createTarget(r), historyTarget(r)}
}

func status(ok, measured bool) string {
	switch {
	case !measured:
		return statusMissing
	case ok:
		return statusMet
	default:
		return statusMissed
	}
}

// largest is the largest size at which every given mode has a result.
func (r *Report) largest(modes ...string) (int, bool) {
	best, found := 0, false
	for _, n := range r.Sizes {
		all := true
		for _, m := range modes {
			if _, ok := r.result(m, n); !ok {
				all = false
			}
		}
		if all && n >= best {
			best, found = n, true
		}
	}
	return best, found
}

// comparison is one selective workload in two results: x is b's p50 over a's.
type comparison struct {
	title string
	a, b  ListResult
	x     float64
}

func compareSelective(a, b Result) []comparison {
	var out []comparison
	for _, w := range Workloads() {
		if !w.Selective {
			continue
		}
		la, _ := a.list(w.Key)
		lb, _ := b.list(w.Key)
		out = append(out, comparison{title: w.Title, a: la, b: lb, x: lb.P50Ms / la.P50Ms})
	}
	return out
}

func byRatio(c, d comparison) int { return cmp.Compare(c.x, d.x) }

func atSize(n, want int) string {
	if n == want {
		return fmt.Sprintf("at N=%d", n)
	}
	return fmt.Sprintf("at N=%d (N=%d not run)", n, want)
}

func speedupTarget(r *Report) Target {
	t := Target{Name: fmt.Sprintf("selective LIST (≤0.1 %%) at N=%d ≥ %.0f× faster in harikube than no-pushdown", targetN, speedupGoal)}
	n, ok := r.largest("harikube", "no-pushdown")
	if !ok {
		t.Status, t.Detail = statusMissing, "needs modes harikube and no-pushdown"
		return t
	}
	h, _ := r.result("harikube", n)
	np, _ := r.result("no-pushdown", n)
	cs := compareSelective(h, np)
	var parts []string
	for _, c := range cs {
		parts = append(parts, fmt.Sprintf("%s %s", c.title, ratio(c.x)))
	}
	worst := slices.MinFunc(cs, byRatio)
	t.Status = status(worst.x >= speedupGoal, n >= targetN)
	t.Detail = fmt.Sprintf("%s the smallest speedup is %s (%s); %s", atSize(n, targetN), ratio(worst.x), worst.title, strings.Join(parts, ", "))
	return t
}

func scalingTarget(r *Report) Target {
	t := Target{Name: fmt.Sprintf("harikube selective LIST p50 at N=%d ≤ %.0f× its p50 at N=%d", targetN, scalingGoal, targetSmallN)}
	var sizes []int
	for _, n := range r.Sizes {
		if _, ok := r.result("harikube", n); ok {
			sizes = append(sizes, n)
		}
	}
	if len(sizes) < 2 {
		t.Status, t.Detail = statusMissing, "needs mode harikube at two sizes"
		return t
	}
	small, large := slices.Min(sizes), slices.Max(sizes)
	a, _ := r.result("harikube", small)
	b, _ := r.result("harikube", large)
	cs := compareSelective(a, b)
	var parts []string
	for _, c := range cs {
		parts = append(parts, fmt.Sprintf("%s %s→%s ms", c.title, num(c.a.P50Ms), num(c.b.P50Ms)))
	}
	worst := slices.MaxFunc(cs, byRatio)
	t.Status = status(worst.x <= scalingGoal, small == targetSmallN && large == targetN)
	t.Detail = fmt.Sprintf("N=%d vs N=%d: the largest growth is %s (%s); %s", large, small, ratio(worst.x), worst.title, strings.Join(parts, ", "))
	if large != targetN {
		t.Detail += fmt.Sprintf(" (N=%d not run)", targetN)
	}
	return t
}

func rssTarget(r *Report) Target {
	t := Target{Name: fmt.Sprintf("harikube peak RSS at N=%d ≤ %s", targetN, mib(rssGoalBytes))}
	n, ok := r.largest("harikube")
	if !ok {
		t.Status, t.Detail = statusMissing, "needs mode harikube"
		return t
	}
	res, _ := r.result("harikube", n)
	// Under a memory limit the kernel takes back pages to stay below it, so
	// the peak says what fits, not what the server uses unconstrained.
	t.Status = status(res.ServerPeakRSSBytes <= rssGoalBytes, n >= targetN && r.MemoryLimitBytes == 0)
	t.Detail = fmt.Sprintf("%s: %s (anonymous %s; the rest is the executable's pages)", atSize(n, targetN),
		mib(res.ServerPeakRSSBytes), mib(res.ServerPeakAnonBytes))
	if r.MemoryLimitBytes > 0 {
		t.Detail += fmt.Sprintf("; under --memory-limit %s, memory cgroup peak %s (run without a limit to measure this target)",
			gib(r.MemoryLimitBytes), mib(res.CgroupPeakBytes))
	}
	return t
}

func idleTarget(r *Report) Target {
	t := Target{Name: fmt.Sprintf("harikube idle anonymous RSS ≤ %s", mib(idleGoalBytes))}
	res, ok := r.result("harikube", r.Sizes[0])
	if !ok || res.IdleAnonBytes == 0 {
		t.Status, t.Detail = statusMissing, "needs mode harikube on Linux"
		return t
	}
	t.Status = status(res.IdleAnonBytes <= idleGoalBytes, true)
	t.Detail = fmt.Sprintf("%s with the CRD and no objects", mib(res.IdleAnonBytes))
	return t
}

func createTarget(r *Report) Target {
	t := Target{Name: fmt.Sprintf("harikube create throughput ≥ %.0f %% of kine-stock's", createGoal*100)}
	n, ok := r.largest("harikube", "kine-stock")
	if !ok {
		t.Status, t.Detail = statusMissing, "needs modes harikube and kine-stock"
		return t
	}
	h, _ := r.result("harikube", n)
	k, _ := r.result("kine-stock", n)
	x := h.Create.PerSecond / k.Create.PerSecond
	t.Status = status(x >= createGoal, true)
	t.Detail = fmt.Sprintf("at N=%d: %.0f vs %.0f creates/s = %.0f %%; server CPU s per 1,000 creates %.2f vs %.2f", n,
		h.Create.PerSecond, k.Create.PerSecond, x*100, h.Create.CPUSecondsPer1000, k.Create.CPUSecondsPer1000)
	return t
}

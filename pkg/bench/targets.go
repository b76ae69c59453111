package bench

import (
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
	createGoal    = 0.8
	statusMet     = "met"
	statusMissed  = "missed"
	statusMissing = "not measured"
)

func evaluateTargets(r *Report) []Target {
	return []Target{speedupTarget(r), scalingTarget(r), rssTarget(r), createTarget(r)}
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

func selectiveWorkloads() []Workload {
	var out []Workload
	for _, w := range Workloads() {
		if w.Selective {
			out = append(out, w)
		}
	}
	return out
}

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
	worst, worstName := 0.0, ""
	var parts []string
	for _, w := range selectiveWorkloads() {
		a, _ := h.list(w.Key)
		b, _ := np.list(w.Key)
		x := b.P50Ms / a.P50Ms
		parts = append(parts, fmt.Sprintf("%s %s", w.Title, ratio(x)))
		if worstName == "" || x < worst {
			worst, worstName = x, w.Title
		}
	}
	t.Status = status(worst >= speedupGoal, n >= targetN)
	t.Detail = fmt.Sprintf("%s the smallest speedup is %s (%s); %s", atSize(n, targetN), ratio(worst), worstName, strings.Join(parts, ", "))
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
	worst, worstName := 0.0, ""
	var parts []string
	for _, w := range selectiveWorkloads() {
		la, _ := a.list(w.Key)
		lb, _ := b.list(w.Key)
		x := lb.P50Ms / la.P50Ms
		parts = append(parts, fmt.Sprintf("%s %s→%s ms", w.Title, num(la.P50Ms), num(lb.P50Ms)))
		if worstName == "" || x > worst {
			worst, worstName = x, w.Title
		}
	}
	t.Status = status(worst <= scalingGoal, small == targetSmallN && large == targetN)
	t.Detail = fmt.Sprintf("N=%d vs N=%d: the largest growth is %s (%s); %s", large, small, ratio(worst), worstName, strings.Join(parts, ", "))
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
	t.Status = status(res.ServerPeakRSSBytes <= rssGoalBytes, n >= targetN)
	t.Detail = fmt.Sprintf("%s: %s (anonymous %s; the rest is the executable's pages)", atSize(n, targetN),
		mib(res.ServerPeakRSSBytes), mib(res.ServerPeakAnonBytes))
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
	t.Detail = fmt.Sprintf("at N=%d: %.0f vs %.0f creates/s = %.0f %%", n, h.Create.PerSecond, k.Create.PerSecond, x*100)
	return t
}

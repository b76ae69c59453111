package bench

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
)

// ListResult is one LIST workload in one mode and size.
type ListResult struct {
	Workload      string `json:"workload"`
	Title         string `json:"title"`
	LabelSelector string `json:"label_selector,omitempty"`
	FieldSelector string `json:"field_selector,omitempty"`
	Limit         int64  `json:"limit,omitempty"`
	// Expected and Got count the objects; every run is checked by name.
	Expected int `json:"expected"`
	Got      int `json:"got"`
	Pages    int `json:"pages"`
	Latency
}

// Latency summarises timed samples.
type Latency struct {
	Samples   int       `json:"samples"`
	P50Ms     float64   `json:"p50_ms"`
	P95Ms     float64   `json:"p95_ms"`
	SamplesMs []float64 `json:"samples_ms"`
}

func summarize(samples []time.Duration) Latency {
	ms := make([]float64, len(samples))
	for i, d := range samples {
		ms[i] = float64(d.Microseconds()) / 1000
	}
	sorted := slices.Clone(ms)
	sort.Float64s(sorted)
	return Latency{Samples: len(ms), P50Ms: percentile(sorted, 50), P95Ms: percentile(sorted, 95), SamplesMs: ms}
}

// percentile is the nearest-rank percentile of sorted values.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted))+0.999999) - 1
	return sorted[max(0, min(rank, len(sorted)-1))]
}

// Repetition bounds how often each LIST is timed.
type Repetition struct {
	// Runs is the number of timed runs.
	Runs int
	// Budget ends the timed runs of one workload early: a LIST slower than
	// the budget is timed once.
	Budget time.Duration
}

// measureList times a workload and checks every result against the names
// it must return; a wrong result is an error. A first run faster than a
// twentieth of the budget is an untimed warm-up; a slower one, where warm
// caches matter little, is timed like the others.
func measureList(ctx context.Context, c dynamic.Interface, w Workload, n int, rep Repetition) (ListResult, error) {
	want := w.Expected(n)
	res := ListResult{Workload: w.Key, Title: w.Title, LabelSelector: w.LabelSelector, FieldSelector: w.FieldSelector,
		Limit: w.Limit, Expected: len(want)}
	lat, err := timeRuns(rep, func() (time.Duration, error) {
		d, names, pages, err := list(ctx, c, w)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", w.Title, err)
		}
		if err := checkNames(names, want); err != nil {
			return 0, fmt.Errorf("%s: wrong result: %w", w.Title, err)
		}
		res.Got, res.Pages = len(names), pages
		return d, nil
	})
	res.Latency = lat
	return res, err
}

// timeRuns times run as rep says: a first run faster than a twentieth of
// the budget is an untimed warm-up, then up to rep.Runs runs within the
// budget. An error of any run is returned.
func timeRuns(rep Repetition, run func() (time.Duration, error)) (Latency, error) {
	var samples []time.Duration
	start := time.Now()
	for i := 0; ; i++ {
		d, err := run()
		if err != nil {
			return Latency{}, err
		}
		if i == 0 && d < rep.Budget/20 {
			continue
		}
		samples = append(samples, d)
		if len(samples) >= rep.Runs || time.Since(start) >= rep.Budget {
			return summarize(samples), nil
		}
	}
}

// list runs the workload's LIST, following continue tokens, and returns
// its duration and the names it returned.
func list(ctx context.Context, c dynamic.Interface, w Workload) (time.Duration, []string, int, error) {
	rc := c.Resource(widgets).Namespace(namespace)
	opts := metav1.ListOptions{LabelSelector: w.LabelSelector, FieldSelector: w.FieldSelector, Limit: w.Limit}
	var names []string
	pages := 0
	start := time.Now()
	for {
		l, err := rc.List(ctx, opts)
		if err != nil {
			return 0, nil, pages, err
		}
		pages++
		for _, item := range l.Items {
			names = append(names, item.GetName())
		}
		if opts.Continue = l.GetContinue(); opts.Continue == "" {
			return time.Since(start), names, pages, nil
		}
	}
}

func checkNames(got, want []string) error {
	got = slices.Clone(got)
	sort.Strings(got)
	if slices.Equal(got, want) {
		return nil
	}
	missing, extra := diff(want, got), diff(got, want)
	return fmt.Errorf("got %d objects, want %d; missing %s, unexpected %s", len(got), len(want), sample(missing), sample(extra))
}

// diff is the names of a not in b; both are sorted.
func diff(a, b []string) []string {
	var out []string
	for _, s := range a {
		if _, found := slices.BinarySearch(b, s); !found {
			out = append(out, s)
		}
	}
	return out
}

func sample(names []string) string {
	if len(names) > 5 {
		return fmt.Sprintf("%q and %d more", names[:5], len(names)-5)
	}
	return fmt.Sprintf("%q", names)
}

// measureWatch times label-selector WATCH events: it watches decile=7 from
// the current resource version and, for each sample, creates a matching
// object and waits for its ADDED event. The time is from the create call
// to the event. The objects are deleted again, so that the next size's
// LISTs see only seeded objects.
func measureWatch(ctx context.Context, c dynamic.Interface, samples int) (Latency, error) {
	rc := c.Resource(widgets).Namespace(namespace)
	const selector = "decile=7"
	l, err := rc.List(ctx, metav1.ListOptions{LabelSelector: selector, Limit: 1})
	if err != nil {
		return Latency{}, fmt.Errorf("list before watch: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := rc.Watch(ctx, metav1.ListOptions{LabelSelector: selector, ResourceVersion: l.GetResourceVersion()})
	if err != nil {
		return Latency{}, fmt.Errorf("watch %s: %w", selector, err)
	}
	defer w.Stop()
	var durations []time.Duration
	for k := range samples {
		obj := watchWidget(k)
		start := time.Now()
		if _, err := rc.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			return Latency{}, fmt.Errorf("create %s: %w", obj.GetName(), err)
		}
		if err := awaitAdded(w, obj.GetName(), 30*time.Second); err != nil {
			return Latency{}, err
		}
		durations = append(durations, time.Since(start))
	}
	for k := range samples {
		if err := rc.Delete(ctx, watchWidget(k).GetName(), metav1.DeleteOptions{}); err != nil {
			return Latency{}, fmt.Errorf("delete %s: %w", watchWidget(k).GetName(), err)
		}
	}
	return summarize(durations), nil
}

func awaitAdded(w watch.Interface, name string, timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				return fmt.Errorf("watch closed while waiting for %s", name)
			}
			if ev.Type == watch.Error {
				return fmt.Errorf("watch error while waiting for %s: %v", name, ev.Object)
			}
			if m, err := meta.Accessor(ev.Object); err == nil && m.GetName() == name {
				if ev.Type != watch.Added {
					return fmt.Errorf("watch: %s event for %s, want ADDED", ev.Type, name)
				}
				return nil
			}
		case <-timer.C:
			return fmt.Errorf("no watch event for %s within %s", name, timeout)
		}
	}
}

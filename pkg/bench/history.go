package bench

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
)

// The history workload: tasks created with phase=pending, all but a few
// then changed to phase=done, as operators change a phase or state. A LIST
// of the pending ones is timed against a LIST of the same objects by a
// label and field that never changed: the cost of the history of a value.
const (
	// historyKept tasks stay pending; they alone carry stable=yes.
	historyKept = 10
	// historyPage is the limit of the paged LISTs: two pages.
	historyPage = historyKept / 2
)

var tasks = schema.GroupVersionResource{Group: group, Version: "v1", Resource: "tasks"}

// HistoryOptions configure the history workload; zero Objects skips it.
type HistoryOptions struct {
	Objects int
}

// HistoryResult is the history workload in one mode.
type HistoryResult struct {
	Mode    string `json:"mode"`
	Objects int    `json:"objects"`
	Kept    int    `json:"kept"`
	// PatchesPerSecond is how fast the seeding clients changed the tasks
	// to done.
	PatchesPerSecond float64       `json:"patches_per_second"`
	Lists            []HistoryList `json:"lists"`
}

// HistoryList is one LIST shape, by the selector whose value has history
// and by the one whose value never changed; both return the kept tasks.
type HistoryList struct {
	Key     string     `json:"key"`
	Title   string     `json:"title"`
	History ListResult `json:"history"`
	Stable  ListResult `json:"stable"`
	// Ratio is History's p50 divided by Stable's.
	Ratio float64 `json:"ratio"`
}

func taskCRD() *unstructured.Unstructured {
	return namespacedCRD("tasks", "Task", []string{"phase", "stable", "payload"}, []string{".spec.phase", ".spec.stable"})
}

func taskName(i int) string { return fmt.Sprintf("t-%07d", i) }

// task i as created: pending, stable=yes for the kept ones.
func task(i int) *unstructured.Unstructured {
	stable := strconv.FormatBool(i < historyKept)
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": group + "/v1",
		"kind":       "Task",
		"metadata": map[string]any{
			"name":      taskName(i),
			"namespace": namespace,
			"labels":    map[string]any{"phase": "pending", "stable": stable},
		},
		"spec": map[string]any{"phase": "pending", "stable": stable, "payload": payload(i)},
	}}
}

// historyShapes are the LIST shapes timed: at the current revision, with
// resourceVersion=0, at an exact older revision, and paged.
func historyShapes(older string) []struct {
	key, title string
	opts       metav1.ListOptions
} {
	return []struct {
		key, title string
		opts       metav1.ListOptions
	}{
		{"current", "", metav1.ListOptions{}},
		{"rv0", ", resourceVersion=0", metav1.ListOptions{ResourceVersion: "0"}},
		{"exact", ", exact older resourceVersion", metav1.ListOptions{ResourceVersion: older, ResourceVersionMatch: metav1.ResourceVersionMatchExact}},
		{"paged", fmt.Sprintf(", limit=%d (2 pages)", historyPage), metav1.ListOptions{Limit: historyPage}},
	}
}

// runHistory creates the tasks, changes all but the kept ones to done,
// takes the resource version, changes a few done tasks again (so that the
// older revision is not the current one), and times every shape by label
// and by field, history against stable.
func runHistory(ctx context.Context, opts HistoryOptions, rep Repetition, workers int, con *console, c dynamic.Interface) (HistoryResult, error) {
	n := max(opts.Objects, 2*historyKept)
	res := HistoryResult{Objects: n, Kept: historyKept}
	con.printf("[history: %d tasks, all but %d changed from phase=pending to done]\n", n, historyKept)
	if err := establish(ctx, c, taskCRD(), tasks, time.Minute); err != nil {
		return res, err
	}
	rc := c.Resource(tasks).Namespace(namespace)
	var retries atomic.Int64
	if _, err := inParallel(ctx, con, "creating tasks", 0, n, workers, func(i int) error {
		return createWithRetry(ctx, rc, task(i), &retries)
	}); err != nil {
		return res, fmt.Errorf("create tasks: %w", err)
	}
	done := []byte(`{"metadata":{"labels":{"phase":"done"}},"spec":{"phase":"done"}}`)
	elapsed, err := inParallel(ctx, con, "changing tasks to done", historyKept, n, workers, func(i int) error {
		_, err := rc.Patch(ctx, taskName(i), types.MergePatchType, done, metav1.PatchOptions{})
		return err
	})
	if err != nil {
		return res, fmt.Errorf("change tasks to done: %w", err)
	}
	res.PatchesPerSecond = float64(n-historyKept) / elapsed.Seconds()
	con.printf("changed %d tasks to done in %.1fs: %.0f updates/s\n", n-historyKept, elapsed.Seconds(), res.PatchesPerSecond)
	l, err := rc.List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil {
		return res, err
	}
	older := l.GetResourceVersion()
	touched := []byte(`{"metadata":{"labels":{"touched":"true"}}}`)
	for i := historyKept; i < 2*historyKept; i++ {
		if _, err := rc.Patch(ctx, taskName(i), types.MergePatchType, touched, metav1.PatchOptions{}); err != nil {
			return res, err
		}
	}

	var want []string
	for i := range historyKept {
		want = append(want, taskName(i))
	}
	for _, by := range []struct{ key, title, history, stable string }{
		{"label", "label phase=pending", "phase=pending", "stable=true"},
		{"field", "field spec.phase=pending", "spec.phase=pending", "spec.stable=true"},
	} {
		for _, shape := range historyShapes(older) {
			hl := HistoryList{Key: by.key + "-" + shape.key, Title: by.title + shape.title}
			for _, side := range []struct {
				out      *ListResult
				selector string
			}{{&hl.History, by.history}, {&hl.Stable, by.stable}} {
				lo := shape.opts
				if by.key == "label" {
					lo.LabelSelector = side.selector
				} else {
					lo.FieldSelector = side.selector
				}
				lr, err := timeList(ctx, rc, hl.Title+" ("+side.selector+")", lo, want, rep)
				if err != nil {
					return res, err
				}
				*side.out = lr
			}
			if hl.Stable.P50Ms > 0 {
				hl.Ratio = hl.History.P50Ms / hl.Stable.P50Ms
			}
			res.Lists = append(res.Lists, hl)
			con.printf("  %-50s p50 %8.2f ms, no history %8.2f ms (%s)\n", hl.Title, hl.History.P50Ms, hl.Stable.P50Ms, ratio(hl.Ratio))
		}
	}
	return res, nil
}

// timeList times a LIST (following continue tokens) as measureList does and
// checks every result against want.
func timeList(ctx context.Context, rc dynamic.ResourceInterface, title string, opts metav1.ListOptions, want []string, rep Repetition) (ListResult, error) {
	res := ListResult{Title: title, LabelSelector: opts.LabelSelector, FieldSelector: opts.FieldSelector, Limit: opts.Limit, Expected: len(want)}
	lat, err := timeRuns(rep, func() (time.Duration, error) {
		start := time.Now()
		var names []string
		pages := 0
		o := opts
		for {
			l, err := rc.List(ctx, o)
			if err != nil {
				return 0, fmt.Errorf("%s: %w", title, err)
			}
			pages++
			for _, item := range l.Items {
				names = append(names, item.GetName())
			}
			if o.Continue = l.GetContinue(); o.Continue == "" {
				break
			}
			// The token carries the first page's revision.
			o.ResourceVersion, o.ResourceVersionMatch = "", ""
		}
		d := time.Since(start)
		if err := checkNames(names, want); err != nil {
			return 0, fmt.Errorf("%s: wrong result: %w", title, err)
		}
		res.Got, res.Pages = len(names), pages
		return d, nil
	})
	res.Latency = lat
	return res, err
}

// writeHistory prints the history workload's table: per shape, the p50 by
// the changed value and by the unchanged one, and their ratio, a column
// per mode.
func (r *Report) writeHistory(w io.Writer) {
	var hs []HistoryResult
	for _, res := range r.Results {
		if res.History != nil {
			hs = append(hs, *res.History)
		}
	}
	if len(hs) == 0 {
		return
	}
	fmt.Fprintf(w, "History: %d tasks created with phase=pending, all but %d then changed to done; LIST of the %d pending by the changed value against the same LIST by a label/field that never changed (stable=true); p50 in ms, history / no history (ratio)\n",
		hs[0].Objects, hs[0].Kept, hs[0].Kept)
	header := []string{"history workload"}
	for _, h := range hs {
		header = append(header, h.Mode)
	}
	rows := [][]string{header}
	for i, l := range hs[0].Lists {
		row := []string{l.Title}
		for _, h := range hs {
			if i >= len(h.Lists) {
				row = append(row, "-")
				continue
			}
			hl := h.Lists[i]
			row = append(row, num(hl.History.P50Ms)+" / "+num(hl.Stable.P50Ms)+" ("+ratio(hl.Ratio)+")")
		}
		rows = append(rows, row)
	}
	row := []string{fmt.Sprintf("changes to done/s (%d clients)", r.Workers)}
	for _, h := range hs {
		row = append(row, num(h.PatchesPerSecond))
	}
	writeTable(w, append(rows, row))
	fmt.Fprintln(w)
}

// historyGoal is the bound on a selective LIST by a value with
// history, against the same LIST by a value without, at historyTargetN.
const (
	historyGoal    = 2.0
	historyTargetN = 20000
)

// historyTarget: in the indexed modes (harikube, postgres), every history
// LIST within historyGoal of its no-history twin.
func historyTarget(r *Report) Target {
	t := Target{Name: fmt.Sprintf("selective LIST with history (%d changed objects) within %.0f× of the same LIST without (harikube, postgres)", historyTargetN, historyGoal)}
	var details []string
	measured, ok := false, true
	for _, res := range r.Results {
		h := res.History
		if h == nil || (res.Mode != "harikube" && res.Mode != "postgres") {
			continue
		}
		worst := HistoryList{}
		for _, l := range h.Lists {
			if l.Ratio >= worst.Ratio {
				worst = l
			}
		}
		details = append(details, fmt.Sprintf("%s at %d: worst %s (%s)", res.Mode, h.Objects, ratio(worst.Ratio), worst.Title))
		if h.Objects >= historyTargetN {
			measured = true
			ok = ok && worst.Ratio <= historyGoal
		}
	}
	t.Status = status(ok, measured)
	t.Detail = strings.Join(details, "; ")
	if t.Detail == "" {
		t.Detail = "no history workload in the indexed modes"
	}
	return t
}

package bench

import (
	"bytes"
	"strings"
	"testing"
)

// The history table shows, per mode and LIST shape, the p50 by the changed
// value, by the unchanged one and their ratio.
func TestHistoryTable(t *testing.T) {
	r := &Report{Sizes: []int{1000}, Workers: 16, Modes: []ModeInfo{{Name: "harikube"}, {Name: "postgres"}}}
	for i, mode := range []string{"harikube", "postgres"} {
		h := &HistoryResult{Mode: mode, Objects: 20000, Kept: historyKept, PatchesPerSecond: 900}
		for _, shape := range historyShapes("123") {
			hist := 1.5 * float64(i+1)
			h.Lists = append(h.Lists, HistoryList{Key: "label-" + shape.key, Title: "label phase=pending" + shape.title,
				History: ListResult{Latency: Latency{P50Ms: hist}}, Stable: ListResult{Latency: Latency{P50Ms: 1}}, Ratio: hist})
		}
		r.Results = append(r.Results, Result{Mode: mode, N: 1000, History: h})
	}
	// harikube within 2×, postgres at 3×: missed.
	if tg := historyTarget(r); tg.Status != statusMissed || !strings.Contains(tg.Detail, "postgres at 20000: worst 3.0×") {
		t.Errorf("history target: %+v", tg)
	}
	r.Results = r.Results[:1]
	if tg := historyTarget(r); tg.Status != statusMet {
		t.Errorf("history target of harikube alone: %+v", tg)
	}
	r.Results[0].History.Objects = 5000
	if tg := historyTarget(r); tg.Status != statusMissing {
		t.Errorf("history target at 5000 objects: %+v", tg)
	}
	r.Results[0].History.Objects = 20000
	var out bytes.Buffer
	r.WriteText(&out)
	for _, s := range []string{"History: 20000 tasks", "label phase=pending, exact older resourceVersion", "1.50 / 1.00 (1.5×)", "limit=5 (2 pages)"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("report lacks %q:\n%s", s, out.String())
		}
	}
}

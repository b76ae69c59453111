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
	var out bytes.Buffer
	r.WriteText(&out)
	for _, s := range []string{"History: 20000 tasks", "label phase=pending, exact older resourceVersion", "1.50 / 1.00 (1.5×)", "3.00 / 1.00 (3.0×)", "limit=5 (2 pages)"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("report lacks %q:\n%s", s, out.String())
		}
	}
}

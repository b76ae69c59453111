package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"
)

// Report is everything one bench run measured; it is what --json writes.
type Report struct {
	Started      time.Time  `json:"started"`
	Finished     time.Time  `json:"finished"`
	Command      string     `json:"command"`
	Host         Host       `json:"host"`
	Sizes        []int      `json:"sizes"`
	Modes        []ModeInfo `json:"modes"`
	Runs         int        `json:"timed_runs_per_list"`
	BudgetSecs   float64    `json:"list_budget_seconds"`
	WatchSamples int        `json:"watch_samples"`
	Workers      int        `json:"seeding_clients"`
	IdleSecs     float64    `json:"idle_seconds"`
	ChurnObjects int        `json:"churn_objects"`
	// MemoryLimitBytes is --memory-limit: the servers' cgroup limit.
	MemoryLimitBytes int64    `json:"memory_limit_bytes,omitempty"`
	Results          []Result `json:"results"`
	// Mixed is the mixed workload in each mode.
	Mixed   []MixedResult `json:"mixed,omitempty"`
	Targets []Target      `json:"targets,omitempty"`
	// Ended are the modes that ended early (memory, time, etcd's quota).
	Ended []ModeEnd `json:"ended,omitempty"`
	// Error is set when the run failed; Results hold what finished.
	Error string `json:"error,omitempty"`
}

// ModeInfo describes a mode in the report.
type ModeInfo struct {
	Name        string   `json:"name"`
	Description string   `json:"description"`
	ServerArgs  []string `json:"server_args"`
	Etcd        bool     `json:"etcd,omitempty"`
}

// Host is the machine the figures come from.
type Host struct {
	CPUs        int    `json:"cpus"`
	CPUModel    string `json:"cpu_model"`
	MemoryBytes int64  `json:"memory_bytes"`
	GoVersion   string `json:"go_version"`
}

func newReport(opts Options) *Report {
	r := &Report{
		Started: time.Now().UTC(), Command: opts.Command, Host: hostInfo(), Sizes: opts.Sizes,
		Runs: opts.Repetition.Runs, BudgetSecs: opts.Repetition.Budget.Seconds(),
		WatchSamples: opts.WatchSamples, Workers: opts.Workers, IdleSecs: opts.IdleDuration.Seconds(), ChurnObjects: opts.ChurnObjects,
		MemoryLimitBytes: opts.MemoryLimit,
	}
	for _, m := range opts.Modes {
		r.Modes = append(r.Modes, ModeInfo{Name: m.Name, Description: m.Description, ServerArgs: m.ServerArgs, Etcd: m.Etcd})
	}
	return r
}

func hostInfo() Host {
	return Host{CPUs: runtime.NumCPU(), CPUModel: cpuModel(), MemoryBytes: memoryBytes(), GoVersion: runtime.Version()}
}

// WriteJSON writes the report to path.
func (r *Report) WriteJSON(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// result finds the result of a mode at a size.
func (r *Report) result(mode string, n int) (Result, bool) {
	for _, res := range r.Results {
		if res.Mode == mode && res.N == n {
			return res, true
		}
	}
	return Result{}, false
}

func (r *Report) modeNames() []string {
	names := make([]string, len(r.Modes))
	for i, m := range r.Modes {
		names[i] = m.Name
	}
	return names
}

// WriteText prints one table per size: p50 / p95 of every workload in
// every mode, with each mode's p50 relative to the first mode's, then the
// targets.
func (r *Report) WriteText(w io.Writer) {
	modes := r.modeNames()
	if len(modes) == 0 {
		return
	}
	base := modes[0]
	for _, n := range r.Sizes {
		if _, ok := r.result(base, n); !ok {
			continue
		}
		fmt.Fprintf(w, "N = %d: p50 / p95 in ms; (×) is the p50 divided by %s's\n", n, base)
		rows := [][]string{append([]string{"workload"}, modes...)}
		for _, wl := range Workloads() {
			rows = append(rows, r.row(wl.Title, modes, n, func(res Result) (float64, float64, bool) {
				l, ok := res.list(wl.Key)
				return l.P50Ms, l.P95Ms, ok
			}))
		}
		keys, titles := pagingRows()
		for i, key := range keys {
			rows = append(rows, r.row(titles[i], modes, n, func(res Result) (float64, float64, bool) {
				l, ok := res.list(key)
				return l.P50Ms, l.P95Ms, ok
			}))
		}
		rows = append(rows, r.row("watch decile=7, create→event", modes, n, func(res Result) (float64, float64, bool) {
			return res.Watch.P50Ms, res.Watch.P95Ms, res.Watch.Samples > 0
		}))
		rows = append(rows, r.single(fmt.Sprintf("creates/s (%d clients)", r.Workers), modes, n, func(res Result) float64 { return res.Create.PerSecond }))
		rows = append(rows, r.single(fmt.Sprintf("updates/s (%d clients)", r.Workers), modes, n, func(res Result) float64 { return res.Update.PerSecond }))
		rows = append(rows, r.single(fmt.Sprintf("deletes/s (%d clients)", r.Workers), modes, n, func(res Result) float64 { return res.Delete.PerSecond }))
		rows = append(rows, r.single("server CPU s per 1,000 creates", modes, n, func(res Result) float64 { return res.Create.CPUSecondsPer1000 }))
		rows = append(rows, r.single("server CPU s per 1,000 updates", modes, n, func(res Result) float64 { return res.Update.CPUSecondsPer1000 }))
		rows = append(rows, r.single("server CPU s per 1,000 deletes", modes, n, func(res Result) float64 { return res.Delete.CPUSecondsPer1000 }))
		rows = append(rows, r.single("peak RSS, MiB", modes, n, func(res Result) float64 {
			return float64(res.ServerPeakRSSBytes+res.EtcdPeakRSSBytes) / (1 << 20)
		}))
		rows = append(rows, r.single("peak anonymous RSS, MiB", modes, n, func(res Result) float64 {
			return float64(res.ServerPeakAnonBytes+res.EtcdPeakAnonBytes) / (1 << 20)
		}))
		if r.MemoryLimitBytes > 0 {
			rows = append(rows, r.single("memory cgroup peak, MiB", modes, n, func(res Result) float64 {
				return float64(res.CgroupPeakBytes) / (1 << 20)
			}))
		}
		rows = append(rows, r.single("idle anonymous RSS (no objects), MiB", modes, n, func(res Result) float64 {
			return float64(res.IdleAnonBytes) / (1 << 20)
		}))
		rows = append(rows, r.single("database on disk, MiB", modes, n, func(res Result) float64 { return float64(res.DatabaseBytes) / (1 << 20) }))
		rows = append(rows, r.single("server start, s", modes, n, func(res Result) float64 { return res.StartupSeconds }))
		writeTable(w, rows)
		for _, m := range modes {
			if res, ok := r.result(m, n); ok && res.EtcdPeakRSSBytes > 0 {
				fmt.Fprintf(w, "(%s peak RSS: server %s + etcd %s; anonymous: server %s + etcd %s)\n", m,
					mib(res.ServerPeakRSSBytes), mib(res.EtcdPeakRSSBytes), mib(res.ServerPeakAnonBytes), mib(res.EtcdPeakAnonBytes))
			}
		}
		fmt.Fprintln(w)
	}
	r.writeMixed(w)
	r.writeHistory(w)
	r.writeEnded(w)
	if len(r.Targets) > 0 {
		fmt.Fprintln(w, "Targets (reported, not enforced):")
		for _, t := range r.Targets {
			fmt.Fprintf(w, "  [%s] %s: %s\n", t.Status, t.Name, t.Detail)
		}
	}
	if r.Error != "" {
		fmt.Fprintf(w, "FAILED: %s\n", r.Error)
	}
}

// row is a p50 / p95 row with ratios to the first mode.
func (r *Report) row(title string, modes []string, n int, get func(Result) (p50, p95 float64, ok bool)) []string {
	row := []string{title}
	base := -1.0
	for i, m := range modes {
		res, ok := r.result(m, n)
		if !ok {
			row = append(row, "-")
			continue
		}
		p50, p95, ok := get(res)
		if !ok {
			row = append(row, "-")
			continue
		}
		cell := num(p50) + " / " + num(p95)
		if i == 0 {
			base = p50
		} else if base > 0 {
			cell += " (" + ratio(p50/base) + ")"
		}
		row = append(row, cell)
	}
	return row
}

// single is a row of one value per mode, with ratios to the first mode.
func (r *Report) single(title string, modes []string, n int, get func(Result) float64) []string {
	row := []string{title}
	base := -1.0
	for i, m := range modes {
		res, ok := r.result(m, n)
		if !ok {
			row = append(row, "-")
			continue
		}
		v := get(res)
		cell := num(v)
		if i == 0 {
			base = v
		} else if base > 0 {
			cell += " (" + ratio(v/base) + ")"
		}
		row = append(row, cell)
	}
	return row
}

func writeTable(w io.Writer, rows [][]string) {
	widths := map[int]int{}
	for _, row := range rows {
		for i, cell := range row {
			widths[i] = max(widths[i], len([]rune(cell)))
		}
	}
	for _, row := range rows {
		var b strings.Builder
		for i, cell := range row {
			if i > 0 {
				b.WriteString("  ")
			}
			b.WriteString(cell)
			if i < len(row)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-len([]rune(cell))))
			}
		}
		fmt.Fprintln(w, b.String())
	}
}

func num(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func ratio(v float64) string {
	if v >= 10 {
		return fmt.Sprintf("%.0f×", v)
	}
	return fmt.Sprintf("%.1f×", v)
}

// cgroupPeakNote is ", memory cgroup peak X" when there is a cgroup.
func cgroupPeakNote(b int64) string {
	if b == 0 {
		return ""
	}
	return ", memory cgroup peak " + mib(b)
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// writeMixed prints the mixed workload's table, a column per mode.
func (r *Report) writeMixed(w io.Writer) {
	if len(r.Mixed) == 0 {
		return
	}
	m0 := r.Mixed[0]
	fmt.Fprintf(w, "Mixed workload: %d clients for %.0f s, each creating a cluster-scoped custom resource (CRD schema of %d properties) and LISTing it by label name=<its name>; (×) is the value divided by %s's\n",
		m0.Clients, m0.Seconds, m0.PropertiesInSchema, m0.Mode)
	header := []string{"mixed workload"}
	for _, m := range r.Mixed {
		header = append(header, m.Mode)
	}
	rows := [][]string{header}
	add := func(title string, get func(MixedResult) float64) {
		row := []string{title}
		base := get(m0)
		for i, m := range r.Mixed {
			cell := num(get(m))
			if i > 0 && base > 0 {
				cell += " (" + ratio(get(m)/base) + ")"
			}
			row = append(row, cell)
		}
		rows = append(rows, row)
	}
	add("requests/s", func(m MixedResult) float64 { return m.PerSecond })
	add("p50, ms (all requests)", func(m MixedResult) float64 { return m.All.P50Ms })
	add("p95, ms (all requests)", func(m MixedResult) float64 { return m.All.P95Ms })
	add("create p50, ms", func(m MixedResult) float64 { return m.Creates.P50Ms })
	add("LIST by label p50, ms", func(m MixedResult) float64 { return m.Lists.P50Ms })
	add("server CPU s per 1,000 requests", func(m MixedResult) float64 { return m.CPUSecondsPer1000 })
	writeTable(w, rows)
	fmt.Fprintln(w)
}

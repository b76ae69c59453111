package bench

import (
	"bytes"
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestWorkloadsMatchTheirShare(t *testing.T) {
	want := map[string]int{
		"label-1": 1, "label-1-paged": 1, "label-0.1%": 10, "label-0.1%-paged": 10,
		"label-10%": 1000, "label-10%-paged": 1000, "field-1": 1, "field-1-paged": 1, "all-paged": 10000,
	}
	ws := Workloads()
	if len(ws) != len(want) {
		t.Fatalf("%d workloads, want %d", len(ws), len(want))
	}
	for _, w := range ws {
		got := w.Expected(10000)
		if len(got) != want[w.Key] {
			t.Errorf("%s: %d expected objects at N=10000, want %d", w.Key, len(got), want[w.Key])
		}
		if (w.Limit != 0) != strings.HasSuffix(w.Key, "-paged") {
			t.Errorf("%s: limit %d", w.Key, w.Limit)
		}
	}
}

func TestWidgetIsAboutOneKiB(t *testing.T) {
	obj := widget(12345)
	data, err := obj.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if len(data) < 1024 || len(data) > 1400 {
		t.Errorf("widget is %d bytes of JSON, want about 1 KiB", len(data))
	}
	labels := obj.GetLabels()
	if labels["id"] != "12345" || labels["permille"] != "345" || labels["decile"] != "5" {
		t.Errorf("labels %v", labels)
	}
	if widgetName(7) >= widgetName(10) {
		t.Errorf("names do not sort in seeding order: %s >= %s", widgetName(7), widgetName(10))
	}
}

func TestCheckNames(t *testing.T) {
	want := []string{"a", "b", "c"}
	if err := checkNames([]string{"c", "a", "b"}, want); err != nil {
		t.Errorf("same names in another order: %v", err)
	}
	for _, got := range [][]string{{"a", "b"}, {"a", "b", "c", "d"}, {"a", "b", "x"}, {"a", "b", "b"}} {
		if err := checkNames(got, want); err == nil {
			t.Errorf("%v accepted for %v", got, want)
		}
	}
}

func TestPercentile(t *testing.T) {
	var samples []time.Duration
	for i := 1; i <= 20; i++ {
		samples = append(samples, time.Duration(i)*time.Millisecond)
	}
	l := summarize(samples)
	if l.P50Ms != 10 || l.P95Ms != 19 || l.Samples != 20 {
		t.Errorf("summarize 1..20 ms = %+v, want p50 10, p95 19", l)
	}
	if got := summarize([]time.Duration{3 * time.Millisecond}); got.P50Ms != 3 || got.P95Ms != 3 {
		t.Errorf("one sample: %+v", got)
	}
}

func TestParseModes(t *testing.T) {
	ms, _, err := ParseModes("etcd,harikube")
	if err != nil || len(ms) != 2 || ms[0].Name != "etcd" || ms[1].Name != "harikube" {
		t.Errorf("ParseModes(etcd,harikube) = %v, %v", ModeNames(ms), err)
	}
	for _, bad := range []string{"nosuch", "harikube,harikube", "harikube,"} {
		if _, _, err := ParseModes(bad); err == nil {
			t.Errorf("ParseModes(%q) accepted", bad)
		}
	}
}

// Without PostgreSQL, "all" runs the other modes and says why postgres was
// skipped, while a postgres mode asked for by name fails before any run.
func TestParseModesWithoutPostgres(t *testing.T) {
	t.Setenv("HARIKUBE_PG_BIN", t.TempDir()) // a directory without initdb
	ms, skipped, err := ParseModes("all")
	if err != nil || len(ms) != len(Modes)-1 || slices.Contains(ModeNames(ms), "postgres") {
		t.Errorf("ParseModes(all) = %v, %v; want every mode but postgres", ModeNames(ms), err)
	}
	if len(skipped) != 1 || !strings.HasPrefix(skipped[0], "postgres: ") || !strings.Contains(skipped[0], "install the postgresql package") {
		t.Errorf("skipped = %q, want postgres with a hint to install it", skipped)
	}
	if _, _, err := ParseModes("harikube,postgres"); err == nil || !strings.Contains(err.Error(), "mode postgres cannot run here") {
		t.Errorf("ParseModes(harikube,postgres) = %v, want an error naming postgres", err)
	}
}

// fakeResult has every workload at the given p50 (p95 twice that).
func fakeResult(mode string, n int, p50 float64, creates float64, rss int64) Result {
	res := Result{Mode: mode, N: n, Create: Throughput{PerSecond: creates}, ServerPeakRSSBytes: rss}
	for _, w := range Workloads() {
		res.Lists = append(res.Lists, ListResult{Workload: w.Key, Latency: Latency{Samples: 1, P50Ms: p50, P95Ms: 2 * p50}})
	}
	return res
}

func TestTargetsAndTable(t *testing.T) {
	r := &Report{Sizes: []int{1000, 100000}, Workers: 16}
	for _, name := range []string{"harikube", "no-pushdown", "kine-stock"} {
		m, _ := modeByName(name)
		r.Modes = append(r.Modes, ModeInfo{Name: m.Name})
	}
	r.Results = []Result{
		fakeResult("harikube", 1000, 2, 900, 300<<20),
		fakeResult("no-pushdown", 1000, 20, 900, 300<<20),
		fakeResult("kine-stock", 1000, 20, 1000, 300<<20),
		fakeResult("harikube", 100000, 3, 850, 500<<20),
		fakeResult("no-pushdown", 100000, 600, 800, 900<<20),
		fakeResult("kine-stock", 100000, 700, 1000, 900<<20),
	}
	r.Targets = evaluateTargets(r)
	want := []string{statusMet, statusMet, statusMissed, statusMissing, statusMissed, statusMissing}
	if len(r.Targets) != len(want) {
		t.Fatalf("%d targets, want %d", len(r.Targets), len(want))
	}
	for i, tg := range r.Targets {
		if tg.Status != want[i] {
			t.Errorf("target %q: %s (%s), want %s", tg.Name, tg.Status, tg.Detail, want[i])
		}
	}
	var out bytes.Buffer
	r.WriteText(&out)
	for _, s := range []string{"N = 100000", "3.00 / 6.00", "600 / 1200 (200×)", "850", "[missed] harikube peak RSS"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, out.String())
		}
	}

	// Without the 100k run the speedup target is not measured, whatever
	// the ratio at the sizes that were run.
	r.Sizes = []int{1000}
	r.Results = r.Results[:3]
	if tg := speedupTarget(r); tg.Status != statusMissing || !strings.Contains(tg.Detail, "N=1000") {
		t.Errorf("speedup target at 1000 only: %+v", tg)
	}
}

// TestRSSTargetUnderMemoryLimit: a peak RSS held below the goal by
// --memory-limit does not count as the target met, and the table shows
// the cgroup's peak.
func TestRSSTargetUnderMemoryLimit(t *testing.T) {
	m, _ := modeByName("harikube")
	res := fakeResult("harikube", 100000, 3, 850, 390<<20)
	res.CgroupPeakBytes = 399 << 20
	r := &Report{Sizes: []int{100000}, Modes: []ModeInfo{{Name: m.Name}}, Results: []Result{res}}
	if tg := rssTarget(r); tg.Status != statusMet {
		t.Errorf("without a limit: %+v, want met", tg)
	}
	r.MemoryLimitBytes = 400 << 20
	if tg := rssTarget(r); tg.Status != statusMissing || !strings.Contains(tg.Detail, "memory cgroup peak 399 MiB") {
		t.Errorf("under a 400 MiB limit: %+v, want not measured, with the cgroup's peak", tg)
	}
	var out bytes.Buffer
	r.WriteText(&out)
	if !regexp.MustCompile(`memory cgroup peak, MiB +399`).MatchString(out.String()) {
		t.Errorf("table lacks the memory cgroup peak:\n%s", out.String())
	}
}

// TestChartIsWellFormedSVGWithEverySeries renders the chart of a report
// with three modes (one of them without the LIST figure at one size) and
// checks that it parses as XML, is an SVG, and names both panels and every
// mode in its legends.
func TestChartIsWellFormedSVGWithEverySeries(t *testing.T) {
	rep := &Report{Sizes: []int{1000, 10000, 100000}}
	modes := []string{"harikube", "upstream", "etcd"}
	for m, mode := range modes {
		rep.Modes = append(rep.Modes, ModeInfo{Name: mode})
		for i, n := range rep.Sizes {
			p50 := float64((m+1)*(i+1)) * 1.5
			if mode == "etcd" && n == 100000 {
				p50 = 0 // not measured: left out of the log axis
			}
			rep.Results = append(rep.Results, Result{Mode: mode, N: n, ServerPeakRSSBytes: int64(300+100*m*i) << 20,
				Lists: []ListResult{{Workload: chartWorkload, Latency: Latency{P50Ms: p50}}}})
		}
	}
	var buf bytes.Buffer
	if err := rep.WriteChart(&buf); err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(bytes.NewReader(buf.Bytes()))
	var root string
	var texts []string
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("chart is not well-formed XML: %v", err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = tok.Name.Local
			}
		case xml.CharData:
			if s := strings.TrimSpace(string(tok)); s != "" {
				texts = append(texts, s)
			}
		}
	}
	if root != "svg" {
		t.Fatalf("root element %q, want svg", root)
	}
	count := func(s string) int {
		n := 0
		for _, text := range texts {
			if text == s {
				n++
			}
		}
		return n
	}
	for _, title := range []string{chartListTitle, chartRSSTitle} {
		if count(title) != 1 {
			t.Errorf("panel title %q appears %d times in %q", title, count(title), texts)
		}
	}
	for _, mode := range modes {
		// One legend entry per panel.
		if count(mode) != 2 {
			t.Errorf("mode %q appears %d times in the legends, want 2", mode, count(mode))
		}
	}
}

// TestChartOfARunWithoutFigures: a run whose modes all ended before their
// first size still gets its chart (log axes with nothing on them panicked
// in gonum/plot).
func TestChartOfARunWithoutFigures(t *testing.T) {
	rep := &Report{Sizes: []int{100000}, Modes: []ModeInfo{{Name: "harikube"}}}
	var buf bytes.Buffer
	if err := rep.WriteChart(&buf); err != nil {
		t.Fatal(err)
	}
	for _, title := range []string{chartListTitle, chartRSSTitle} {
		if !strings.Contains(buf.String(), title+" (no figures)") {
			t.Errorf("chart lacks the panel %q marked as having no figures", title)
		}
	}
}

func TestOptionsCheckOutputPathsBeforeTheRun(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Binary: "harikube", Sizes: []int{10}, ProfileDir: filepath.Join(dir, "a", "profiles")}
	if err := opts.complete(); err != nil {
		t.Fatalf("complete: %v", err)
	}
	st, err := os.Stat(opts.ProfileDir)
	if err != nil {
		t.Fatalf("the profile directory was not created: %v", err)
	}
	if !st.IsDir() || st.Mode().Perm() != 0o700 {
		t.Errorf("profile directory: mode %v, want a directory with 0700", st.Mode())
	}

	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{JSONPath: filepath.Join(dir, "missing", "r.json")}, "--json " + filepath.Join(dir, "missing", "r.json")},
		{Options{JSONPath: dir}, "is a directory; name a file"},
		{Options{ChartPath: filepath.Join(dir, "missing", "r.svg"), ProfileDir: filepath.Join(dir, "not-made")}, "create the directory"},
		{Options{ChartPath: filepath.Join(file, "r.svg")}, "is not a directory"},
		{Options{WorkDir: filepath.Join(dir, "missing")}, "--work-dir"},
		{Options{ProfileDir: filepath.Join(file, "p")}, "--profile-dir"},
	} {
		tc.opts.Binary, tc.opts.Sizes = "harikube", []int{10}
		err := tc.opts.complete()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("complete(%+v) = %v, want an error containing %q", tc.opts, err, tc.want)
		}
	}
	// A refused run makes no directory.
	if _, err := os.Stat(filepath.Join(dir, "not-made")); !os.IsNotExist(err) {
		t.Errorf("a refused run created its --profile-dir: %v", err)
	}
}

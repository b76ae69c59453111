// Package bench_test runs `harikube bench` end to end, with a tiny data set,
// against the real binary.
package bench_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/xml"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/harikube/harikube/pkg/bench"
	"github.com/harikube/harikube/tests/testserver"
)

// TestBenchAllModes runs every mode with 50 objects and few repetitions and
// checks the run and its JSON: every mode started, measured and stopped,
// and every workload returned exactly the objects it should.
func TestBenchAllModes(t *testing.T) {
	bin := testserver.Binary(t)
	const n = 50
	dir := t.TempDir()
	out := filepath.Join(dir, "results.json")
	chart := filepath.Join(dir, "results.svg")
	profileDir := filepath.Join(dir, "profiles")
	if err := os.Mkdir(profileDir, 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "bench", "--sizes", "50", "--modes", "all",
		"--repeat", "2", "--budget", "1s", "--watch-samples", "2", "--workers", "4",
		"--mixed-duration", "2s", "--history-objects", "30", "--json", out, "--chart", chart, "--work-dir", dir,
		"--profile-dir", profileDir)
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Run(); err != nil {
		t.Fatalf("harikube bench: %v\n%s", err, output.String())
	}
	t.Logf("harikube bench output:\n%s", output.String())

	for _, m := range bench.Modes {
		if !strings.Contains(output.String(), "["+m.Name+"] stopped cleanly") {
			t.Errorf("output does not say that mode %s stopped cleanly", m.Name)
		}
	}
	rep := readRun(t, dir, out)
	want := map[string]int{
		"label-1": 1, "label-1-paged": 1, "label-0.1%": 1, "label-0.1%-paged": 1,
		"label-10%": n / 10, "label-10%-paged": n / 10, "field-1": 1, "field-1-paged": 1, "all-paged": n,
		// The paging workload's single pages (at n = 50 the 10 % LIST has one).
		"page-10%-first": n / 10, "page-10%-middle": n / 10, "page-10%-last": n / 10, "page-1-first": 1,
	}
	if len(rep.Results) != len(bench.Modes) {
		t.Fatalf("%d results, want one per mode (%d)", len(rep.Results), len(bench.Modes))
	}
	for i, res := range rep.Results {
		if res.Mode != bench.Modes[i].Name || res.N != n {
			t.Errorf("result %d is mode %s N=%d, want %s N=%d", i, res.Mode, res.N, bench.Modes[i].Name, n)
		}
		if !res.Stopped {
			t.Errorf("%s: not stopped cleanly", res.Mode)
		}
		if res.Create.Objects != n || res.Create.PerSecond <= 0 {
			t.Errorf("%s: create throughput %+v, want %d objects at a positive rate", res.Mode, res.Create, n)
		}
		if res.Update.Objects != n || res.Update.PerSecond <= 0 || res.Delete.Objects != n || res.Delete.PerSecond <= 0 {
			t.Errorf("%s: updates %+v, deletes %+v; want %d of each at a positive rate", res.Mode, res.Update, res.Delete, n)
		}
		if res.Watch.Samples != 2 || res.Watch.P50Ms <= 0 {
			t.Errorf("%s: watch latency %+v, want 2 samples", res.Mode, res.Watch)
		}
		if res.ServerPeakRSSBytes <= 0 || res.DatabaseBytes <= 0 {
			t.Errorf("%s: peak RSS %d, database %d bytes; want both positive", res.Mode, res.ServerPeakRSSBytes, res.DatabaseBytes)
		}
		if res.ServerPeakAnonBytes <= 0 || res.ServerPeakAnonBytes > res.ServerPeakRSSBytes {
			t.Errorf("%s: peak anonymous RSS %d, want positive and at most the peak RSS %d", res.Mode, res.ServerPeakAnonBytes, res.ServerPeakRSSBytes)
		}
		if d := res.ServerPeakAnonDuring; d != "start and idle" && !strings.HasPrefix(d, "N=50: ") {
			t.Errorf("%s: peak anonymous RSS during %q, want a phase of the run", res.Mode, d)
		}
		if res.IdleAnonBytes <= 0 || res.IdleAnonBytes > res.ServerPeakAnonBytes {
			t.Errorf("%s: idle anonymous RSS %d, want positive and at most the peak %d", res.Mode, res.IdleAnonBytes, res.ServerPeakAnonBytes)
		}
		if (res.Mode == "etcd") != (res.EtcdPeakRSSBytes > 0) {
			t.Errorf("%s: etcd peak RSS %d", res.Mode, res.EtcdPeakRSSBytes)
		}
		got := map[string]bool{}
		for _, l := range res.Lists {
			got[l.Workload] = true
			if w, ok := want[l.Workload]; !ok {
				t.Errorf("%s: unexpected workload %q", res.Mode, l.Workload)
			} else if l.Expected != w || l.Got != w {
				t.Errorf("%s %s: expected %d, got %d objects; want %d", res.Mode, l.Workload, l.Expected, l.Got, w)
			}
			if l.Samples < 1 || l.Samples > 2 || len(l.SamplesMs) != l.Samples || l.P50Ms <= 0 || l.P95Ms < l.P50Ms {
				t.Errorf("%s %s: latency %+v", res.Mode, l.Workload, l.Latency)
			}
		}
		for w := range want {
			if !got[w] {
				t.Errorf("%s: no result for workload %s", res.Mode, w)
			}
		}
	}
	if len(rep.Mixed) != len(bench.Modes) {
		t.Fatalf("%d mixed workload results, want one per mode (%d)", len(rep.Mixed), len(bench.Modes))
	}
	for i, m := range rep.Mixed {
		if m.Mode != bench.Modes[i].Name || m.Clients != 20 || m.PropertiesInSchema < 300 {
			t.Errorf("mixed result %d: mode %s, %d clients, %d schema properties", i, m.Mode, m.Clients, m.PropertiesInSchema)
		}
		// Every create is followed by a LIST that returned exactly its object.
		if m.Requests < 2 || m.Creates.Samples != m.Lists.Samples || m.Creates.Samples+m.Lists.Samples != m.Requests ||
			m.PerSecond <= 0 || m.All.P95Ms < m.All.P50Ms || m.CPUSeconds <= 0 || m.CPUSecondsPer1000 <= 0 {
			t.Errorf("mixed %s: %+v", m.Mode, m)
		}
	}
	for _, m := range bench.Modes {
		checkProfile(t, filepath.Join(profileDir, m.Name+"-n50-heap.pb.gz"), "inuse_space")
		checkProfile(t, filepath.Join(profileDir, m.Name+"-n50-seed-cpu.pb.gz"), "cpu")
		checkProfile(t, filepath.Join(profileDir, m.Name+"-n50-mixed-cpu.pb.gz"), "cpu")
	}
	svg, err := os.ReadFile(chart)
	if err != nil {
		t.Fatalf("chart: %v", err)
	}
	if err := xml.Unmarshal(svg, new(struct {
		XMLName xml.Name `xml:"svg"`
	})); err != nil {
		t.Errorf("chart is not an SVG document: %v", err)
	}
	if len(rep.Targets) != 6 {
		t.Errorf("%d targets, want 6", len(rep.Targets))
	}
}

// TestBenchRejectsBadFlags: unknown modes, bad sizes, memory limits and
// server flags are refused before any server starts.
func TestBenchRejectsBadFlags(t *testing.T) {
	bin := testserver.Binary(t)
	for _, tc := range []struct {
		args []string
		want string // in the message
	}{
		{[]string{"--modes", "harikube,nosuch"}, `unknown mode "nosuch"`},
		{[]string{"--sizes", "1000,x"}, "--sizes"},
		{[]string{"--sizes", "5"}, "size 5"},
		{[]string{"--memory-limit", "lots"}, "--memory-limit"},
		{[]string{"--etcd-quota", "0"}, "--etcd-quota"},
		{[]string{"--churn-objects", "0"}, "--churn-objects"},
		{[]string{"--idle-duration", "0s"}, "--idle-duration"},
		{[]string{"--server-arg", "kube-apiserver-arg=request-timeout=1m"}, "--server-arg"},
	} {
		// Small, so that a flag no longer refused ends the run soon.
		args := append([]string{"bench", "--json", "", "--chart", "", "--modes", "harikube", "--sizes", "10",
			"--mixed-duration", "0", "--history-objects", "0"}, tc.args...)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		cancel()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("bench %v: %v, want an error saying %q:\n%s", tc.args, err, tc.want, out)
		} else if strings.Contains(string(out), "server ready") {
			t.Errorf("bench %v started a server before failing:\n%s", tc.args, out)
		}
	}
}

// checkProfile: path is a gzipped pprof profile whose string table names
// the sample type want.
func checkProfile(t *testing.T, path, want string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Errorf("--profile-dir: %v", err)
		return
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Errorf("%s is not gzipped: %v", path, err)
		return
	}
	body, err := io.ReadAll(zr)
	if err != nil || !bytes.Contains(body, []byte(want)) {
		t.Errorf("%s: %d bytes (%v), no sample type %q", path, len(body), err, want)
	}
}

// TestBenchSplit runs `harikube bench split` briefly: both layouts must
// create both resources, and the second must have written the Events' own
// file (the bench checks that itself).
func TestBenchSplit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testserver.Binary(t), "bench", "split", "--duration", "3s", "--clients", "2", "--work-dir", t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("harikube bench split: %v\n%s", err, out)
	}
	t.Logf("harikube bench split output:\n%s", out)
	row := regexp.MustCompile(`(?m)^(one file|two files)\s+(events|widgets)\s+([0-9]+)\s+([0-9]+)\s`)
	seen := map[string]bool{}
	for _, m := range row.FindAllStringSubmatch(string(out), -1) {
		if m[3] == "0" {
			t.Errorf("%s, %s: no creates", m[1], m[2])
		}
		seen[m[1]+"/"+m[2]] = true
	}
	for _, want := range []string{"one file/events", "one file/widgets", "two files/events", "two files/widgets"} {
		if !seen[want] {
			t.Errorf("the table has no row for %s", want)
		}
	}
}

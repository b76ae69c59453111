package bench_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/harikube/harikube/pkg/bench"
	"github.com/harikube/harikube/tests/testserver"
)

// runBench runs `harikube bench` with args and returns its report and
// output; the bench must exit 0.
func runBench(t *testing.T, timeout time.Duration, args ...string) (bench.Report, string) {
	t.Helper()
	return runBenchWatching(t, timeout, nil, args...)
}

// runBenchWatching is runBench that also hands each line of the bench's
// output to onLine as it is printed, on a goroutine of its own (so onLine
// must not call t.Fatal); the last call has returned when it returns.
func runBenchWatching(t *testing.T, timeout time.Duration, onLine func(string), args ...string) (bench.Report, string) {
	t.Helper()
	bin := testserver.Binary(t)
	// Not t.TempDir(): under a long test name the server's socket path
	// would pass the 107 bytes Linux allows.
	dir, err := os.MkdirTemp("", "hb-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	out := filepath.Join(dir, "results.json")
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"bench", "--json", out, "--chart", "", "--work-dir", dir,
		"--history-objects", "0", "--mixed-duration", "0"}, args...)...)
	cmd.WaitDelay = 30 * time.Second
	var output bytes.Buffer
	// One writer for both, so that exec copies them through one pipe.
	var w io.Writer = &output
	watched := make(chan struct{})
	if onLine != nil {
		pr, pw := io.Pipe()
		w = io.MultiWriter(&output, pw)
		go func() {
			defer close(watched)
			defer func() { _, _ = io.Copy(io.Discard, pr) }()
			s := bufio.NewScanner(pr)
			for s.Scan() {
				onLine(s.Text())
			}
		}()
		defer func() {
			pw.Close()
			<-watched
		}()
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Run(); err != nil {
		t.Fatalf("harikube bench %v: %v\n%s", args, err, output.String())
	}
	t.Logf("harikube bench output:\n%s", output.String())
	return readRun(t, dir, out), output.String()
}

// readRun checks that a bench run left no data directory behind in dir
// and returns its report from the JSON file out, which must hold no error.
func readRun(t *testing.T, dir, out string) bench.Report {
	t.Helper()
	if entries, _ := filepath.Glob(filepath.Join(dir, "harikube-bench-*")); len(entries) != 0 {
		t.Errorf("data directories left behind: %v", entries)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatalf("results JSON: %v\n%s", err, data)
	}
	if rep.Error != "" {
		t.Errorf("report error: %s", rep.Error)
	}
	return rep
}

// TestBenchModeKilledAtMemoryLimitIsReported: with a memory limit far below
// what a server needs, each mode's server is killed as it starts or never
// becomes ready (the kernel reclaims its executable's pages instead); the
// bench reports each mode's end as out of memory, runs the next mode, exits
// 0 and removes its cgroup.
func TestBenchModeKilledAtMemoryLimitIsReported(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating a memory cgroup needs root (CI runs as root)")
	}
	if _, err := os.Stat("/sys/fs/cgroup/memory"); err != nil {
		t.Skip("--memory-limit needs the cgroup v1 memory controller: ", err)
	}
	rep, output := runBench(t, 5*time.Minute, "--sizes", "1000", "--modes", "harikube,kine-stock", "--memory-limit", "32Mi", "--start-timeout", "20s")
	if len(rep.Results) != 0 {
		t.Errorf("%d results, want none: no server should have started", len(rep.Results))
	}
	if len(rep.Ended) != 2 {
		t.Fatalf("%d modes ended, want 2: %+v", len(rep.Ended), rep.Ended)
	}
	for i, mode := range []string{"harikube", "kine-stock"} {
		e := rep.Ended[i]
		// Killed, or stalled as the kernel reclaims the executable's pages.
		if e.Mode != mode || e.Cause != "memory" || !regexp.MustCompile(`OOM killer|did not become ready at the memory limit of 32 MiB`).MatchString(e.Reason) || e.Reached.N != 0 {
			t.Errorf("end %d: %+v; want mode %s ended at the memory limit at N = 0", i, e, mode)
		}
		// The kernel charges pages in small batches, so the peak can pass
		// the limit by a few pages.
		if e.CgroupPeakBytes < 16<<20 || e.CgroupPeakBytes > 33<<20 {
			t.Errorf("%s: cgroup peak %d bytes, want near the limit of 32 MiB", mode, e.CgroupPeakBytes)
		}
		if !strings.Contains(output, "["+mode+"] ended: out of memory") {
			t.Errorf("output does not say that mode %s ended out of memory", mode)
		}
	}
	m := regexp.MustCompile(`\(cgroup (/sys/fs/cgroup/memory/[^,]+),`).FindStringSubmatch(output)
	if m == nil {
		t.Fatal("output does not name the memory cgroup")
	}
	if _, err := os.Stat(m[1]); !os.IsNotExist(err) {
		t.Errorf("memory cgroup %s left behind (stat: %v)", m[1], err)
	}
}

// TestBenchMemoryLimitHoldsTheServer: under --memory-limit a mode that fits
// finishes and reports the cgroup's peak, which holds the server's whole
// resident memory (its executable's pages included, as a container's limit
// would). The cgroup holds the server, run from the executable's copy, and
// never the bench itself.
func TestBenchMemoryLimitHoldsTheServer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating a memory cgroup needs root (CI runs as root)")
	}
	if _, err := os.Stat("/sys/fs/cgroup/memory"); err != nil {
		t.Skip("--memory-limit needs the cgroup v1 memory controller: ", err)
	}
	const limit = 1 << 30
	// The cgroup's members, read every 100 ms from when the bench names it.
	capped := regexp.MustCompile(`memory of the servers capped at \S+ GiB \(cgroup (/sys/fs/cgroup/memory/[^,]+), running ([^)]+)\)`)
	var (
		members   = map[int]string{} // pid: command line
		parents   = map[int]int{}    // pid: parent's pid
		cgroupDir string
		stop      = make(chan struct{})
		sampled   = make(chan struct{})
	)
	onLine := func(line string) {
		m := capped.FindStringSubmatch(line)
		if m == nil || cgroupDir != "" {
			return
		}
		cgroupDir = m[1]
		go func() {
			defer close(sampled)
			for {
				data, _ := os.ReadFile(filepath.Join(cgroupDir, "cgroup.procs"))
				for _, f := range strings.Fields(string(data)) {
					pid, _ := strconv.Atoi(f)
					// A process that has exited has an empty command line.
					if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && len(cmdline) > 0 {
						members[pid] = strings.Join(strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00"), " ")
					}
					// stat: "pid (comm) state ppid ...", comm may hold spaces.
					if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
						if _, rest, ok := strings.Cut(string(stat), ") "); ok {
							if f := strings.Fields(rest); len(f) > 1 {
								parents[pid], _ = strconv.Atoi(f[1])
							}
						}
					}
				}
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
	}
	stopSampling := func() {
		select {
		case <-stop:
			return
		default:
		}
		close(stop)
		if cgroupDir != "" {
			<-sampled
		}
	}
	defer stopSampling() // also when runBenchWatching fails the test
	rep, output := runBenchWatching(t, 5*time.Minute, onLine, "--sizes", "200", "--modes", "harikube", "--memory-limit", "1Gi",
		"--repeat", "2", "--budget", "1s", "--watch-samples", "2", "--churn-objects", "20", "--mixed-duration", "0", "--history-objects", "0")
	stopSampling()
	if len(rep.Ended) != 0 || len(rep.Results) != 1 {
		t.Fatalf("ended %+v, results %d; want the mode measured within the limit", rep.Ended, len(rep.Results))
	}
	if rep.MemoryLimitBytes != limit {
		t.Errorf("report's memory limit %d, want %d", rep.MemoryLimitBytes, limit)
	}
	res := rep.Results[0]
	// Every page of the server is charged to the cgroup: its own memory and
	// the executable's pages it touched (a private copy, not the pages the
	// bench loaded), plus the page cache of its database.
	if res.CgroupPeakBytes < res.ServerPeakRSSBytes*9/10 || res.CgroupPeakBytes > limit {
		t.Errorf("cgroup peak %d bytes, server peak RSS %d: want at least 90 %% of the RSS and at most the limit", res.CgroupPeakBytes, res.ServerPeakRSSBytes)
	}
	if !strings.Contains(output, "memory cgroup peak, MiB") {
		t.Error("the results table has no memory cgroup peak row")
	}
	m := capped.FindStringSubmatch(output)
	if m == nil {
		t.Fatal("output does not name the memory cgroup and the executable copy")
	}
	// The cgroup is named after the bench's pid.
	benchPID, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(m[1]), "harikube-bench-"))
	if err != nil {
		t.Fatalf("cgroup %s is not named after the bench's pid: %v", m[1], err)
	}
	servers := 0
	for pid, cmdline := range members {
		switch {
		case pid == benchPID:
			t.Errorf("the bench itself (pid %d) is in the servers' memory cgroup", pid)
		case strings.HasPrefix(cmdline, m[2]+" server "):
			servers++
			if parents[pid] != benchPID {
				t.Errorf("the server (pid %d) is the child of pid %d, not of the bench the cgroup is named after (%d)", pid, parents[pid], benchPID)
			}
		default:
			t.Errorf("pid %d in the servers' memory cgroup is not a server run from %s: %s", pid, m[2], cmdline)
		}
	}
	if servers != 1 {
		t.Errorf("the servers' memory cgroup held %d server processes, want the one of the harikube mode: %v", servers, members)
	}
	t.Logf("the servers' memory cgroup held %v; the bench is pid %d", members, benchPID)
	for _, p := range m[1:] {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind (stat: %v)", p, err)
		}
	}
}

// TestBenchModeOutOfTimeIsReported: a mode that cannot seed its last size
// within --mode-budget ends reported with the objects it created and its
// selective LISTs timed at that size, after the sizes it finished;
// --max-list-objects leaves out the LISTs that would return more objects.
func TestBenchModeOutOfTimeIsReported(t *testing.T) {
	rep, output := runBench(t, 6*time.Minute, "--sizes", "200,1000000", "--modes", "harikube", "--mode-budget", "90s",
		"--max-list-objects", "10", "--repeat", "2", "--budget", "1s", "--watch-samples", "2", "--workers", "2")
	if len(rep.Results) != 1 || rep.Results[0].N != 200 {
		t.Fatalf("results %+v, want N = 200 measured", rep.Results)
	}
	got := map[string]bool{}
	for _, l := range rep.Results[0].Lists {
		got[l.Workload] = true
	}
	for w, want := range map[string]bool{"label-1": true, "field-1-paged": true, "label-10%": false, "all-paged": false} {
		if got[w] != want {
			t.Errorf("workload %s measured: %v, want %v (20 and 200 objects are over --max-list-objects 10)", w, got[w], want)
		}
	}
	if !strings.Contains(output, "skipped: 200 objects (--max-list-objects 10)") {
		t.Error("output does not say that the LIST of all objects was skipped")
	}
	if len(rep.Ended) != 1 {
		t.Fatalf("%d modes ended, want 1: %+v", len(rep.Ended), rep.Ended)
	}
	e := rep.Ended[0]
	if e.Mode != "harikube" || e.Cause != "time" || !strings.Contains(e.Reason, "--mode-budget") {
		t.Errorf("end %+v, want harikube out of its time budget", e)
	}
	// N also counts the creates the server made whose answers the budget's
	// end cut off: at most one per seeding client.
	if r := e.Reached; r.N <= 200 || r.N >= 1000000 || r.Create.Objects > r.N-200 || r.N-200-r.Create.Objects > 2 || r.Create.PerSecond <= 0 {
		t.Errorf("reached N = %d with %+v created, want between 200 and 1,000,000, the objects beyond 200 (up to 2 unanswered), at a positive rate", r.N, r.Create)
	}
	// The selective LISTs are timed at the size reached, each checked
	// against the widgets created.
	measured := map[string]bool{}
	for _, l := range e.Reached.Lists {
		measured[l.Workload] = true
		if l.Got != l.Expected || l.Expected < 1 || l.Samples < 1 {
			t.Errorf("reached %s: %d of %d objects in %d runs", l.Workload, l.Got, l.Expected, l.Samples)
		}
	}
	for _, w := range bench.Workloads() {
		if measured[w.Key] != w.Selective {
			t.Errorf("reached: workload %s measured: %v, want it measured when selective (%v)", w.Key, measured[w.Key], w.Selective)
		}
	}
	if e.Reached.ServerPeakRSSBytes <= 0 || e.Reached.DatabaseBytes <= 0 {
		t.Errorf("reached: peak RSS %d, database %d bytes; want both positive", e.Reached.ServerPeakRSSBytes, e.Reached.DatabaseBytes)
	}
}

// TestBenchRequestTimeoutIsReported: a LIST the apiserver cannot answer
// within its --request-timeout (here kine-stock's unindexed LIST, which
// reads all 20,000 objects, against a 200 ms timeout) ends the mode
// reported with what it had measured, as etcd's first LIST at 1,000,000
// did; the next mode runs.
func TestBenchRequestTimeoutIsReported(t *testing.T) {
	rep, output := runBench(t, 8*time.Minute, "--sizes", "20000", "--modes", "kine-stock,harikube",
		"--server-arg=--kube-apiserver-arg=request-timeout=200ms", "--max-list-objects", "2000",
		"--repeat", "2", "--budget", "1s", "--watch-samples", "2")
	var ended *bench.ModeEnd
	for i, e := range rep.Ended {
		if e.Mode == "kine-stock" {
			ended = &rep.Ended[i]
		}
	}
	if ended == nil {
		t.Fatalf("kine-stock did not end early: ended %+v, results %+v", rep.Ended, rep.Results)
	}
	if ended.Cause != "request-timeout" || !strings.Contains(ended.Reason, "--request-timeout") {
		t.Errorf("kine-stock ended with %q (%s), want request-timeout", ended.Cause, ended.Reason)
	}
	// Creates repeat a timed-out request, so the seeding completed and its
	// figures are reported with the end.
	if r := ended.Reached; r.N != 20000 || r.Create.Objects != 20000 || r.Create.PerSecond <= 0 || r.ServerPeakRSSBytes <= 0 {
		t.Errorf("reached N = %d with %+v, peak RSS %d; want the 20,000 creates measured", r.N, r.Create, r.ServerPeakRSSBytes)
	}
	if !strings.Contains(output, "[kine-stock] ended: the apiserver timed out") {
		t.Error("output does not say how kine-stock ended")
	}
	ran := false
	for _, r := range rep.Results {
		ran = ran || r.Mode == "harikube"
	}
	for _, e := range rep.Ended {
		ran = ran || e.Mode == "harikube"
	}
	if !ran {
		t.Error("harikube did not run after kine-stock's end")
	}
	for _, m := range rep.Modes {
		if n := len(m.ServerArgs); n == 0 || m.ServerArgs[n-1] != "--kube-apiserver-arg=request-timeout=200ms" {
			t.Errorf("mode %s ran with %v, want --server-arg's flag last", m.Name, m.ServerArgs)
		}
	}
}

// TestBenchEtcdQuotaIsReported: an etcd whose backend quota fills while the
// etcd mode seeds (--etcd-quota, here far below what 20,000 widgets need)
// answers "database space exceeded"; the mode ends reported with the
// objects created so far, and the bench exits 0.
func TestBenchEtcdQuotaIsReported(t *testing.T) {
	rep, output := runBench(t, 6*time.Minute, "--sizes", "20000", "--modes", "etcd", "--etcd-quota", "24Mi",
		"--max-list-objects", "10", "--repeat", "2", "--budget", "1s", "--watch-samples", "2")
	if len(rep.Results) != 0 || len(rep.Ended) != 1 {
		t.Fatalf("results %+v, ended %+v; want the etcd mode ended and nothing measured in full", rep.Results, rep.Ended)
	}
	e := rep.Ended[0]
	if e.Mode != "etcd" || e.Cause != "etcd-quota" || !strings.Contains(e.Reason, "database space exceeded") {
		t.Errorf("end %+v, want etcd ended by its quota", e)
	}
	if r := e.Reached; r.N <= 0 || r.N >= 20000 || r.Create.PerSecond <= 0 || r.DatabaseBytes <= 0 || r.EtcdPeakRSSBytes <= 0 {
		t.Errorf("reached N = %d with %+v created, database %d bytes, etcd peak RSS %d; want part of the 20,000 created and the figures so far",
			r.N, r.Create, r.DatabaseBytes, r.EtcdPeakRSSBytes)
	}
	if !strings.Contains(output, "[etcd] ended: etcd's quota is full") {
		t.Error("output does not say that etcd's quota ended the mode")
	}
}

// TestBenchServerExitIsReported: a server that exits while its mode seeds
// (here killed by the test, as an OOM killer outside the bench's own cgroup
// would) ends the mode reported, naming the process and how it exited, with
// the figures up to then.
func TestBenchServerExitIsReported(t *testing.T) {
	readyLine := regexp.MustCompile(`^server ready in .* \(pid (\d+)\)$`)
	progressLine := regexp.MustCompile(`^seeding (\d+)/`)
	var pid, killed, seededBefore int
	// The mode budget only bounds the run should the kill go amiss.
	rep, output := runBenchWatching(t, 8*time.Minute, func(line string) {
		if m := readyLine.FindStringSubmatch(line); m != nil {
			pid, _ = strconv.Atoi(m[1])
		}
		m := progressLine.FindStringSubmatch(line)
		if m == nil || pid == 0 || killed != 0 {
			return
		}
		// Only the bench's server: a pid read from its output could have
		// been reused had that server already gone.
		if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err != nil || !bytes.Contains(cmdline, []byte("server\x00--data-dir")) {
			t.Errorf("pid %d is not the bench's server (%q, %v)", pid, cmdline, err)
			killed = -1
			return
		}
		seededBefore, _ = strconv.Atoi(m[1])
		killed = pid
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Errorf("kill the server (pid %d): %v", pid, err)
		}
	}, "--sizes", "200000", "--modes", "harikube", "--mode-budget", "2m",
		"--max-list-objects", "10", "--repeat", "2", "--budget", "1s", "--watch-samples", "2")
	if killed <= 0 {
		t.Fatalf("the server was not killed: no seeding progress after it was ready (printed every 10 s, within the 2-minute mode budget), or the pid was not its:\n%s", output)
	}
	if len(rep.Results) != 0 || len(rep.Ended) != 1 {
		t.Fatalf("results %+v, ended %+v; want the mode ended and nothing measured in full", rep.Results, rep.Ended)
	}
	e := rep.Ended[0]
	if e.Mode != "harikube" || e.Cause != "exited" || !strings.Contains(e.Reason, "harikube server exited: signal: killed") {
		t.Errorf("end %+v, want the server reported killed", e)
	}
	// N counts the creates answered before the kill: at least those the
	// progress line had reported.
	if r := e.Reached; r.N < seededBefore || r.N >= 200000 || r.Create.PerSecond <= 0 || r.ServerPeakRSSBytes <= 0 || r.DatabaseBytes <= 0 {
		t.Errorf("reached N = %d with %+v created, peak RSS %d, database %d bytes; want at least the %d reported before the kill and the figures up to it",
			r.N, r.Create, r.ServerPeakRSSBytes, r.DatabaseBytes, seededBefore)
	}
	if !strings.Contains(output, "[harikube] ended: harikube server exited") {
		t.Error("output does not say that the server exited")
	}
}

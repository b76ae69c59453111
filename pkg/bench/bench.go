// Package bench is `harikube bench`: it runs the control plane in several
// modes side by side (harikube's defaults, pushdown off, upstream caching,
// a real etcd, Kine's stock driver), each as a fresh `harikube server`
// process, seeds the same custom resources into each, times selector LISTs,
// a selector WATCH and creates, checks every LIST result, and reports the
// figures as a table and as JSON.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/harikube/harikube/pkg/pglocal"
)

// Options configure a bench run.
type Options struct {
	// Binary is the harikube executable the servers (and the etcd helper)
	// run; empty means this executable.
	Binary string
	// Sizes are the numbers of objects, each measured in every mode.
	Sizes []int
	Modes []Mode
	// Repetition bounds the timed runs of each LIST workload.
	Repetition Repetition
	// WatchSamples is the number of timed watch events.
	WatchSamples int
	// Workers is the number of concurrent clients that seed the objects.
	Workers int
	// JSONPath receives the results as JSON; empty writes none.
	JSONPath string
	// ChartPath receives an SVG chart of the results; empty writes none.
	ChartPath string
	// WorkDir holds the temporary data directories (default: the system's
	// temporary directory).
	WorkDir string
	// StartTimeout bounds a server's (or etcd's) start.
	StartTimeout time.Duration
	// IdleDuration is how long a server stands idle, with its CRD and no
	// objects, before its idle memory is read; at least the controller
	// manager's start-up syncs.
	IdleDuration time.Duration
	// ChurnObjects caps the extra widgets each size creates, updates and
	// deletes (at most N).
	ChurnObjects int
	// Mixed is the mixed workload, run in each mode after the last size;
	// a zero Duration skips it.
	Mixed MixedOptions
	// History is the history workload, run in each mode after the last
	// size; zero Objects skips it.
	History HistoryOptions
	// ProfileDir, when set, receives pprof profiles of each mode's server:
	// the heap after each size and the CPU during seeding (and the mixed
	// workload).
	ProfileDir string
	// MemoryLimit caps the memory of the servers and etcd the bench starts
	// (one cgroup, as a container's limit; the bench stays outside); a mode
	// whose server the kernel kills at the cap, or that cannot start or
	// stalls there, ends reported, and the next mode runs. 0: no cap.
	MemoryLimit int64
	// ModeBudget bounds each mode's time; a mode that spends it ends
	// reported with the figures so far. 0: no bound.
	ModeBudget time.Duration
	// MaxListObjects skips the LIST workloads that would return more
	// objects than this (at 1,000,000 the 10 % and all-objects LISTs);
	// 0 skips none.
	MaxListObjects int
	// EtcdQuota is the etcd mode's backend quota in bytes; writes past it
	// fail with "database space exceeded", which ends the mode reported.
	// 0: DefaultEtcdQuota.
	EtcdQuota int64
	// Command is the command line, recorded in the results.
	Command string
	Out     io.Writer
}

// Result is one mode at one size. Each mode runs one server, whose data set
// grows from size to size.
type Result struct {
	Mode           string     `json:"mode"`
	N              int        `json:"n"`
	StartupSeconds float64    `json:"startup_seconds"`
	Create         Throughput `json:"create"`
	// Update and Delete time min(N, 2,000) merge patches and deletes of
	// extra widgets, created for them after the other measurements.
	Update Throughput   `json:"update"`
	Delete Throughput   `json:"delete"`
	Lists  []ListResult `json:"lists"`
	Watch  Latency      `json:"watch"`
	// ServerPeakRSSBytes is the harikube server's VmHWM at the end.
	ServerPeakRSSBytes int64 `json:"server_peak_rss_bytes"`
	// EtcdPeakRSSBytes is the etcd helper's, in the etcd mode.
	EtcdPeakRSSBytes int64 `json:"etcd_peak_rss_bytes,omitempty"`
	// ServerPeakAnonBytes and EtcdPeakAnonBytes are the largest RssAnon
	// sampled: the processes' own memory, without the executable's pages.
	ServerPeakAnonBytes int64 `json:"server_peak_anon_bytes"`
	EtcdPeakAnonBytes   int64 `json:"etcd_peak_anon_bytes,omitempty"`
	// ServerPeakAnonDuring names what the bench was doing when the server's
	// peak anonymous memory was sampled, e.g. "N=100000: label decile=7 (10 %)".
	ServerPeakAnonDuring string `json:"server_peak_anon_during,omitempty"`
	// CgroupPeakBytes is, with MemoryLimit, the memory cgroup's peak during
	// the mode so far: what a container's limit is checked against (the
	// processes' memory, the pages of the executable they touched and the
	// page cache of their files).
	CgroupPeakBytes int64 `json:"cgroup_peak_bytes,omitempty"`
	// IdleAnonBytes is the server's RssAnon once it has started, with the
	// CRD and no objects, after a few quiet seconds.
	IdleAnonBytes int64 `json:"idle_anon_bytes"`
	// DatabaseBytes is the size of the database files (SQLite with its WAL,
	// or etcd's data directory) after the size was measured.
	DatabaseBytes int64 `json:"database_bytes"`
	// Stopped is true when the mode's server (and etcd) exited 0 on
	// SIGTERM at the end.
	Stopped bool `json:"stopped"`
	// History is the history workload, on the last size's result.
	History *HistoryResult `json:"history,omitempty"`
}

// Run measures every mode at every size. A server that fails, or a LIST
// that returns a wrong result, ends the run with an error; the results so
// far are still written.
func Run(ctx context.Context, opts Options) (*Report, error) {
	if err := opts.complete(); err != nil {
		return nil, err
	}
	con := newConsole(opts.Out)
	rep := newReport(opts)
	con.printf("harikube bench: sizes %v, modes %v, %d timed runs per LIST (at most %s each), %d watch samples, %d seeding clients, idle %s, %d churn widgets\n",
		opts.Sizes, ModeNames(opts.Modes), opts.Repetition.Runs, opts.Repetition.Budget, opts.WatchSamples, opts.Workers, opts.IdleDuration, opts.ChurnObjects)
	var memCap *memoryCap
	if opts.MemoryLimit > 0 {
		var release func() error
		var err error
		if memCap, release, err = capMemory(opts.MemoryLimit); err != nil {
			return nil, err
		}
		defer func() {
			if err := release(); err != nil {
				con.printf("%v\n", err)
			}
		}()
		binDir, err := os.MkdirTemp(opts.WorkDir, "harikube-bench-bin-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(binDir)
		bin, err := uncachedCopy(opts.Binary, binDir)
		if err != nil {
			return nil, fmt.Errorf("--memory-limit: %w", err)
		}
		opts.Binary = bin
		con.printf("memory of the servers capped at %s (cgroup %s, running %s)\n", gib(opts.MemoryLimit), memCap.dir, bin)
	}
	var runErr error
	for _, m := range opts.Modes {
		results, mixed, err := runMode(ctx, opts, con, m, memCap)
		rep.Results = append(rep.Results, results...)
		if mixed != nil {
			rep.Mixed = append(rep.Mixed, *mixed)
		}
		var ended *modeEnded
		if errors.As(err, &ended) {
			rep.Ended = append(rep.Ended, ended.end)
			con.printf("[%s] ended: %s\n", m.Name, ended.end.Reason)
			continue
		}
		if err != nil {
			runErr = fmt.Errorf("mode %s: %w", m.Name, err)
			break
		}
	}
	rep.Finished = time.Now().UTC()
	if runErr != nil {
		rep.Error = runErr.Error()
	} else {
		rep.Targets = evaluateTargets(rep)
	}
	con.printf("\n")
	rep.WriteText(opts.Out)
	if opts.JSONPath != "" {
		if err := rep.WriteJSON(opts.JSONPath); err != nil {
			return rep, errors.Join(runErr, err)
		}
		con.printf("\nResults written to %s\n", opts.JSONPath)
	}
	if opts.ChartPath != "" {
		if err := rep.WriteChartFile(opts.ChartPath); err != nil {
			return rep, errors.Join(runErr, err)
		}
		con.printf("Chart written to %s\n", opts.ChartPath)
	}
	return rep, runErr
}

func (o *Options) complete() error {
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find the harikube executable: %w", err)
		}
		o.Binary = exe
	}
	if len(o.Sizes) == 0 {
		return errors.New("no sizes")
	}
	o.Sizes = slices.Compact(slices.Sorted(slices.Values(o.Sizes)))
	for _, n := range o.Sizes {
		if n < 10 {
			return fmt.Errorf("size %d: at least 10 objects are needed for the selectors to match", n)
		}
	}
	if len(o.Modes) == 0 {
		o.Modes = Modes
	}
	if o.Repetition.Runs < 1 {
		o.Repetition.Runs = 1
	}
	if o.Mixed.Clients < 1 {
		o.Mixed.Clients = 20
	}
	if o.IdleDuration <= 0 {
		o.IdleDuration = 10 * time.Second
	}
	if o.ChurnObjects < 1 {
		o.ChurnObjects = 2000
	}
	if o.Workers < 1 {
		o.Workers = 1
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 3 * time.Minute
	}
	if o.EtcdQuota <= 0 {
		o.EtcdQuota = DefaultEtcdQuota
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	// A run takes minutes to hours: refuse a path it could not write at the
	// end before it starts.
	for _, out := range []struct{ flag, path string }{{"--json", o.JSONPath}, {"--chart", o.ChartPath}} {
		if out.path == "" {
			continue
		}
		if st, err := os.Stat(out.path); err == nil && st.IsDir() {
			return fmt.Errorf("%s %s is a directory; name a file", out.flag, out.path)
		}
		if err := isDir(filepath.Dir(out.path)); err != nil {
			return fmt.Errorf("%s %s: %w; create the directory or name another file", out.flag, out.path, err)
		}
	}
	if o.WorkDir != "" {
		if err := isDir(o.WorkDir); err != nil {
			return fmt.Errorf("--work-dir: %w; create it or name another directory", err)
		}
	}
	if o.ProfileDir != "" {
		if err := os.MkdirAll(o.ProfileDir, 0o700); err != nil {
			return fmt.Errorf("--profile-dir: %w", err)
		}
	}
	return nil
}

func isDir(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", path)
	}
	return nil
}

// runMode starts a fresh server (and etcd) for a mode in a temporary
// directory and measures each size in turn, growing the same data set;
// then it stops the server and removes the directory.
func runMode(ctx context.Context, opts Options, con *console, m Mode, memCap *memoryCap) (results []Result, mixed *MixedResult, err error) {
	begin := time.Now()
	con.printf("\n[%s] %s\n", m.Name, m.Description)
	ender, err := newModeEnder(m.Name, opts, memCap, con)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := ender.withBudget(ctx)
	defer cancel()
	dir, err := os.MkdirTemp(opts.WorkDir, "harikube-bench-"+m.Name+"-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(dir)

	args := m.ServerArgs
	prof := profiles{}
	if opts.ProfileDir != "" {
		prof = profiles{dir: opts.ProfileDir, mode: m.Name}
		args = append(append([]string(nil), args...), profilingArg)
	}
	dbDir := filepath.Join(dir, "server", "db")
	var etcd *process
	var endpoint string
	if m.Etcd {
		if etcd, endpoint, err = startEtcd(ctx, opts.Binary, dir, opts.EtcdQuota, opts.StartTimeout, memCap); err != nil {
			return nil, nil, ender.end(ctx, err, nil, nil, 0, nil)
		}
		defer func() {
			if etcd != nil {
				_ = etcd.stop(time.Minute)
			}
		}()
		args = append(append([]string(nil), args...), "--kube-apiserver-arg=etcd-servers="+endpoint)
		dbDir = etcdDataDir(dir)
		con.printf("etcd serving at %s\n", endpoint)
	}

	if m.Postgres {
		pg, err := pglocal.Start("") // not under dir: the postgres user cannot enter it
		if err != nil {
			return nil, nil, fmt.Errorf("start PostgreSQL: %w", err)
		}
		defer pg.Stop()
		args = append(append([]string(nil), args...), "--datastore-endpoint="+pg.DSN())
		dbDir = filepath.Join(pg.Dir(), "data")
		con.printf("PostgreSQL serving at %s\n", pg.Dir())
	}

	start := time.Now()
	srv, err := startServer(ctx, opts.Binary, dir, args, opts.StartTimeout, memCap)
	if err != nil {
		return nil, nil, ender.end(ctx, err, nil, etcd, 0, nil)
	}
	defer func() {
		if srv != nil {
			_ = srv.stop(time.Minute)
		}
	}()
	ender.dbDir = dbDir
	ctx, stopWatch := ender.watchStall(ctx, srv)
	defer stopWatch()
	startup := time.Since(start).Seconds()
	con.printf("server ready in %.1fs (pid %d)\n", startup, srv.cmd.Process.Pid)
	if err := createCRD(ctx, srv.client, m.CRDAnnotations, time.Minute); err != nil {
		return nil, nil, ender.end(ctx, err, srv, etcd, 0, nil)
	}
	srv.setPhase("start and idle")
	idle, err := srv.idleAnon(ctx, opts.IdleDuration)
	if err != nil {
		return nil, nil, ender.end(ctx, err, srv, etcd, 0, nil)
	}
	con.printf("idle: anonymous RSS %s\n", mib(idle))

	cpu := func() (float64, error) {
		total, err := cpuSeconds(srv.cmd.Process.Pid)
		if err == nil && etcd != nil {
			var e float64
			e, err = cpuSeconds(etcd.cmd.Process.Pid)
			total += e
		}
		return total, err
	}
	seeded := 0
	for _, n := range opts.Sizes {
		res := Result{Mode: m.Name, N: n, StartupSeconds: startup, IdleAnonBytes: idle}
		if err := measureSize(ctx, opts, con, srv, cpu, prof, seeded, &res); err != nil {
			return results, nil, ender.end(ctx, fmt.Errorf("N=%d: %w", n, err), srv, etcd, seeded, &res)
		}
		seeded = n
		if res.ServerPeakRSSBytes, err = srv.peakRSS(); err != nil {
			return results, nil, err
		}
		res.ServerPeakAnonBytes = srv.peakAnon.Load()
		res.ServerPeakAnonDuring = srv.peakAnonDuring()
		if memCap != nil {
			if res.CgroupPeakBytes, err = memCap.peak(); err != nil {
				return results, nil, fmt.Errorf("memory cgroup: %w", err)
			}
		}
		if etcd != nil {
			if err := checkEtcdHolds(ctx, endpoint, n); err != nil {
				return results, nil, err
			}
			if res.EtcdPeakRSSBytes, err = etcd.peakRSS(); err != nil {
				return results, nil, err
			}
			res.EtcdPeakAnonBytes = etcd.peakAnon.Load()
		}
		if err := prof.heap(ctx, srv, n); err != nil {
			return results, nil, err
		}
		if res.DatabaseBytes, err = dirSize(dbDir); err != nil {
			return results, nil, fmt.Errorf("database size: %w", err)
		}
		con.printf("N=%d: peak RSS %s (anonymous %s; the server's during %s), database %s%s\n", n, mib(res.ServerPeakRSSBytes+res.EtcdPeakRSSBytes),
			mib(res.ServerPeakAnonBytes+res.EtcdPeakAnonBytes), res.ServerPeakAnonDuring, mib(res.DatabaseBytes), cgroupPeakNote(res.CgroupPeakBytes))
		results = append(results, res)
	}

	if opts.Mixed.Duration > 0 && len(results) > 0 {
		srv.setPhase("mixed workload")
		r, err := runMixed(ctx, opts.Mixed, con, srv, cpu, prof, seeded)
		if err != nil {
			return results, nil, ender.end(ctx, fmt.Errorf("mixed workload: %w", err), srv, etcd, seeded, nil)
		}
		r.Mode = m.Name
		mixed = &r
	}

	if opts.History.Objects > 0 && len(results) > 0 {
		srv.setPhase("history workload")
		h, err := runHistory(ctx, opts.History, opts.Repetition, opts.Workers, con, srv.client)
		if err != nil {
			return results, mixed, ender.end(ctx, fmt.Errorf("history workload: %w", err), srv, etcd, seeded, nil)
		}
		h.Mode = m.Name
		results[len(results)-1].History = &h
	}

	stopWatch() // a server shutting down stops answering /readyz
	err = srv.stop(2 * time.Minute)
	srv = nil
	if err == nil && etcd != nil {
		err = etcd.stop(time.Minute)
		etcd = nil
	}
	if err != nil {
		return results, mixed, err
	}
	for i := range results {
		results[i].Stopped = true
	}
	con.printf("[%s] stopped cleanly; %.0fs for this mode\n", m.Name, time.Since(begin).Seconds())
	return results, mixed, nil
}

// measureSize grows the data set from seeded to res.N objects and measures
// the LISTs and the WATCH at that size.
func measureSize(ctx context.Context, opts Options, con *console, srv *server, cpu func() (float64, error), prof profiles, seeded int, res *Result) error {
	con.printf("[%s, N=%d]\n", res.Mode, res.N)
	c := srv.client
	var err error
	phase := func(name string) { srv.setPhase(fmt.Sprintf("N=%d: %s", res.N, name)) }
	phase("seeding")
	profiled := prof.cpu(ctx, srv, res.N, "seed", seedProfileLength(res.N-seeded))
	if err := withCPU(cpu, &res.Create, func() (err error) {
		res.Create, err = seed(ctx, c, seeded, res.N, opts.Workers, con)
		return err
	}); err != nil {
		return err
	}
	if err := profiled(); err != nil {
		return err
	}
	for _, w := range Workloads() {
		if matches := w.Matches(res.N); opts.MaxListObjects > 0 && matches > opts.MaxListObjects {
			con.printf("  %-44s skipped: %d objects (--max-list-objects %d)\n", w.Title, matches, opts.MaxListObjects)
			continue
		}
		phase(w.Title)
		lr, err := measureList(ctx, c, w, res.N, opts.Repetition)
		if err != nil {
			return err
		}
		res.Lists = append(res.Lists, lr)
		con.printf("  %-44s p50 %9.2f ms  p95 %9.2f ms  (%d runs, %d objects, %d pages)\n",
			w.Title, lr.P50Ms, lr.P95Ms, lr.Samples, lr.Got, lr.Pages)
	}
	phase("single pages")
	if err := measurePagingSize(ctx, opts, con, c, res); err != nil {
		return err
	}
	if opts.WatchSamples > 0 {
		phase("watch")
		if res.Watch, err = measureWatch(ctx, c, opts.WatchSamples); err != nil {
			return err
		}
		con.printf("  %-44s p50 %9.2f ms  p95 %9.2f ms  (%d events)\n", "watch decile=7, create→event", res.Watch.P50Ms, res.Watch.P95Ms, res.Watch.Samples)
	}
	phase("updates and deletes")
	if res.Update, res.Delete, err = measureChurn(ctx, c, cpu, res.N, opts.ChurnObjects, opts.Workers, con); err != nil {
		return err
	}
	return nil
}

// list finds the result of a LIST workload.
func (r Result) list(key string) (ListResult, bool) {
	for _, l := range r.Lists {
		if l.Workload == key {
			return l, true
		}
	}
	return ListResult{}, false
}

// seedProfileLength is a CPU profile's length that ends before seeding
// does, at about 1,000 creates/s.
func seedProfileLength(creates int) time.Duration {
	return min(30*time.Second, time.Duration(creates)*time.Millisecond/2)
}

// idleAnon waits for the server to settle after its start and returns its
// anonymous resident memory.
func (s *server) idleAnon(ctx context.Context, settle time.Duration) (int64, error) {
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(settle):
	}
	m, err := readMemory(s.cmd.Process.Pid)
	if err != nil {
		return 0, fmt.Errorf("idle memory: %w", err)
	}
	return m.anon, nil
}

// withCPU runs a timed phase and sets t's server CPU seconds per 1,000
// operations from the server's CPU time before and after.
func withCPU(cpu func() (float64, error), t *Throughput, phase func() error) error {
	before, err := cpu()
	if err != nil {
		return err
	}
	if err := phase(); err != nil {
		return err
	}
	after, err := cpu()
	if err != nil {
		return err
	}
	if t.Objects > 0 {
		t.CPUSecondsPer1000 = (after - before) / float64(t.Objects) * 1000
	}
	return nil
}

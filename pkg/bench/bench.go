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

	"k8s.io/client-go/dynamic"

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
	// WorkDir holds the temporary data directories (default: the system's
	// temporary directory).
	WorkDir string
	// StartTimeout bounds a server's (or etcd's) start.
	StartTimeout time.Duration
	// Command is the command line, recorded in the results.
	Command string
	Out     io.Writer
}

// Result is one mode at one size. Each mode runs one server, whose data set
// grows from size to size.
type Result struct {
	Mode           string       `json:"mode"`
	N              int          `json:"n"`
	StartupSeconds float64      `json:"startup_seconds"`
	Create         Throughput   `json:"create"`
	Lists          []ListResult `json:"lists"`
	Watch          Latency      `json:"watch"`
	// ServerPeakRSSBytes is the harikube server's VmHWM at the end.
	ServerPeakRSSBytes int64 `json:"server_peak_rss_bytes"`
	// EtcdPeakRSSBytes is the etcd helper's, in the etcd mode.
	EtcdPeakRSSBytes int64 `json:"etcd_peak_rss_bytes,omitempty"`
	// ServerPeakAnonBytes and EtcdPeakAnonBytes are the largest RssAnon
	// sampled: the processes' own memory, without the executable's pages.
	ServerPeakAnonBytes int64 `json:"server_peak_anon_bytes"`
	EtcdPeakAnonBytes   int64 `json:"etcd_peak_anon_bytes,omitempty"`
	// DatabaseBytes is the size of the database files (SQLite with its WAL,
	// or etcd's data directory) after the size was measured.
	DatabaseBytes int64 `json:"database_bytes"`
	// Stopped is true when the mode's server (and etcd) exited 0 on
	// SIGTERM at the end.
	Stopped bool `json:"stopped"`
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
	con.printf("harikube bench: sizes %v, modes %v, %d timed runs per LIST (at most %s each), %d watch samples, %d seeding clients\n",
		opts.Sizes, ModeNames(opts.Modes), opts.Repetition.Runs, opts.Repetition.Budget, opts.WatchSamples, opts.Workers)
	var runErr error
	for _, m := range opts.Modes {
		results, err := runMode(ctx, opts, con, m)
		rep.Results = append(rep.Results, results...)
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
	if o.Workers < 1 {
		o.Workers = 1
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 3 * time.Minute
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	return nil
}

// runMode starts a fresh server (and etcd) for a mode in a temporary
// directory and measures each size in turn, growing the same data set;
// then it stops the server and removes the directory.
func runMode(ctx context.Context, opts Options, con *console, m Mode) (results []Result, err error) {
	begin := time.Now()
	con.printf("\n[%s] %s\n", m.Name, m.Description)
	dir, err := os.MkdirTemp(opts.WorkDir, "harikube-bench-"+m.Name+"-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	args := m.ServerArgs
	dbDir := filepath.Join(dir, "server", "db")
	var etcd *process
	var endpoint string
	if m.Etcd {
		if etcd, endpoint, err = startEtcd(ctx, opts.Binary, dir, opts.StartTimeout); err != nil {
			return nil, err
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
			return nil, fmt.Errorf("start PostgreSQL: %w", err)
		}
		defer pg.Stop()
		args = append(append([]string(nil), args...), "--datastore-endpoint="+pg.DSN())
		dbDir = filepath.Join(pg.Dir(), "data")
		con.printf("PostgreSQL serving at %s\n", pg.Dir())
	}

	start := time.Now()
	srv, err := startServer(ctx, opts.Binary, dir, args, opts.StartTimeout)
	if err != nil {
		return nil, err
	}
	defer func() {
		if srv != nil {
			_ = srv.stop(time.Minute)
		}
	}()
	startup := time.Since(start).Seconds()
	con.printf("server ready in %.1fs (pid %d)\n", startup, srv.cmd.Process.Pid)
	if err := createCRD(ctx, srv.client, time.Minute); err != nil {
		return nil, err
	}

	seeded := 0
	for _, n := range opts.Sizes {
		res := Result{Mode: m.Name, N: n, StartupSeconds: startup}
		if err := measureSize(ctx, opts, con, srv.client, seeded, &res); err != nil {
			return results, fmt.Errorf("N=%d: %w", n, err)
		}
		seeded = n
		if res.ServerPeakRSSBytes, err = srv.peakRSS(); err != nil {
			return results, err
		}
		res.ServerPeakAnonBytes = srv.peakAnon.Load()
		if etcd != nil {
			if err := checkEtcdHolds(ctx, endpoint, n); err != nil {
				return results, err
			}
			if res.EtcdPeakRSSBytes, err = etcd.peakRSS(); err != nil {
				return results, err
			}
			res.EtcdPeakAnonBytes = etcd.peakAnon.Load()
		}
		if res.DatabaseBytes, err = dirSize(dbDir); err != nil {
			return results, fmt.Errorf("database size: %w", err)
		}
		con.printf("N=%d: peak RSS %s (anonymous %s), database %s\n", n, mib(res.ServerPeakRSSBytes+res.EtcdPeakRSSBytes),
			mib(res.ServerPeakAnonBytes+res.EtcdPeakAnonBytes), mib(res.DatabaseBytes))
		results = append(results, res)
	}

	err = srv.stop(2 * time.Minute)
	srv = nil
	if err == nil && etcd != nil {
		err = etcd.stop(time.Minute)
		etcd = nil
	}
	if err != nil {
		return results, err
	}
	for i := range results {
		results[i].Stopped = true
	}
	con.printf("[%s] stopped cleanly; %.0fs for this mode\n", m.Name, time.Since(begin).Seconds())
	return results, nil
}

// measureSize grows the data set from seeded to res.N objects and measures
// the LISTs and the WATCH at that size.
func measureSize(ctx context.Context, opts Options, con *console, c dynamic.Interface, seeded int, res *Result) error {
	con.printf("[%s, N=%d]\n", res.Mode, res.N)
	var err error
	if res.Create, err = seed(ctx, c, seeded, res.N, opts.Workers, con); err != nil {
		return err
	}
	for _, w := range Workloads() {
		lr, err := measureList(ctx, c, w, res.N, opts.Repetition)
		if err != nil {
			return err
		}
		res.Lists = append(res.Lists, lr)
		con.printf("  %-44s p50 %9.2f ms  p95 %9.2f ms  (%d runs, %d objects, %d pages)\n",
			w.Title, lr.P50Ms, lr.P95Ms, lr.Samples, lr.Got, lr.Pages)
	}
	if opts.WatchSamples > 0 {
		if res.Watch, err = measureWatch(ctx, c, opts.WatchSamples); err != nil {
			return err
		}
		con.printf("  %-44s p50 %9.2f ms  p95 %9.2f ms  (%d events)\n", "watch decile=7, create→event", res.Watch.P50Ms, res.Watch.P95Ms, res.Watch.Samples)
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

package cli

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/harikube/harikube/pkg/bench"
)

func newBenchCommand() *cobra.Command {
	var (
		quick                bool
		sizes, modes, binary string
		memoryLimit          string
		etcdQuota            string
		serverArgs           []string
		opts                 = bench.Options{Workers: 16, WatchSamples: 20}
	)
	c := &cobra.Command{
		Use:   "bench",
		Short: "Measure selector pushdown against upstream behaviour, a real etcd and Kine's stock driver, side by side",
		Long: `Runs a fresh 'harikube server' for each mode and size, seeds N custom resources (1 KiB each)
with concurrent clients, times selective LISTs by label and field (with and without paging),
a paginated LIST of everything, a label-selector WATCH and creates, checks every LIST result,
and prints a table per size and the issue's targets. A wrong result fails the run. After the
last size, the history workload changes all but 10 of --history-objects tasks from
phase=pending to done and times the LIST of the pending ones (current, resourceVersion=0, an
exact older resourceVersion, paged) against the same LIST by a label and field that never changed.

Modes: harikube (defaults), no-pushdown, upstream (watch cache, no pushdown), etcd (a real
etcd behind the same apiserver), kine-stock (Kine's own SQLite driver, no index), postgres
(harikube on a private PostgreSQL server; needs the postgresql package, so "all" leaves it out
where PostgreSQL is not installed).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if quick {
				if err := applyQuickDefaults(c.Flags()); err != nil {
					return err
				}
			}
			var err error
			if opts.Sizes, err = parseSizes(sizes); err != nil {
				return err
			}
			if opts.IdleDuration <= 0 {
				return fmt.Errorf("--idle-duration: %s; it must be positive, e.g. 10s", opts.IdleDuration)
			}
			if opts.ChurnObjects < 1 {
				return fmt.Errorf("--churn-objects: %d; it must be at least 1", opts.ChurnObjects)
			}
			var skipped []string
			if opts.Modes, skipped, err = bench.ParseModes(modes); err != nil {
				return err
			}
			for _, why := range skipped {
				fmt.Fprintf(c.ErrOrStderr(), "skipping mode %s\n", why)
			}
			for _, a := range serverArgs {
				if !strings.HasPrefix(a, "--") {
					return fmt.Errorf("--server-arg: %q is not a flag of harikube server; write it as --name=value, e.g. --kube-apiserver-arg=request-timeout=2m", a)
				}
			}
			for i, m := range opts.Modes {
				// A new slice: the modes share their ServerArgs with bench.Modes.
				opts.Modes[i].ServerArgs = append(append([]string(nil), m.ServerArgs...), serverArgs...)
			}
			if memoryLimit != "" {
				q, err := resource.ParseQuantity(memoryLimit)
				if err != nil || q.Value() <= 0 {
					return fmt.Errorf("--memory-limit: %q is not a positive amount of memory, e.g. 10Gi", memoryLimit)
				}
				opts.MemoryLimit = q.Value()
			}
			if etcdQuota != "" {
				q, err := resource.ParseQuantity(etcdQuota)
				if err != nil || q.Value() <= 0 {
					return fmt.Errorf("--etcd-quota: %q is not a positive amount of storage, e.g. 2Gi (etcd's own default)", etcdQuota)
				}
				opts.EtcdQuota = q.Value()
			}
			opts.Binary = binary
			opts.Out = c.OutOrStdout()
			opts.Command = strings.Join(os.Args, " ")
			setupLogging(false)
			ctx, cancel := signalContext()
			defer cancel()
			_, err = bench.Run(ctx, opts)
			return err
		},
	}
	f := c.Flags()
	f.BoolVar(&quick, "quick", false, "a run of a few minutes (about seven on two cores): "+quickSummary()+" (a flag given explicitly wins)")
	f.StringVar(&sizes, "sizes", "1000,10000,100000", "comma-separated numbers of objects, e.g. 1000,5000")
	f.StringVar(&modes, "modes", "all", "comma-separated modes: "+strings.Join(bench.ModeNames(bench.Modes), ",")+"; also (not in all): "+strings.Join(bench.ModeNames(bench.OptionalModes), ","))
	f.StringVar(&opts.JSONPath, "json", "bench-results.json", "write the results as JSON to this file (empty: none)")
	f.StringVar(&opts.ChartPath, "chart", "bench-results.svg", "write an SVG chart (selective LIST p50 and peak RSS against N, per mode) to this file (empty: none)")
	f.IntVar(&opts.Repetition.Runs, "repeat", 20, "timed runs of each LIST (a fast first run is an untimed warm-up)")
	f.DurationVar(&opts.Repetition.Budget, "budget", 5*time.Second, "stop timing a LIST after this long (a slower LIST is timed once; 500ms with --quick)")
	f.IntVar(&opts.WatchSamples, "watch-samples", opts.WatchSamples, "timed watch events")
	f.IntVar(&opts.Workers, "workers", opts.Workers, "concurrent clients seeding the objects")
	f.StringVar(&opts.WorkDir, "work-dir", "", "parent of the temporary data directories (default: the system temp dir)")
	f.DurationVar(&opts.Mixed.Duration, "mixed-duration", 20*time.Second, "how long the mixed workload runs in each mode (5s with --quick; 0 skips it)")
	f.IntVar(&opts.Mixed.Clients, "mixed-clients", 20, "concurrent clients of the mixed workload")
	f.IntVar(&opts.History.Objects, "history-objects", 20000, "tasks of the history workload, all but 10 changed once (2000 with --quick; 0 skips it)")
	f.DurationVar(&opts.IdleDuration, "idle-duration", 10*time.Second, "how long each server stands idle (its CRD, no objects) before its idle anonymous RSS is read; the heap takes minutes to reach its collector's goal")
	f.IntVar(&opts.ChurnObjects, "churn-objects", 2000, "extra widgets updated and deleted at each size, at most N (500 with --quick)")
	f.StringVar(&opts.ProfileDir, "profile-dir", "", "save pprof profiles of each server here: heap after each size, CPU while seeding (go tool pprof reads them)")
	f.StringVar(&memoryLimit, "memory-limit", "", "cap the memory of the servers and etcd the bench starts (one cgroup v1 memory cgroup, as a container's limit; e.g. 10Gi); a mode killed at the cap, or that cannot start or stalls there, ends reported and the next mode runs")
	f.DurationVar(&opts.StartTimeout, "start-timeout", 3*time.Minute, "how long a server (and etcd) may take to become ready")
	f.DurationVar(&opts.ModeBudget, "mode-budget", 0, "bound each mode's time (e.g. 30m); a mode that spends it ends reported with the figures so far (0: no bound)")
	f.IntVar(&opts.MaxListObjects, "max-list-objects", 0, "skip the LIST workloads that would return more objects than this, e.g. 10000 at N = 1,000,000 (0: skip none)")
	f.StringVar(&etcdQuota, "etcd-quota", "", "the etcd mode's backend quota, e.g. 2Gi (etcd's own default; empty: 8Gi, room for 100,000 objects and their history); a mode whose etcd fills it ends reported")
	f.StringArrayVar(&serverArgs, "server-arg", nil, "extra flag for every mode's harikube server, as --name=value (repeatable), e.g. --kube-apiserver-arg=request-timeout=2m")
	f.StringVar(&binary, "binary", "", "harikube binary to run the servers with (default: this one)")
	_ = f.MarkHidden("binary")
	c.AddCommand(newBenchEtcdCommand())
	c.AddCommand(newBenchSplitCommand())
	return c
}

// newBenchEtcdCommand is the etcd the etcd mode runs as a process of its own.
func newBenchEtcdCommand() *cobra.Command {
	var (
		dataDir, listen string
		quota           int64
	)
	c := &cobra.Command{
		Use:    "etcd-server",
		Short:  "Run a single-member etcd for the bench's etcd mode",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			ctx, cancel := signalContext()
			defer cancel()
			return bench.RunEtcd(ctx, dataDir, listen, quota)
		},
	}
	c.Flags().StringVar(&dataDir, "data-dir", "", "etcd data directory")
	c.Flags().StringVar(&listen, "listen-client", "127.0.0.1:2379", "host:port of the client API")
	c.Flags().Int64Var(&quota, "quota-backend-bytes", bench.DefaultEtcdQuota, "etcd's backend quota")
	_ = c.MarkFlagRequired("data-dir")
	return c
}

func parseSizes(list string) ([]int, error) {
	var out []int
	for _, s := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("--sizes: %q is not a positive number", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// quickDefaults are the values --quick gives the flags the command line
// leaves unset: both sizes with every mode and workload, in minutes where
// the full run takes most of an hour.
var quickDefaults = []struct{ flag, value string }{
	{"sizes", "1000,10000"},
	{"budget", "500ms"},
	{"churn-objects", "500"},
	{"mixed-duration", "5s"},
	{"history-objects", "2000"},
}

func applyQuickDefaults(f *pflag.FlagSet) error {
	for _, d := range quickDefaults {
		if f.Changed(d.flag) {
			continue
		}
		if err := f.Set(d.flag, d.value); err != nil {
			return fmt.Errorf("--quick: --%s=%s: %w", d.flag, d.value, err)
		}
	}
	return nil
}

func quickSummary() string {
	parts := make([]string, len(quickDefaults))
	for i, d := range quickDefaults {
		parts[i] = "--" + d.flag + "=" + d.value
	}
	return strings.Join(parts, " ")
}

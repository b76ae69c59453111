package cli

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/harikube/harikube/pkg/bench"
)

// newBenchSplitCommand compares one SQLite file with a file per busy
// resource (--datastore-override).
func newBenchSplitCommand() *cobra.Command {
	var binary string
	opts := bench.SplitOptions{Duration: 20 * time.Second, Clients: 8}
	c := &cobra.Command{
		Use:   "split",
		Short: "Create Events and a custom resource at once, in one SQLite file and then in one file each",
		Long: `Runs a fresh 'harikube server' twice: first with Events and a custom resource (widgets) in the
default SQLite file, then with --datastore-override /events=sqlite://<data-dir>/db/events.db. In each,
--clients clients create Events and as many create widgets for --duration, and the creates per
second and their latency are printed per resource and layout.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			opts.Binary = binary
			opts.Out = c.OutOrStdout()
			setupLogging(false)
			ctx, cancel := signalContext()
			defer cancel()
			_, err := bench.RunSplit(ctx, opts)
			return err
		},
	}
	f := c.Flags()
	f.DurationVar(&opts.Duration, "duration", opts.Duration, "how long each layout is written to")
	f.IntVar(&opts.Clients, "clients", opts.Clients, "concurrent clients per resource")
	f.StringVar(&opts.WorkDir, "work-dir", "", "parent of the temporary data directories (default: the system temp dir)")
	f.StringVar(&binary, "binary", "", "harikube binary to run the servers with (default: this one)")
	_ = f.MarkHidden("binary")
	return c
}

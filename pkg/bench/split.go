package bench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	_ "modernc.org/sqlite" // the Events' datastore, read after the run
)

// SplitOptions configure the split workload: two busy resources, Events and
// a custom resource (the bench's widgets), created at once by concurrent clients, with both in
// the one default SQLite file and then each in a file of its own
// (--datastore-override).
type SplitOptions struct {
	Binary, WorkDir string
	// Duration is how long each layout is written to.
	Duration time.Duration
	// Clients create objects of each resource (so twice as many in all).
	Clients      int
	StartTimeout time.Duration
	Out          io.Writer
}

// SplitResult is one layout's creates per second and latency, per resource.
type SplitResult struct {
	Layout    string
	Resources []SplitRate
}

// SplitRate is one resource's share of a split run.
type SplitRate struct {
	Resource      string
	Creates       int
	PerSecond     float64
	P50, P99, Max time.Duration
}

var events = schema.GroupVersionResource{Version: "v1", Resource: "events"}

// RunSplit measures both layouts and prints a table of their rates.
func RunSplit(ctx context.Context, opts SplitOptions) ([]SplitResult, error) {
	if opts.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		opts.Binary = exe
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 3 * time.Minute
	}
	con := newConsole(opts.Out)
	con.printf("harikube bench split: %d clients creating Events and %d creating widgets for %s, per layout\n", opts.Clients, opts.Clients, opts.Duration)
	var results []SplitResult
	for _, layout := range []string{"one file", "two files"} {
		dir, err := os.MkdirTemp(opts.WorkDir, "harikube-bench-split-")
		if err != nil {
			return results, err
		}
		var extra []string
		eventsDB := ""
		if layout == "two files" {
			eventsDB = filepath.Join(dir, "server", "db", "events.db")
			extra = []string{"--datastore-override=/events=sqlite://" + eventsDB}
		}
		res, err := runSplitLayout(ctx, opts, con, dir, layout, extra)
		if err == nil && eventsDB != "" {
			// The comparison means nothing unless the Events went there.
			err = checkEventsIn(ctx, eventsDB, res.Resources[0].Creates)
		}
		os.RemoveAll(dir)
		if err != nil {
			return results, fmt.Errorf("%s: %w", layout, err)
		}
		results = append(results, res)
	}
	writeSplit(opts.Out, results)
	return results, nil
}

// checkEventsIn checks that the stopped server's Events datastore holds at
// least the Events the layout created.
func checkEventsIn(ctx context.Context, path string, created int) error {
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		return fmt.Errorf("open the Events' datastore: %w", err)
	}
	defer db.Close()
	var rows int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM kine WHERE name LIKE '/registry/events/%'`).Scan(&rows); err != nil {
		return fmt.Errorf("count the Events in %s: %w", path, err)
	}
	if rows < created {
		return fmt.Errorf("the Events' own datastore %s holds %d rows of Events, but %d were created: the override did not take them", path, rows, created)
	}
	return nil
}

func runSplitLayout(ctx context.Context, opts SplitOptions, con *console, dir, layout string, extra []string) (SplitResult, error) {
	con.printf("%s: starting harikube server %v\n", layout, extra)
	srv, err := startServer(ctx, opts.Binary, dir, extra, opts.StartTimeout, nil)
	if err != nil {
		return SplitResult{}, err
	}
	defer srv.stop(30 * time.Second)
	if err := establish(ctx, srv.client, widgetCRD(), widgets, opts.StartTimeout); err != nil {
		return SplitResult{}, err
	}
	// Clients stop starting creates at end; the rate counts until the last
	// one in flight is answered.
	start := time.Now()
	end := start.Add(opts.Duration)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed error
	latencies := map[string][]time.Duration{}
	var seq atomic.Int64
	for _, gvr := range []schema.GroupVersionResource{events, widgets} {
		for range opts.Clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rc := srv.client.Resource(gvr).Namespace("default")
				var mine []time.Duration
				for ctx.Err() == nil && time.Now().Before(end) {
					obj := splitObject(gvr, seq.Add(1))
					sent := time.Now()
					if _, err := rc.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
						mu.Lock()
						failed = errors.Join(failed, fmt.Errorf("create %s: %w", gvr.Resource, err))
						mu.Unlock()
						break
					}
					mine = append(mine, time.Since(sent))
				}
				mu.Lock()
				latencies[gvr.Resource] = append(latencies[gvr.Resource], mine...)
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	if failed != nil {
		return SplitResult{}, failed
	}
	res := SplitResult{Layout: layout}
	for _, r := range []string{events.Resource, widgets.Resource} {
		l := latencies[r]
		sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
		rate := SplitRate{Resource: r, Creates: len(l), PerSecond: float64(len(l)) / elapsed.Seconds()}
		if len(l) > 0 {
			rate.P50, rate.P99, rate.Max = l[len(l)/2], l[len(l)*99/100], l[len(l)-1]
		}
		res.Resources = append(res.Resources, rate)
	}
	con.printf("%s: events %.0f/s, widgets %.0f/s\n", layout, res.Resources[0].PerSecond, res.Resources[1].PerSecond)
	return res, nil
}

func splitObject(gvr schema.GroupVersionResource, i int64) *unstructured.Unstructured {
	if gvr == events {
		name := fmt.Sprintf("s-%08d", i)
		return &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "v1", "kind": "Event",
			"metadata":       map[string]any{"name": name, "namespace": "default"},
			"involvedObject": map[string]any{"kind": "Pod", "namespace": "default", "name": fmt.Sprintf("pod-%d", i%100)},
			"reason":         "Started", "type": "Normal", "message": "Started container",
		}}
	}
	return widget(int(i)) // the bench's 1 KiB custom resource
}

func writeSplit(w io.Writer, results []SplitResult) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nlayout\tresource\tcreates\tper second\tp50\tp99\tmax")
	for _, r := range results {
		for _, rate := range r.Resources {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%.0f\t%s\t%s\t%s\n", r.Layout, rate.Resource, rate.Creates, rate.PerSecond,
				rate.P50.Round(100*time.Microsecond), rate.P99.Round(100*time.Microsecond), rate.Max.Round(time.Millisecond))
		}
	}
	tw.Flush()
}

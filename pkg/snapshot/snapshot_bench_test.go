// Built without cgo only, as harikube is: with cgo, Kine serves SQLite with
// mattn/go-sqlite3 while Save reads with modernc.org/sqlite, and two SQLite
// libraries in one process release each other's POSIX locks.

//go:build !cgo

package snapshot

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/harikube/harikube/pkg/datastore"
)

// BenchmarkSaveUnderWrites saves snapshots of a running datastore (20,000
// objects of 1 KiB, Kine compacting every second, so its post-compaction
// checkpoint meets the snapshot's read) while one client updates objects
// through the etcd API, and reports how long the updates took during the
// snapshots and during as long a time without them:
//
//	CGO_ENABLED=0 go test -run '^$' -bench SaveUnderWrites -benchtime 3x ./pkg/snapshot
func BenchmarkSaveUnderWrites(b *testing.B) {
	dir := b.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	ds, err := datastore.Start(ctx, datastore.Options{DataDir: dir, KineArgs: []string{"--compact-interval=1s", "--compact-min-retain=100"}})
	if err != nil {
		b.Fatal(err)
	}
	defer ds.Wait()
	defer cancel()
	client, err := clientv3.New(clientv3.Config{Endpoints: []string{ds.Endpoint}, DialTimeout: 10 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()

	const objects = 20000
	payload := strings.Repeat("x", 1024)
	value := func(i, gen int) string {
		return fmt.Sprintf(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"o%05d","namespace":"ns","labels":{"gen":"%d","decile":"%d"}},"data":{"p":%q}}`, i, gen, i%10, payload)
	}
	key := func(i int) string { return fmt.Sprintf("/registry/configmaps/ns/o%05d", i) }
	g, gctx := errgroup.WithContext(ctx)
	for w := range 8 {
		g.Go(func() error {
			for i := w; i < objects; i += 8 {
				if _, err := client.Txn(gctx).If(clientv3.Compare(clientv3.ModRevision(key(i)), "=", 0)).Then(clientv3.OpPut(key(i), value(i, 0))).Commit(); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}

	var mu sync.Mutex
	var latencies []time.Duration
	measuring := false
	writeCtx, stopWrites := context.WithCancel(ctx)
	writerDone := make(chan error, 1)
	go func() {
		for n := 1; writeCtx.Err() == nil; n++ {
			start := time.Now()
			_, err := client.Put(writeCtx, key(n%objects), value(n%objects, n))
			if err != nil && writeCtx.Err() == nil {
				writerDone <- err
				return
			}
			mu.Lock()
			if measuring {
				latencies = append(latencies, time.Since(start))
			}
			mu.Unlock()
		}
		writerDone <- nil
	}()
	window := func(run func()) []time.Duration {
		mu.Lock()
		latencies, measuring = nil, true
		mu.Unlock()
		run()
		mu.Lock()
		defer mu.Unlock()
		measuring = false
		return latencies
	}

	var during []time.Duration
	var saveTime time.Duration
	var size int64
	b.ResetTimer()
	for range b.N {
		during = append(during, window(func() {
			start := time.Now()
			info, err := Save(ctx, SaveOptions{Database: datastore.DatabasePath(dir), Dir: filepath.Join(dir, "snapshots"), Name: "bench"})
			if err != nil {
				b.Fatal(err)
			}
			saveTime += time.Since(start)
			size = info.Size
		})...)
	}
	b.StopTimer()
	without := window(func() { time.Sleep(saveTime) })
	stopWrites()
	if err := <-writerDone; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(size)/(1<<20), "snapshot-MiB")
	b.ReportMetric(ms(quantile(during, 0.5)), "write-p50-ms-during")
	b.ReportMetric(ms(quantile(during, 1)), "write-max-ms-during")
	b.ReportMetric(ms(quantile(without, 0.5)), "write-p50-ms-without")
	b.ReportMetric(ms(quantile(without, 1)), "write-max-ms-without")
	b.ReportMetric(float64(len(during))/saveTime.Seconds(), "writes/s-during")
}

func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

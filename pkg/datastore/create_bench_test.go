package datastore

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/harikube/harikube/pkg/index"
)

// BenchmarkCreate measures creates through the etcd API from 16 concurrent
// clients, as the apiserver issues them, with the index and with Kine's
// stock driver: the datastore's share of what indexing costs a write.
func BenchmarkCreate(b *testing.B) {
	forEachDriver(b, func(b *testing.B, e *env) {
		payload := strings.Repeat("x", 1024)
		var next atomic.Int64
		b.ResetTimer()
		g, ctx := errgroup.WithContext(context.Background())
		for range 16 {
			g.Go(func() error {
				for {
					i := next.Add(1)
					if i > int64(b.N) {
						return nil
					}
					key := fmt.Sprintf("%sns/w%07d", prefix, i)
					value := object(fmt.Sprintf("w%07d", i), map[string]string{"id": fmt.Sprint(i), "permille": fmt.Sprint(i % 1000), "decile": fmt.Sprint(i % 10), "app": "bench"}, payload)
					txn, err := e.client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", 0)).Then(clientv3.OpPut(key, value)).Commit()
					if err != nil {
						return err
					}
					if !txn.Succeeded {
						return fmt.Errorf("create %s: not created", key)
					}
				}
			})
		}
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
	})
}

// forEachDriver runs bench against a fresh datastore with the index (widgets
// registered with the field spec.color) and one with Kine's stock driver.
func forEachDriver(b *testing.B, bench func(b *testing.B, e *env)) {
	for _, mode := range []struct {
		name      string
		unindexed bool
	}{{"indexed", false}, {"stock", true}} {
		b.Run(mode.name, func(b *testing.B) {
			registry := index.NewRegistry()
			registry.Register(widgets("spec.color"))
			bench(b, startWith(b, Options{DataDir: b.TempDir(), Registry: registry, Unindexed: mode.unindexed}))
		})
	}
}

package datastore

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
)

// BenchmarkUpdate measures updates through the etcd API from 16 concurrent
// clients, each on keys of its own, with the index (which also marks the
// revision each update supersedes) and with Kine's stock driver.
func BenchmarkUpdate(b *testing.B) {
	const clients, keysPerClient = 16, 64
	forEachDriver(b, func(b *testing.B, e *env) {
		payload := strings.Repeat("x", 1024)
		value := func(i int, phase string) string {
			return object(fmt.Sprintf("w%05d", i), map[string]string{"id": fmt.Sprint(i), "phase": phase, "decile": fmt.Sprint(i % 10), "app": "bench"}, payload)
		}
		ctx := context.Background()
		revs := make([]int64, clients*keysPerClient)
		for i := range revs {
			resp, err := e.client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(benchKey(i)), "=", 0)).Then(clientv3.OpPut(benchKey(i), value(i, "pending"))).Commit()
			if err != nil || !resp.Succeeded {
				b.Fatalf("create %d: %v", i, err)
			}
			revs[i] = resp.Header.Revision
		}
		var next atomic.Int64
		b.ResetTimer()
		g, ctx := errgroup.WithContext(ctx)
		for c := range clients {
			g.Go(func() error {
				for k := 0; ; k++ {
					if next.Add(1) > int64(b.N) {
						return nil
					}
					i := c*keysPerClient + k%keysPerClient
					key := benchKey(i)
					txn, err := e.client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", revs[i])).Then(clientv3.OpPut(key, value(i, fmt.Sprint("phase-", k%3)))).Else(clientv3.OpGet(key)).Commit()
					if err != nil {
						return err
					}
					if !txn.Succeeded {
						return fmt.Errorf("update %s: conflict", key)
					}
					revs[i] = txn.Header.Revision
				}
			})
		}
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
	})
}

func benchKey(i int) string { return fmt.Sprintf("%sns/u%05d", prefix, i) }

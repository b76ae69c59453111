package datastore

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestRecreateAnswersItsRevision: creating a key whose newest row is a
// deletion answers the revision the new row got, while other keys are being
// written (kine v0.17.5 answered the current revision).
func TestRecreateAnswersItsRevision(t *testing.T) {
	forEachStore(t, func(t *testing.T, s store) {
		e := start(t, s, nil)
		ctx := context.Background()
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { // other writes move the current revision
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				put(t, e.client, fmt.Sprintf("%sother-%d", prefix, i%10), object("other", nil, ""))
			}
		}()
		defer func() { close(stop); wg.Wait() }()
		key := prefix + "recreated"
		for i := 0; i < 100; i++ {
			resp, err := e.client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", 0)).Then(clientv3.OpPut(key, object("recreated", nil, ""))).Commit()
			if err != nil || !resp.Succeeded {
				t.Fatalf("create %d: %v (succeeded %v)", i, err, resp != nil && resp.Succeeded)
			}
			got, err := e.client.Get(ctx, key)
			if err != nil || len(got.Kvs) != 1 {
				t.Fatalf("get after create %d: %v", i, err)
			}
			if rev := got.Kvs[0].ModRevision; rev != resp.Header.Revision {
				t.Fatalf("create %d: answered revision %d, stored at %d", i, resp.Header.Revision, rev)
			}
			del(t, e.client, key)
		}
	})
}

// TestHugeSelectionIsNotAnError: a selection with more values than the
// database takes as bind parameters is answered unfiltered (the apiserver
// filters), not with "too many SQL variables".
func TestHugeSelectionIsNotAnError(t *testing.T) {
	forEachStore(t, func(t *testing.T, s store) {
		e := start(t, s, nil)
		// Three-character values keep the encoded selection under
		// selection.MaxEncodedSize, so it does reach SQL.
		short := func(i int) string { return fmt.Sprintf("%03s", strconv.FormatInt(int64(i), 36)) }
		put(t, e.client, prefix+"first", object("first", map[string]string{"app": short(0)}, ""))
		put(t, e.client, prefix+"last", object("last", map[string]string{"app": short(39999)}, ""))
		vals := make([]string, 40000)
		for i := range vals {
			vals[i] = short(i)
		}
		keys, _ := list(t, e.client, selected(t, "app in ("+strings.Join(vals, ",")+")", ""))
		if !slices.Contains(keys, prefix+"first") || !slices.Contains(keys, prefix+"last") {
			t.Fatalf("huge selection: %v, want at least first and last", keys)
		}
	})
}

// TestProgressNeverGoesBack: a watch progress notification never carries a
// revision older than an event the watch already received. kine's cached
// current revision can lag behind committed (and sent) revisions when
// concurrent writes race to update it; the apiserver's watch cache takes
// a progress notification's revision as its own, and then served lists
// whose resourceVersion was older than objects in them.
func TestProgressNeverGoesBack(t *testing.T) {
	forEachStore(t, func(t *testing.T, s store) {
		e := start(t, s, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		// Progress requests go to the watch stream of the same context.
		ctx = clientv3.WithRequireLeader(ctx)
		wc := e.client.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithProgressNotify())
		// Bursts of concurrent writes, each followed by a quiet moment in
		// which progress is requested.
		var maxEvent int64
		progress, events := 0, 0
		for round := 0; round < 25 && !t.Failed(); round++ {
			var wg sync.WaitGroup
			for w := 0; w < 8; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					for i := 0; i < 5; i++ {
						put(t, e.client, fmt.Sprintf("%sw%d-%d", prefix, w, i), object("x", nil, ""))
					}
				}(w)
			}
			wg.Wait()
			_ = e.client.RequestProgress(ctx)
			quiet := time.After(200 * time.Millisecond)
		drain:
			for {
				select {
				case <-quiet:
					break drain
				case <-time.After(50 * time.Millisecond):
					_ = e.client.RequestProgress(ctx)
				case resp, ok := <-wc:
					if !ok {
						t.Fatalf("watch ended: %v", ctx.Err())
					}
					if resp.IsProgressNotify() {
						progress++
						if resp.Header.Revision < maxEvent {
							t.Errorf("round %d: progress notification at revision %d after an event at %d", round, resp.Header.Revision, maxEvent)
						}
						continue
					}
					for _, ev := range resp.Events {
						events++
						maxEvent = max(maxEvent, ev.Kv.ModRevision)
					}
				}
			}
		}
		t.Logf("%d events, %d progress notifications", events, progress)
	})
}

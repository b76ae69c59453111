package pushdown

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestWatchSeesEveryRevisionUnderConcurrentWrites starts watches from
// revisions in the middle of a stream of concurrent writes and checks that
// each receives every write at or after its start revision. On PostgreSQL
// revisions come from a sequence at insert, so concurrent transactions can
// commit N after N+1; a watch that starts in between must still receive N
// (Kine starts its stream after the largest committed revision). Found by
// TestStorageConformance's WatchSemantics suites on PostgreSQL.
func TestWatchSeesEveryRevisionUnderConcurrentWrites(t *testing.T) {
	for store, endpoint := range datastores {
		t.Run(store, func(t *testing.T) { testWatchUnderConcurrentWrites(t, newFixture(t, endpoint(t)())) })
	}
}

func testWatchUnderConcurrentWrites(t *testing.T, f *fixture) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const writers, writesEach, watches, writesAfter = 8, 150, 30, 5

	// Writers keep going until every watch has started and then write a few
	// more each, so every watch starts during the writes however fast they are.
	allStarted := make(chan struct{})
	var mu sync.Mutex
	written := map[int64]string{} // revision → key
	var latest int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			after := 0
			for n := 0; n < writesEach || after < writesAfter; n++ {
				select {
				case <-allStarted:
					after++
				default:
				}
				key := fmt.Sprintf("/pods/ns/w%d-%d", w, n)
				resp, err := f.client.KV.Put(ctx, key, "x")
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				written[resp.Header.Revision] = key
				latest = max(latest, resp.Header.Revision)
				mu.Unlock()
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	type watcher struct {
		from int64
		got  map[int64]bool
		w    clientv3.WatchChan
	}
	var started []*watcher
	for range watches {
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
		mu.Lock()
		from := latest + 1
		mu.Unlock()
		started = append(started, &watcher{from: from, got: map[int64]bool{}, w: f.client.Watch(ctx, "/pods/", clientv3.WithPrefix(), clientv3.WithRev(from))})
	}
	close(allStarted)
	<-done
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	mu.Lock()
	end := latest
	mu.Unlock()
	for i, wt := range started {
		if wt.from > end {
			t.Fatalf("watch %d from revision %d started after the last write (%d)", i, wt.from, end)
		}
		deadline := time.After(10 * time.Second)
		for last := int64(0); last < end; {
			select {
			case resp := <-wt.w:
				if err := resp.Err(); err != nil {
					t.Fatalf("watch %d: %v", i, err)
				}
				for _, e := range resp.Events {
					wt.got[e.Kv.ModRevision] = true
					last = max(last, e.Kv.ModRevision)
				}
			case <-deadline:
				t.Fatalf("watch %d from revision %d: no event up to revision %d within 10 s (last %d)", i, wt.from, end, last)
			}
		}
		var missed []string
		for rev := wt.from; rev <= end; rev++ {
			if key, ok := written[rev]; ok && !wt.got[rev] {
				missed = append(missed, fmt.Sprintf("%s@%d", key, rev))
			}
		}
		if len(missed) > 0 {
			t.Errorf("watch %d from revision %d missed %d writes: %v", i, wt.from, len(missed), missed)
		}
	}
}

package datastore

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/k3s-io/kine/pkg/logstructured"
	"github.com/k3s-io/kine/pkg/server"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/harikube/harikube/pkg/index"
	"github.com/harikube/harikube/pkg/selection"
)

// backend adds what kine's Backend interface leaves to the caller: watches
// that carry a selection only receive events whose new or previous value may
// match, and filtered reads are counted in metrics.
type backend struct {
	server.Backend
	log       logstructured.Log // the log beneath Backend, for Create
	committed *atomic.Int64     // the highest revision committed (dialect.committed)
	idx       *indexer
	cache     *entryCache
	metrics   *metrics
	pages     *pageCounts
}

// CurrentRevision is kine's current revision, but never below a revision
// already committed. kine caches the current revision and updates it with a
// compare-and-swap after each write, which loses when concurrent writes
// race: the cache then lags behind revisions already committed and sent to
// watchers. kine answers progress requests with it, and the apiserver's
// watch cache takes a progress notification's revision as its own: it went
// back, and consistent LISTs from the cache carried a resourceVersion older
// than objects in them (found by tests/reliability's crash test). kine only
// notifies progress once every watch has been sent the revision, so a
// revision ahead of the watches is held back, never sent early.
func (b *backend) CurrentRevision(ctx context.Context) (int64, error) {
	rev, err := b.Backend.CurrentRevision(ctx)
	if err != nil {
		return rev, err
	}
	return max(rev, b.committed.Load()), nil
}

// Create is kine's logstructured Create (v0.17.5) with two faults fixed.
// Creating a key whose newest row is a deletion takes a second append, whose
// revision kine assigned to a shadowed variable: it answered the current
// revision instead, so the apiserver reported a resourceVersion the object
// does not have (an update with it failed with a conflict). And kine dropped
// the error of the first append: a create that failed in the database (a
// full disk) was answered as a success.
func (b *backend) Create(ctx context.Context, key string, value []byte, lease int64) (int64, error) {
	ctx = withGroupCommit(b.extract(ctx, key, value))
	event := &server.Event{
		Create: true,
		KV:     &server.KeyValue{Key: key, Value: value, Lease: lease},
		PrevKV: &server.KeyValue{},
	}
	rev, err := b.log.Append(ctx, event)
	switch {
	case err == nil && rev != 0:
		return rev, nil
	case err != nil && !errors.Is(err, server.ErrKeyExists):
		return 0, err
	}
	// The key has rows: create it again only if the newest is a deletion.
	batch, err := b.log.List(ctx, key, "", 1, 0, true, true)
	if err != nil {
		return 0, err
	}
	if len(batch.Events) == 0 || !batch.Events[0].Delete {
		return b.currentRevision(ctx, batch.CurrentRev), server.ErrKeyExists
	}
	event.PrevKV.ModRevision = batch.Events[0].KV.ModRevision
	rev, err = b.log.Append(ctx, event)
	switch {
	case err == nil && rev != 0:
		return rev, nil
	case err != nil && !errors.Is(err, server.ErrKeyExists):
		return 0, err
	}
	return b.currentRevision(ctx, 0), server.ErrKeyExists
}

// Update is kine's, with the value's index entry extracted before the write
// waits for the database, and its append grouped with others.
func (b *backend) Update(ctx context.Context, key string, value []byte, revision, lease int64) (int64, *server.KeyValue, bool, error) {
	return b.Backend.Update(withGroupCommit(b.extract(ctx, key, value)), key, value, revision, lease)
}

// Delete is kine's, with its append grouped with others.
func (b *backend) Delete(ctx context.Context, key string, revision int64) (int64, *server.KeyValue, bool, error) {
	return b.Backend.Delete(withGroupCommit(ctx), key, revision)
}

// extract computes the index entry of a value about to be written, outside
// the write gate: decoding (for a custom resource stored in another version,
// a conversion webhook) then delays this write only.
func (b *backend) extract(ctx context.Context, key string, value []byte) context.Context {
	return withExtracted(ctx, key, value, b.idx.registry.Extract(key, value))
}

// currentRevision is rev, or the log's current revision when rev is 0, as
// kine answers failed writes.
func (b *backend) currentRevision(ctx context.Context, rev int64) int64 {
	if rev != 0 {
		return rev
	}
	if current, err := b.log.CurrentRevision(ctx); err == nil {
		return current
	}
	return 0
}

func (b *backend) resourceName(key string) string {
	if res, ok := b.idx.registry.Lookup(key); ok && res.Name != "" {
		return res.Name
	}
	return "other"
}

func (b *backend) List(ctx context.Context, key, end string, limit, revision int64, keysOnly bool) (int64, []*server.KeyValue, error) {
	ctx, s, selected, _ := selection.WithDecoded(ctx)
	rev, kvs, err := b.Backend.List(ctx, key, end, limit, revision, keysOnly)
	if selected && err == nil {
		b.pages.noteList(s, key, end, limit, revision, rev, len(kvs))
		name := b.resourceName(key)
		b.metrics.requests.WithLabelValues(name, "list").Inc()
		b.metrics.rows.WithLabelValues(name).Add(float64(len(kvs)))
	}
	return rev, kvs, err
}

func (b *backend) ListStream(ctx context.Context, key, end string, limit, revision int64, keysOnly bool) server.ListResult {
	ctx, _, selected, _ := selection.WithDecoded(ctx)
	res := b.Backend.ListStream(ctx, key, end, limit, revision, keysOnly)
	if !selected || res.KVc == nil {
		return res
	}
	name := b.resourceName(key)
	b.metrics.requests.WithLabelValues(name, "list").Inc()
	counted := make(chan *server.KeyValue, 1)
	in := res.KVc
	go func() {
		defer close(counted)
		n := 0
		defer func() { b.metrics.rows.WithLabelValues(name).Add(float64(n)) }()
		for kv := range in {
			n++
			counted <- kv
		}
	}()
	res.KVc = counted
	return res
}

func (b *backend) Count(ctx context.Context, key, end string, revision int64) (int64, int64, error) {
	ctx, s, selected, _ := selection.WithDecoded(ctx)
	if rev, rows, ok := b.pages.count(s, key, end, revision); selected && ok {
		return rev, rows, nil
	}
	if selected {
		b.metrics.requests.WithLabelValues(b.resourceName(key), "count").Inc()
	}
	return b.Backend.Count(ctx, key, end, revision)
}

func (b *backend) Watch(ctx context.Context, revision int64) server.WatchResult {
	wr := b.Backend.Watch(ctx, revision)
	s, ok, _ := selection.FromIncomingContext(ctx)
	if !ok || wr.Eventc == nil {
		return wr
	}
	b.metrics.requests.WithLabelValues("any", "watch").Inc()
	ls := s.LabelSelector()
	in := wr.Eventc
	out := make(chan server.EventBatch, 100)
	go func() {
		defer close(out)
		for batch := range in {
			kept := batch.Events[:0:0]
			for _, e := range batch.Events {
				if b.eventMayMatch(s, ls, e) {
					kept = append(kept, e)
				} else {
					b.metrics.watchFiltered.Inc()
				}
			}
			batch.Events = kept
			select {
			case out <- batch:
			case <-ctx.Done():
				return
			}
		}
	}()
	wr.Eventc = out
	return wr
}

// eventMayMatch keeps an event when its new or its previous value may match,
// so the apiserver can still turn "stopped matching" into DELETED.
func (b *backend) eventMayMatch(s selection.Selection, ls labels.Selector, e *server.Event) bool {
	if !e.Delete && b.valueMayMatch(s, ls, e.KV) {
		return true
	}
	if e.Create {
		return false
	}
	if e.PrevKV == nil || e.PrevKV.Value == nil {
		// The previous value is unknown (compacted): it may have matched.
		return true
	}
	return b.valueMayMatch(s, ls, e.PrevKV)
}

func (b *backend) valueMayMatch(s selection.Selection, ls labels.Selector, kv *server.KeyValue) bool {
	if kv == nil {
		return true
	}
	var generation int64 // of the registration that extracts this key now
	if res, ok := b.idx.registry.Lookup(kv.Key); ok {
		generation = res.Generation
	}
	entry := b.cache.get(kv.ModRevision, generation, func() index.Entry { return b.idx.registry.Extract(kv.Key, kv.Value) })
	if !entry.Decoded {
		return true
	}
	if !ls.Matches(labels.Set(entry.Labels)) {
		return false
	}
	return s.MatchFields(entry.Fields, func(f string) bool { _, ok := entry.Fields[f]; return ok })
}

// entryCache shares decoded index entries between the watches that see the
// same event, keyed by revision (one value per revision).
type entryCache struct {
	mu      sync.Mutex
	entries map[int64]index.Entry
}

const entryCacheSize = 4096

func newEntryCache() *entryCache { return &entryCache{entries: map[int64]index.Entry{}} }

// get returns the entry of revision rev, extracting it again when the cached
// one was extracted by another registration than generation (the
// definition changed since: its values may no longer be the resource's).
func (c *entryCache) get(rev, generation int64, compute func() index.Entry) index.Entry {
	c.mu.Lock()
	e, ok := c.entries[rev]
	c.mu.Unlock()
	if ok && e.Generation == generation {
		return e
	}
	e = compute()
	c.mu.Lock()
	if len(c.entries) >= entryCacheSize {
		clear(c.entries)
	}
	c.entries[rev] = e
	c.mu.Unlock()
	return e
}

package datastore

import (
	"sync"

	"github.com/harikube/harikube/pkg/selection"
)

// pageCounts answers the Count kine adds to a page of a paged LIST with a
// selection, without counting the rest of the range.
//
// kine's Range (v0.17.5 server/list.go) lists limit+1 rows and, when it got
// them, replaces the response's Count with a Count of the whole range from
// the page's start key: a page of a large result paid for every match after
// it. The apiserver's GetList (k8s.io/apiserver v0.37.2 storage/etcd3
// store.go) reads that Count only as "more follow" (pagedChunks: hasMore is
// len(kvs) < Count) and as remainingItemCount for an empty predicate only
// (storage.PrepareContinueToken), never for a selection. The pushdown
// decorator marks the selections of GetList (selection.Selection.Page), and
// for those a Count is the number of rows the List just before it found
// (limit+1, so more than the page): a lower bound of the matches from the
// start key, not an exact count. A Count without the mark, or without a
// List found here (a CountOnly request, an entry dropped), counts exactly.
type pageCounts struct {
	mu sync.Mutex
	m  map[pageKey]pageCount
}

// pageKey identifies a read: the selection as sent, its range and the
// revision kine passes to Count (the List's requested revision, or the
// current revision it answered at).
type pageKey struct {
	selection  string
	key, end   string
	atRevision int64
}

type pageCount struct {
	rows, currentRev int64
}

// maxPageCounts bounds the entries kept; each is a fact about a revision,
// so dropping them all only costs the next Counts an exact count.
const maxPageCounts = 1024

func newPageCounts() *pageCounts { return &pageCounts{m: map[pageKey]pageCount{}} }

func keyOf(s selection.Selection, key, end string, revision int64) (pageKey, bool) {
	enc, err := s.Encode()
	return pageKey{selection: enc, key: key, end: end, atRevision: revision}, err == nil
}

// noteList records a List of a marked selection that found more rows than
// its page (rows == limit, kine's limit+1). revision is the one requested
// (0: current) and currentRev the revision the List answered at.
func (p *pageCounts) noteList(s selection.Selection, key, end string, limit, revision, currentRev int64, rows int) {
	if !s.Page || limit <= 0 || int64(rows) < limit {
		return
	}
	if revision == 0 {
		revision = currentRev
	}
	k, ok := keyOf(s, key, end, revision)
	if !ok {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.m) >= maxPageCounts {
		clear(p.m)
	}
	// Rows at a revision do not change: the larger of two pages is as true
	// as the smaller and exceeds both.
	if c, ok := p.m[k]; !ok || c.rows < int64(rows) {
		p.m[k] = pageCount{rows: int64(rows), currentRev: currentRev}
	}
}

// count answers a Count of a marked selection from the List before it.
func (p *pageCounts) count(s selection.Selection, key, end string, revision int64) (currentRev, rows int64, ok bool) {
	if !s.Page || revision == 0 {
		return 0, 0, false
	}
	k, ok := keyOf(s, key, end, revision)
	if !ok {
		return 0, 0, false
	}
	p.mu.Lock()
	c, ok := p.m[k]
	p.mu.Unlock()
	return c.currentRev, c.rows, ok
}

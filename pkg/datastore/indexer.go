package datastore

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/k3s-io/kine/pkg/query"
	"github.com/sirupsen/logrus"

	"github.com/harikube/harikube/pkg/index"
	"github.com/harikube/harikube/pkg/selectorsql"
)

// coverageTable records, per registered key prefix, the fields that every
// decoded row under the prefix carries in the index. Only those fields are
// filtered in SQL: a field added later (a CRD gaining a selectable field, a
// row written by a process that did not know the resource) must not make
// older rows disappear from results.
const coverageTable = "harikube_coverage"

// indexBatchRows bounds one multi-row INSERT so it stays under every
// database's bind-parameter limit.
const indexBatchRows = 500

type indexer struct {
	registry *index.Registry
	db       *sql.DB
	// gate admits the indexer's own writes (reindexing, coverage) among
	// the datastore's transactions.
	gate     writeGate
	param    string
	numbered bool

	mu       sync.RWMutex
	coverage map[string]map[string]bool
	prefixes []string // keys of coverage, longest first

	stmts sync.Map // rendered multi-row insert statements by row count
}

func newIndexer(registry *index.Registry, db *sql.DB, gate writeGate, param string, numbered bool) *indexer {
	if registry == nil {
		registry = index.NewRegistry()
	}
	return &indexer{registry: registry, db: db, gate: gate, param: param, numbered: numbered, coverage: map[string]map[string]bool{}}
}

func (ix *indexer) sql(q string) string { return query.New(q, ix.param, ix.numbered, "").Query }

// loadCoverage reads the persisted coverage into memory.
func (ix *indexer) loadCoverage(ctx context.Context) error {
	rows, err := ix.db.QueryContext(ctx, "SELECT prefix, fields FROM "+coverageTable)
	if err != nil {
		return fmt.Errorf("read field coverage: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var prefix, fieldList string
		if err := rows.Scan(&prefix, &fieldList); err != nil {
			return fmt.Errorf("read field coverage: %w", err)
		}
		ix.setCoverage(prefix, splitFields(fieldList))
	}
	return rows.Err()
}

func splitFields(s string) map[string]bool {
	out := map[string]bool{}
	for _, f := range strings.Split(s, "\n") {
		if f != "" {
			out[f] = true
		}
	}
	return out
}

func joinFields(m map[string]bool) string {
	fs := make([]string, 0, len(m))
	for f := range m {
		fs = append(fs, f)
	}
	sort.Strings(fs)
	return strings.Join(fs, "\n")
}

func (ix *indexer) setCoverage(prefix string, fields map[string]bool) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if _, ok := ix.coverage[prefix]; !ok {
		ix.prefixes = append(ix.prefixes, prefix)
		sort.Slice(ix.prefixes, func(i, j int) bool { return len(ix.prefixes[i]) > len(ix.prefixes[j]) })
	}
	ix.coverage[prefix] = fields
}

// coverageFor returns the coverage entry of the longest prefix of key.
func (ix *indexer) coverageFor(key string) (string, map[string]bool, bool) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	for _, p := range ix.prefixes {
		if strings.HasPrefix(key, p) {
			return p, ix.coverage[p], true
		}
	}
	return "", nil, false
}

// fieldIndexed answers, for a read starting at key, which fields SQL may
// filter on.
func (ix *indexer) fieldIndexed(key string) func(string) bool {
	_, covered, _ := ix.coverageFor(key)
	return func(field string) bool {
		if field == index.FieldName || field == index.FieldNamespace {
			return true
		}
		return covered[field]
	}
}

func (ix *indexer) storeCoverage(ctx context.Context, x execer, prefix string, fields map[string]bool) error {
	q := ix.sql("INSERT INTO " + coverageTable + " (prefix, fields) VALUES (?, ?) ON CONFLICT (prefix) DO UPDATE SET fields = excluded.fields")
	if _, err := x.ExecContext(ctx, q, prefix, joinFields(fields)); err != nil {
		return fmt.Errorf("record field coverage of %s: %w", prefix, err)
	}
	return nil
}

// commitCoverage records the coverage of prefix in a write of its own.
func (ix *indexer) commitCoverage(ctx context.Context, prefix string, fields map[string]bool) error {
	return ix.gate.do(ctx, func() error { return ix.storeCoverage(ctx, ix.db, prefix, fields) })
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// clean reports whether every string of the entry can be stored in any of
// the supported databases' TEXT columns (PostgreSQL rejects NUL and invalid
// UTF-8). An entry that cannot is kept as "not decoded" instead.
func clean(e index.Entry) bool {
	ok := func(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }
	for k, v := range e.Labels {
		if !ok(k) || !ok(v) {
			return false
		}
	}
	for k, v := range e.Fields {
		if !ok(k) || !ok(v) {
			return false
		}
	}
	return true
}

// write indexes the row id stored at key. Errors here are database errors
// (the same transaction is writing the row itself); anything about the value
// only turns the entry into "not decoded".
func (ix *indexer) write(ctx context.Context, x execer, id int64, key string, value []byte) error {
	entry := ix.registry.Extract(key, value)
	if entry.Decoded && !clean(entry) {
		entry = index.Entry{}
	}
	if entry.Decoded {
		if err := ix.keepCoverage(ctx, x, key, entry); err != nil {
			return err
		}
	}
	q := ix.sql("INSERT INTO " + selectorsql.RowsTable + " (id, decoded) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET decoded = excluded.decoded")
	if _, err := x.ExecContext(ctx, q, id, boolToInt(entry.Decoded)); err != nil {
		return fmt.Errorf("index row %d: %w", id, err)
	}
	if !entry.Decoded {
		return nil
	}
	args := make([]any, 0, 6*(len(entry.Labels)+len(entry.Fields)))
	for k, v := range entry.Labels {
		var num any
		if n, ok := selectorsql.IndexNumber(v); ok {
			num = n
		}
		args = append(args, id, selectorsql.KindLabel, k, selectorsql.IndexValue(v), num, key)
	}
	for k, v := range entry.Fields {
		args = append(args, id, selectorsql.KindField, k, selectorsql.IndexValue(v), nil, key)
	}
	for len(args) > 0 {
		n := min(len(args)/6, indexBatchRows)
		if _, err := x.ExecContext(ctx, ix.insertIndexSQL(n), args[:6*n]...); err != nil {
			return fmt.Errorf("index row %d: %w", id, err)
		}
		args = args[6*n:]
	}
	return nil
}

func (ix *indexer) insertIndexSQL(rows int) string {
	if q, ok := ix.stmts.Load(rows); ok {
		return q.(string)
	}
	q := ix.sql("INSERT INTO " + selectorsql.IndexTable + " (id, kind, name, value, num, key) VALUES " +
		strings.TrimSuffix(strings.Repeat("(?, ?, ?, ?, ?, ?), ", rows), ", ") +
		" ON CONFLICT (id, kind, name) DO UPDATE SET value = excluded.value, num = excluded.num, key = excluded.key")
	ix.stmts.Store(rows, q)
	return q
}

// keepCoverage narrows the recorded coverage of key's prefix when this entry
// lacks one of its fields, before the row becomes visible.
func (ix *indexer) keepCoverage(ctx context.Context, x execer, key string, entry index.Entry) error {
	prefix, covered, ok := ix.coverageFor(key)
	if !ok {
		return nil
	}
	narrowed := map[string]bool{}
	for f := range covered {
		if _, has := entry.Fields[f]; has {
			narrowed[f] = true
		}
	}
	if len(narrowed) == len(covered) {
		return nil
	}
	// Narrow memory first: if the transaction rolls back, memory is merely
	// more cautious than the table.
	ix.setCoverage(prefix, narrowed)
	return ix.storeCoverage(ctx, x, prefix, narrowed)
}

// backfill indexes live rows that have no index entry: rows written before
// harikube managed this database, by stock kine. Until then they could be
// missed by index-driven reads.
func (ix *indexer) backfill(ctx context.Context) error {
	var last int64
	total := 0
	for {
		n, next, err := ix.backfillBatch(ctx, last)
		if err != nil {
			return err
		}
		total += n
		if n == 0 {
			break
		}
		last = next
	}
	if total > 0 {
		logrus.Infof("Indexed %d existing rows", total)
	}
	return nil
}

func (ix *indexer) backfillBatch(ctx context.Context, after int64) (int, int64, error) {
	q := ix.sql(fmt.Sprintf("SELECT kv.id, kv.name, kv.value FROM kine AS kv WHERE kv.id > ? AND kv.deleted = 0 AND NOT EXISTS (SELECT 1 FROM %s AS r WHERE r.id = kv.id) ORDER BY kv.id LIMIT %d", selectorsql.RowsTable, indexBatchRows))
	return ix.reindexRows(ctx, q, after)
}

// reindexRows rewrites the index of the rows q selects (id, name, value; q
// takes one argument, the id to continue after) in one transaction.
func (ix *indexer) reindexRows(ctx context.Context, q string, args ...any) (int, int64, error) {
	release, err := ix.gate.enter(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("begin reindex: %w", err)
	}
	defer release()
	x, err := ix.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, fmt.Errorf("begin reindex: %w", err)
	}
	defer x.Rollback() //nolint:errcheck // after Commit this is a no-op
	rows, err := x.QueryContext(ctx, q, args...)
	if err != nil {
		return 0, 0, fmt.Errorf("read rows to index: %w", err)
	}
	type kv struct {
		id    int64
		name  string
		value []byte
	}
	var batch []kv
	for rows.Next() {
		var r kv
		if err := rows.Scan(&r.id, &r.name, &r.value); err != nil {
			rows.Close()
			return 0, 0, fmt.Errorf("read rows to index: %w", err)
		}
		batch = append(batch, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, 0, fmt.Errorf("read rows to index: %w", err)
	}
	if len(batch) == 0 {
		return 0, 0, nil
	}
	del := ix.sql("DELETE FROM " + selectorsql.IndexTable + " WHERE id = ?")
	for _, r := range batch {
		if _, err := x.ExecContext(ctx, del, r.id); err != nil {
			return 0, 0, fmt.Errorf("reindex row %d: %w", r.id, err)
		}
		if err := ix.write(ctx, x, r.id, r.name, r.value); err != nil {
			return 0, 0, err
		}
	}
	if err := x.Commit(); err != nil {
		return 0, 0, fmt.Errorf("commit reindex: %w", err)
	}
	return len(batch), batch[len(batch)-1].id, nil
}

// prefixEnd is the first key after every key that starts with prefix.
func prefixEnd(prefix string) string {
	b := []byte(prefix)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return "\xff"
}

// register reconciles the recorded coverage of a newly registered resource
// with the fields its extractor yields, reindexing its rows when they were
// indexed with fewer fields.
func (ix *indexer) register(ctx context.Context, res index.Resource) {
	want := map[string]bool{}
	for _, f := range res.Fields {
		want[f] = true
	}
	ix.mu.RLock()
	have, exact := ix.coverage[res.Prefix]
	ix.mu.RUnlock()
	if exact && joinFields(have) == joinFields(want) {
		return
	}
	if !exact {
		var one int
		err := ix.db.QueryRowContext(ctx, ix.sql("SELECT 1 FROM kine WHERE name >= ? AND name < ? LIMIT 1"), res.Prefix, prefixEnd(res.Prefix)).Scan(&one)
		if err == sql.ErrNoRows {
			if err := ix.commitCoverage(ctx, res.Prefix, want); err != nil {
				logrus.Warnf("Field selectors on %s will not be pushed down: %v", res.Name, err)
				return
			}
			ix.setCoverage(res.Prefix, want)
			return
		}
		have = map[string]bool{}
	}
	narrowed := map[string]bool{}
	for f := range have {
		if want[f] {
			narrowed[f] = true
		}
	}
	ix.setCoverage(res.Prefix, narrowed)
	if err := ix.commitCoverage(ctx, res.Prefix, narrowed); err != nil {
		logrus.Warnf("Field selectors on %s will not be pushed down: %v", res.Name, err)
		return
	}
	go ix.reindexPrefix(ctx, res, want)
}

func (ix *indexer) reindexPrefix(ctx context.Context, res index.Resource, want map[string]bool) {
	q := ix.sql(fmt.Sprintf("SELECT id, name, value FROM kine WHERE name >= ? AND name < ? AND id > ? AND deleted = 0 ORDER BY id LIMIT %d", indexBatchRows))
	var last int64
	total := 0
	for {
		n, next, err := ix.reindexRows(ctx, q, res.Prefix, prefixEnd(res.Prefix), last)
		if err != nil {
			if ctx.Err() == nil {
				logrus.Warnf("Reindexing %s stopped; field selectors on it stay partly filtered in the apiserver: %v", res.Name, err)
			}
			return
		}
		if n == 0 {
			break
		}
		total += n
		last = next
	}
	if current, ok := ix.registry.Lookup(res.Prefix); !ok || current.Prefix != res.Prefix || strings.Join(current.Fields, "\n") != strings.Join(res.Fields, "\n") {
		return // a newer registration owns the coverage now
	}
	if err := ix.commitCoverage(ctx, res.Prefix, want); err != nil {
		logrus.Warnf("Field selectors on %s stay partly filtered in the apiserver: %v", res.Name, err)
		return
	}
	ix.setCoverage(res.Prefix, want)
	logrus.Infof("Indexed fields of %d %s rows", total, res.Name)
}

package datastore

import (
	"context"
	"database/sql"
	"errors"
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

// coverageTable records, per registered key prefix, the fields every row
// under it carries in the index, whether its labels can be trusted, and the
// definition (index.Resource.Definition) the values were extracted under. A
// registration whose definition or fields differ re-indexes the prefix; until
// it has, the prefix's fields (and, where a conversion webhook may change
// them, its labels) are not filtered in SQL, so no row is ever dropped.
const coverageTable = "harikube_coverage"

// coverageSchema creates the table; coverageColumns are the columns newer
// than the table, added to databases created by an older harikube.
const coverageSchema = "CREATE TABLE IF NOT EXISTS " + coverageTable + " (prefix TEXT PRIMARY KEY, fields TEXT NOT NULL)"

var coverageColumns = []struct{ name, decl string }{
	{"labels", "INTEGER NOT NULL DEFAULT 1"},
	{"converted", "INTEGER NOT NULL DEFAULT 0"},
	{"definition", "TEXT NOT NULL DEFAULT ''"},
}

// indexBatchRows bounds one multi-row INSERT so it stays under every
// database's bind-parameter limit, and one re-index transaction.
const indexBatchRows = 500

// coverage is what reads of one prefix may filter on in SQL, beyond
// metadata.name and metadata.namespace, which no definition changes.
type coverage struct {
	fields map[string]bool
	labels bool
}

// stored is a coverage row as persisted.
type stored struct {
	coverage
	converted  bool
	definition string
}

// prefixState is what the indexer knows about one registered prefix in this
// process.
type prefixState struct {
	cov coverage
	// generation is the registration whose extractions are accepted; an
	// entry extracted by another is written as not decoded.
	generation int64
	registered bool
	converted  bool // the accepted registration has LabelsConverted
}

type indexer struct {
	registry *index.Registry
	db       *sql.DB
	// gate admits the indexer's own writes (re-indexing, coverage) among
	// the datastore's transactions.
	gate      *writeGate
	param     string
	numbered  bool
	batchRows int

	// defs orders registrations against writes in flight: every
	// transaction holds it shared from begin to end, so once a registration
	// holds it, every row extracted by an earlier registration is committed
	// (and visible to the re-index) or will be written as not decoded.
	defs sync.RWMutex

	mu        sync.RWMutex
	state     map[string]*prefixState
	prefixes  []string // keys of state, longest first
	persisted map[string]stored

	stmts sync.Map // rendered multi-row insert statements by row count
}

func newIndexer(registry *index.Registry, db *sql.DB, gate *writeGate, param string, numbered bool) *indexer {
	if registry == nil {
		registry = index.NewRegistry()
	}
	return &indexer{registry: registry, db: db, gate: gate, param: param, numbered: numbered, batchRows: indexBatchRows,
		state: map[string]*prefixState{}, persisted: map[string]stored{}}
}

func (ix *indexer) sql(q string) string { return query.New(q, ix.param, ix.numbered, "").Query }

// migrateCoverage adds the columns an older coverage table lacks.
func migrateCoverage(ctx context.Context, db *sql.DB) error {
	for _, c := range coverageColumns {
		row, err := db.QueryContext(ctx, "SELECT "+c.name+" FROM "+coverageTable+" LIMIT 1")
		if err == nil {
			row.Close()
			continue
		}
		if _, err := db.ExecContext(ctx, "ALTER TABLE "+coverageTable+" ADD COLUMN "+c.name+" "+c.decl); err != nil {
			return fmt.Errorf("add column %s to %s: %w", c.name, coverageTable, err)
		}
	}
	return nil
}

// loadCoverage reads the persisted coverage. It is only compared with later
// registrations: until a registration confirms a prefix, reads filter
// nothing on it but labels, names and namespaces.
func (ix *indexer) loadCoverage(ctx context.Context) error {
	persisted, err := readCoverage(ctx, ix.db)
	if err != nil {
		return err
	}
	ix.persisted = persisted
	return nil
}

// readCoverage reads the coverage table.
func readCoverage(ctx context.Context, db querier) (map[string]stored, error) {
	rows, err := db.QueryContext(ctx, "SELECT prefix, fields, labels, converted, definition FROM "+coverageTable)
	if err != nil {
		return nil, fmt.Errorf("read index coverage: %w", err)
	}
	defer rows.Close()
	out := map[string]stored{}
	for rows.Next() {
		var prefix, fieldList, definition string
		var labels, converted int
		if err := rows.Scan(&prefix, &fieldList, &labels, &converted, &definition); err != nil {
			return nil, fmt.Errorf("read index coverage: %w", err)
		}
		out[prefix] = stored{coverage: coverage{fields: splitFields(fieldList), labels: labels != 0}, converted: converted != 0, definition: definition}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read index coverage: %w", err)
	}
	return out, nil
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

// stateOf returns the state of prefix, creating it; ix.mu must be held.
func (ix *indexer) stateOf(prefix string) *prefixState {
	st, ok := ix.state[prefix]
	if !ok {
		st = &prefixState{cov: coverage{labels: true}}
		if p, ok := ix.persisted[prefix]; ok {
			// Labels narrowed by a re-index that did not finish stay
			// narrowed until one does.
			st.cov.labels = p.labels
			st.converted = p.converted
		}
		ix.state[prefix] = st
		ix.prefixes = append(ix.prefixes, prefix)
		sort.Slice(ix.prefixes, func(i, j int) bool { return len(ix.prefixes[i]) > len(ix.prefixes[j]) })
	}
	return st
}

// coverageFor answers, for a read starting at key, which fields SQL may
// filter on and whether it may filter on labels.
func (ix *indexer) coverageFor(key string) (fieldIndexed func(string) bool, labels bool) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	var cov coverage
	labels = true
	for _, p := range ix.prefixes {
		if strings.HasPrefix(key, p) {
			cov = ix.state[p].cov
			labels = cov.labels
			break
		}
	}
	return func(field string) bool {
		if field == index.FieldName || field == index.FieldNamespace {
			return true
		}
		return cov.fields[field]
	}, labels
}

// accepted reports whether entry was extracted by the registration whose
// values the index takes for its prefix now.
func (ix *indexer) accepted(entry index.Entry) bool {
	if entry.Generation == 0 {
		return true // the generic decoder: no definition, nothing to go stale
	}
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	st, ok := ix.state[entry.Prefix]
	return ok && st.generation == entry.Generation
}

func (ix *indexer) storeCoverage(ctx context.Context, prefix string, s stored) error {
	q := ix.sql("INSERT INTO " + coverageTable + " (prefix, fields, labels, converted, definition) VALUES (?, ?, ?, ?, ?) " +
		"ON CONFLICT (prefix) DO UPDATE SET fields = excluded.fields, labels = excluded.labels, converted = excluded.converted, definition = excluded.definition")
	err := ix.gate.do(ctx, func() error {
		_, err := ix.db.ExecContext(ctx, q, prefix, joinFields(s.fields), boolToInt(s.labels), boolToInt(s.converted), s.definition)
		return err
	})
	if err != nil {
		return fmt.Errorf("record index coverage of %s: %w", prefix, err)
	}
	ix.mu.Lock()
	ix.persisted[prefix] = s
	ix.mu.Unlock()
	return nil
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// clean reports whether every index row of the entry can be stored in any of
// the supported databases: PostgreSQL rejects NUL and invalid UTF-8 in TEXT
// columns and B-tree entries past a third of a page. An entry that cannot is
// kept as "not decoded" instead.
func clean(key string, e index.Entry) bool {
	ok := func(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }
	for _, set := range []map[string]string{e.Labels, e.Fields} {
		for k, v := range set {
			if !ok(k) || !ok(v) || !selectorsql.RowFits(k, v, key) {
				return false
			}
		}
	}
	return true
}

// writeEntry indexes the row id stored at key with entry. Errors here are
// database errors (the same transaction writes the row itself); anything
// about the value only turns the entry into "not decoded".
func (ix *indexer) writeEntry(ctx context.Context, x execer, id int64, key string, entry index.Entry) error {
	if entry.Decoded && !clean(key, entry) {
		entry = index.Entry{}
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

// backfill indexes live rows that have no index entry: rows written before
// harikube managed this database, by stock kine. It runs before the
// datastore serves, so no write can commit behind it.
func (ix *indexer) backfill(ctx context.Context) error {
	unindexed := fmt.Sprintf("FROM kine AS kv WHERE kv.id > ? AND kv.deleted = 0 AND NOT EXISTS (SELECT 1 FROM %s AS r WHERE r.id = kv.id)", selectorsql.RowsTable)
	if err := ix.distrustBackfilled(ctx, ix.sql("SELECT DISTINCT kv.name "+unindexed)); err != nil {
		return err
	}
	q := ix.sql(fmt.Sprintf("SELECT kv.id, kv.name, kv.value %s ORDER BY kv.id LIMIT %d", unindexed, ix.batchRows))
	total, err := ix.reindexRows(ctx, q, nil, nil, ix.registry.Extract)
	if total > 0 {
		logrus.Infof("Indexed %d existing rows", total)
	}
	return err
}

// distrustBackfilled withdraws the recorded definition of every prefix
// that has rows to backfill: the backfill runs before the apiserver
// registers extractors, so it indexes metadata only, and a registration
// must not trust the prefix's other fields until it has re-indexed them.
// The coverage changes first, so a crash between the two cannot leave
// metadata-only rows under a trusted definition.
func (ix *indexer) distrustBackfilled(ctx context.Context, keys string) error {
	rows, err := ix.db.QueryContext(ctx, keys, 0)
	if err != nil {
		return fmt.Errorf("find rows to index: %w", err)
	}
	distrust := map[string]bool{}
	for rows.Next() {
		var key string
		if err := rows.Scan(&key); err != nil {
			rows.Close()
			return fmt.Errorf("find rows to index: %w", err)
		}
		for prefix, s := range ix.persisted {
			if s.definition != "" && strings.HasPrefix(key, prefix) {
				distrust[prefix] = true
			}
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("find rows to index: %w", err)
	}
	for prefix := range distrust {
		s := ix.persisted[prefix]
		s.definition = ""
		if err := ix.storeCoverage(ctx, prefix, s); err != nil {
			return err
		}
	}
	return nil
}

type storedRow struct {
	id    int64
	name  string
	value []byte
}

// errSuperseded stops a re-index whose registration a newer one replaced.
var errSuperseded = errors.New("superseded by a newer registration")

// reindexRows rewrites, batch by batch, the index of the rows q selects (id,
// name and value; q takes args and then the id to continue after). Values
// are extracted outside the write gate, which may take as long as a
// conversion webhook does; each batch is then written in a transaction of
// its own, unless still (when set) says the extraction no longer counts.
func (ix *indexer) reindexRows(ctx context.Context, q string, args []any, still func() bool, extract func(key string, value []byte) index.Entry) (int, error) {
	var last int64
	total := 0
	for {
		batch, err := ix.readRows(ctx, q, append(append([]any{}, args...), last)...)
		if err != nil || len(batch) == 0 {
			return total, err
		}
		entries := make([]index.Entry, len(batch))
		for i, r := range batch {
			entries[i] = extract(r.name, r.value)
		}
		if err := ix.writeBatch(ctx, batch, entries, still); err != nil {
			return total, err
		}
		total += len(batch)
		last = batch[len(batch)-1].id
	}
}

func (ix *indexer) readRows(ctx context.Context, q string, args ...any) ([]storedRow, error) {
	rows, err := ix.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("read rows to index: %w", err)
	}
	defer rows.Close()
	var batch []storedRow
	for rows.Next() {
		var r storedRow
		if err := rows.Scan(&r.id, &r.name, &r.value); err != nil {
			return nil, fmt.Errorf("read rows to index: %w", err)
		}
		batch = append(batch, r)
	}
	return batch, rows.Err()
}

// writeBatch replaces the index entries of the rows of batch that still
// exist (compaction may have removed some since they were read).
func (ix *indexer) writeBatch(ctx context.Context, batch []storedRow, entries []index.Entry, still func() bool) error {
	return ix.gate.do(ctx, func() error {
		ix.defs.RLock()
		defer ix.defs.RUnlock()
		if still != nil && !still() {
			return errSuperseded
		}
		x, err := ix.db.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("begin reindex: %w", err)
		}
		defer x.Rollback() //nolint:errcheck // after Commit this is a no-op
		ids := make([]any, len(batch))
		for i, r := range batch {
			ids[i] = r.id
		}
		live := map[int64]bool{}
		rows, err := x.QueryContext(ctx, ix.sql("SELECT id FROM kine WHERE id IN ("+strings.TrimSuffix(strings.Repeat("?, ", len(ids)), ", ")+")"), ids...)
		if err != nil {
			return fmt.Errorf("reindex: %w", err)
		}
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return fmt.Errorf("reindex: %w", err)
			}
			live[id] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("reindex: %w", err)
		}
		del := ix.sql("DELETE FROM " + selectorsql.IndexTable + " WHERE id = ?")
		for i, r := range batch {
			if !live[r.id] {
				continue
			}
			if _, err := x.ExecContext(ctx, del, r.id); err != nil {
				return fmt.Errorf("reindex row %d: %w", r.id, err)
			}
			if err := ix.writeEntry(ctx, x, r.id, r.name, entries[i]); err != nil {
				return err
			}
		}
		// The rewritten rows lost their superseded marks; kine's rows
		// give them back.
		if _, err := x.ExecContext(ctx, ix.sql(selectorsql.MarkSupersededSQL), batch[0].id-1, batch[len(batch)-1].id); err != nil {
			return fmt.Errorf("reindex: mark superseded rows: %w", err)
		}
		if err := x.Commit(); err != nil {
			return fmt.Errorf("commit reindex: %w", err)
		}
		return nil
	})
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

func fieldSet(res index.Resource) map[string]bool {
	want := map[string]bool{}
	for _, f := range res.Fields {
		if f != index.FieldName && f != index.FieldNamespace {
			want[f] = true
		}
	}
	return want
}

// register makes res the registration whose values the index holds for its
// prefix. Values extracted under the same definition and fields (persisted
// by an earlier run) are kept; otherwise the prefix's fields, and its labels
// where a conversion webhook is involved, stop being filtered in SQL at once
// and the prefix is re-indexed in the background.
func (ix *indexer) register(ctx context.Context, res index.Resource) {
	want := fieldSet(res)
	ix.defs.Lock()
	ix.mu.Lock()
	st := ix.stateOf(res.Prefix)
	repeat := st.registered && res.Mutable
	persisted, known := ix.persisted[res.Prefix]
	converted := res.LabelsConverted || st.converted || persisted.converted
	st.registered = true
	st.generation = res.Generation
	st.converted = res.LabelsConverted
	trusted := known && !repeat && res.Definition != "" && persisted.definition == res.Definition &&
		persisted.labels && joinFields(persisted.fields) == joinFields(want)
	if trusted {
		st.cov = coverage{fields: want, labels: true}
		ix.mu.Unlock()
		ix.defs.Unlock()
		return
	}
	ix.mu.Unlock()
	// Every write that extracted under an earlier registration has
	// committed (it held defs), so a prefix found empty stays consistent.
	var one int
	err := ix.db.QueryRowContext(ctx, ix.sql("SELECT 1 FROM kine WHERE name >= ? AND name < ? LIMIT 1"), res.Prefix, prefixEnd(res.Prefix)).Scan(&one)
	empty := errors.Is(err, sql.ErrNoRows)
	ix.mu.Lock()
	if empty {
		st.cov = coverage{fields: want, labels: true}
	} else {
		st.cov = coverage{fields: map[string]bool{}, labels: st.cov.labels && !converted}
	}
	cov := st.cov
	ix.mu.Unlock()
	ix.defs.Unlock()

	if empty {
		if err := ix.storeCoverage(ctx, res.Prefix, stored{coverage: cov, converted: res.LabelsConverted, definition: res.Definition}); err != nil {
			logrus.Warnf("Index coverage of %s not recorded; it is re-indexed at the next start: %v", res.Name, err)
		}
		return
	}
	if err := ix.storeCoverage(ctx, res.Prefix, stored{coverage: cov, converted: converted}); err != nil {
		logrus.Warnf("Index coverage of %s not recorded: %v", res.Name, err)
	}
	go ix.reindexPrefix(ctx, res, want)
}

// current reports whether res is still the registration the index takes
// values from for its prefix.
func (ix *indexer) current(res index.Resource) bool {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	st, ok := ix.state[res.Prefix]
	return ok && st.generation == res.Generation
}

// reindexPrefix re-extracts every stored row under res.Prefix with res, then
// the rows written meanwhile as not decoded (extracted by the registration
// before res), and only then lets reads filter on the prefix's fields again.
func (ix *indexer) reindexPrefix(ctx context.Context, res index.Resource, want map[string]bool) {
	still := func() bool { return ix.current(res) }
	start, end := res.Prefix, prefixEnd(res.Prefix)
	all := ix.sql(fmt.Sprintf("SELECT id, name, value FROM kine WHERE name >= ? AND name < ? AND deleted = 0 AND id > ? ORDER BY id LIMIT %d", ix.batchRows))
	undecoded := ix.sql(fmt.Sprintf("SELECT kv.id, kv.name, kv.value FROM %s AS r CROSS JOIN kine AS kv WHERE kv.id = r.id AND r.decoded = 0 AND kv.name >= ? AND kv.name < ? AND kv.deleted = 0 AND r.id > ? ORDER BY r.id LIMIT %d", selectorsql.RowsTable, ix.batchRows))
	total := 0
	for _, q := range []string{all, undecoded} {
		n, err := ix.reindexRows(ctx, q, []any{start, end}, still, func(_ string, value []byte) index.Entry { return res.Entry(value) })
		total += n
		if errors.Is(err, errSuperseded) {
			return
		}
		if err != nil {
			if ctx.Err() == nil {
				logrus.Warnf("Re-indexing %s stopped; its selectors stay partly filtered in the apiserver until the next start: %v", res.Name, err)
			}
			return
		}
	}
	ix.defs.Lock()
	ok := ix.current(res)
	if ok {
		ix.mu.Lock()
		ix.state[res.Prefix].cov = coverage{fields: want, labels: true}
		ix.mu.Unlock()
	}
	ix.defs.Unlock()
	if !ok {
		return
	}
	if err := ix.storeCoverage(ctx, res.Prefix, stored{coverage: coverage{fields: want, labels: true}, converted: res.LabelsConverted, definition: res.Definition}); err != nil {
		logrus.Warnf("Index coverage of %s not recorded; it is re-indexed at the next start: %v", res.Name, err)
	}
	logrus.Infof("Re-indexed %d %s rows", total, res.Name)
}

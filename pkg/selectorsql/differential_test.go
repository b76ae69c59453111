package selectorsql

import (
	"database/sql"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	sel "k8s.io/apimachinery/pkg/selection"
	_ "modernc.org/sqlite"

	"github.com/harikube/harikube/pkg/selection"
)

// The differential test runs rendered queries against a real SQLite database
// filled the way the datastore fills it and compares every answer with the
// upstream selectors evaluated in Go on the same objects.
//
// Reproduce a failure with the seed it logs:
//
//	go test ./pkg/selectorsql/ -run TestDifferential -args -selectorsql.seed=N
//
// or HARIKUBE_SELECTORSQL_SEED=N. -selectorsql.cases (or
// HARIKUBE_SELECTORSQL_CASES) changes the number of random cases.
var (
	seedFlag  = flag.Int64("selectorsql.seed", 0, "seed of the differential test (0: HARIKUBE_SELECTORSQL_SEED or the clock)")
	casesFlag = flag.Int("selectorsql.cases", 0, "random cases of the differential test (0: HARIKUBE_SELECTORSQL_CASES or 10000)")
)

func testSeed(t *testing.T) int64 {
	if *seedFlag != 0 {
		return *seedFlag
	}
	if v := os.Getenv("HARIKUBE_SELECTORSQL_SEED"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("HARIKUBE_SELECTORSQL_SEED: %v", err)
		}
		return n
	}
	return time.Now().UnixNano()
}

func testCases(t *testing.T) int {
	if *casesFlag > 0 {
		return *casesFlag
	}
	if v := os.Getenv("HARIKUBE_SELECTORSQL_CASES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("HARIKUBE_SELECTORSQL_CASES=%q: want a positive number", v)
		}
		return n
	}
	if testing.Short() {
		return 1000
	}
	return 10000
}

// kineSchema is the table (and the indexes the queries lean on) that kine
// creates in SQLite.
var kineSchema = []string{
	`CREATE TABLE IF NOT EXISTS kine (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		name TEXT,
		created INTEGER,
		deleted INTEGER,
		create_revision INTEGER,
		prev_revision INTEGER,
		lease INTEGER,
		value BLOB,
		old_value BLOB)`,
	`CREATE INDEX IF NOT EXISTS kine_name_index ON kine (name)`,
	`CREATE INDEX IF NOT EXISTS kine_name_id_index ON kine (name, id)`,
	`CREATE INDEX IF NOT EXISTS kine_id_deleted_index ON kine (id, deleted)`,
	`CREATE INDEX IF NOT EXISTS kine_prev_revision_index ON kine (prev_revision)`,
	`CREATE UNIQUE INDEX IF NOT EXISTS kine_name_prev_revision_uindex ON kine (name, prev_revision)`,
}

// openTestDB creates a database file under dir with kine's table and the
// index schema.
func openTestDB(tb testing.TB, dir string) *sql.DB {
	tb.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "kine.db")+"?_pragma=journal_mode(WAL)&_pragma=synchronous(OFF)")
	if err != nil {
		tb.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	tb.Cleanup(func() { db.Close() })
	for _, stmt := range append(append([]string{}, kineSchema...), SQLiteSchema()...) {
		if _, err := db.Exec(stmt); err != nil {
			tb.Fatalf("%s: %v", stmt, err)
		}
	}
	return db
}

// rowKind is what the index knows about a kine row.
type rowKind int

const (
	rowIndexed   rowKind = iota // harikube_rows decoded=1 and its labels and fields in harikube_index
	rowUndecoded                // harikube_rows decoded=0
	rowUnmarked                 // no harikube_rows entry (tombstones, rows written before the index)
)

func (k rowKind) String() string {
	return [...]string{"indexed", "undecoded", "unmarked"}[k]
}

// mrow is the model of one kine row.
type mrow struct {
	id        int64
	name      string
	deleted   bool
	created   bool
	createRev int64
	compacted bool
	kind      rowKind
	labels    map[string]string
	fields    map[string]string
	value     []byte
}

type execer interface {
	Exec(query string, args ...any) (sql.Result, error)
}

// store is a kine database together with the model of its rows.
type store struct {
	db      *sql.DB
	rows    []*mrow            // in id order
	byName  map[string][]*mrow // each name's rows in id order
	names   []string           // sorted
	compact int64
	maxID   int64
	// indexed fields: every decoded row carries them in the index.
	indexedFields map[string]bool
	// allRowsIndexed builds the data as production does, where every live
	// row has a harikube_rows entry, and queries with
	// Request.AllRowsIndexed (the datastore's promise) set.
	allRowsIndexed bool
	// unmarked, when set, decides which writes leave the row they supersede
	// unmarked, as rows written before superseded_by existed are.
	unmarked func() bool
}

func newStore(db *sql.DB, indexedFields ...string) *store {
	s := &store{db: db, byName: map[string][]*mrow{}, indexedFields: map[string]bool{}}
	for _, f := range indexedFields {
		s.indexedFields[f] = true
	}
	return s
}

func (s *store) fieldIndexed(f string) bool { return s.indexedFields[f] }

// cleanEntry mirrors the datastore's check that every string of an entry
// fits any supported database's TEXT column; an entry that does not is kept
// as "not decoded".
func cleanEntry(ls, fs map[string]string) bool {
	ok := func(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }
	for k, v := range ls {
		if !ok(k) || !ok(v) {
			return false
		}
	}
	for k, v := range fs {
		if !ok(k) || !ok(v) {
			return false
		}
	}
	return true
}

// indexWrite mirrors the datastore's indexer.write for one kine row: the
// harikube_rows mark, then one index row per label (with its number when
// the value parses) and per field.
func indexWrite(x execer, id int64, key string, decoded bool, ls, fs map[string]string) error {
	if _, err := x.Exec("INSERT INTO "+RowsTable+" (id, decoded) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET decoded = excluded.decoded", id, boolInt(decoded)); err != nil {
		return err
	}
	if !decoded {
		return nil
	}
	const ins = "INSERT INTO " + IndexTable + " (id, kind, name, value, num, key) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id, kind, name) DO UPDATE SET value = excluded.value, num = excluded.num, key = excluded.key"
	for k, v := range ls {
		var num any
		if n, ok := IndexNumber(v); ok {
			num = n
		}
		if _, err := x.Exec(ins, id, KindLabel, k, IndexValue(v), num, key); err != nil {
			return err
		}
	}
	for k, v := range fs {
		if _, err := x.Exec(ins, id, KindField, k, IndexValue(v), nil, key); err != nil {
			return err
		}
	}
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (s *store) latest(name string) *mrow {
	rs := s.byName[name]
	if len(rs) == 0 {
		return nil
	}
	return rs[len(rs)-1]
}

// put appends a kine row for name as kine does (create, update or tombstone)
// and indexes it as the datastore's transaction does: tombstones get no
// index entry, kind says how the value is indexed otherwise.
func (s *store) put(x execer, name string, deleted bool, kind rowKind, ls, fs map[string]string) (*mrow, error) {
	prev := s.latest(name)
	created := prev == nil || prev.deleted
	var prevRev, createRev int64
	if prev != nil {
		prevRev = prev.id
	}
	if !created {
		// kine stores 0 on the creating row and the creating row's id after.
		createRev = prev.createRev
		if prev.created {
			createRev = prev.id
		}
	}
	value := fmt.Appendf(nil, `{"key":%q,"n":%d}`, name, len(s.rows))
	res, err := x.Exec("INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value) VALUES (?, ?, ?, ?, ?, 0, ?, NULL)",
		name, boolInt(created), boolInt(deleted), createRev, prevRev, value)
	if err != nil {
		return nil, err
	}
	id, err := res.LastInsertId()
	if err != nil {
		return nil, err
	}
	if prev != nil && (s.unmarked == nil || !s.unmarked()) {
		// The datastore's insert marks the row it supersedes, tombstones
		// included.
		if _, err := x.Exec(SupersedeSQL, id, prev.id, name); err != nil {
			return nil, err
		}
	}
	if deleted {
		kind = rowUnmarked
	}
	if kind == rowIndexed && !cleanEntry(ls, fs) {
		kind = rowUndecoded
	}
	switch kind {
	case rowIndexed:
		err = indexWrite(x, id, name, true, ls, fs)
	case rowUndecoded:
		err = indexWrite(x, id, name, false, nil, nil)
	}
	if err != nil {
		return nil, err
	}
	r := &mrow{id: id, name: name, deleted: deleted, created: created, createRev: createRev, kind: kind, labels: ls, fields: fs, value: value}
	s.rows = append(s.rows, r)
	if _, ok := s.byName[name]; !ok {
		s.names = append(s.names, name)
		sort.Strings(s.names)
	}
	s.byName[name] = append(s.byName[name], r)
	s.maxID = max(s.maxID, id)
	return r, nil
}

// reindexSome rewrites the index entries of some indexed rows as the
// datastore's re-index does (their marks are lost with them) and marks them
// again from kine's rows.
func (s *store) reindexSome(rnd *rand.Rand) error {
	for _, r := range s.rows {
		if r.kind != rowIndexed || rnd.Intn(10) != 0 {
			continue
		}
		if _, err := s.db.Exec("DELETE FROM "+IndexTable+" WHERE id = ?", r.id); err != nil {
			return err
		}
		if err := indexWrite(s.db, r.id, r.name, true, r.labels, r.fields); err != nil {
			return err
		}
		if _, err := s.db.Exec(MarkSupersededSQL, r.id-1, r.id); err != nil {
			return err
		}
	}
	return nil
}

// addCompactKey inserts kine's bookkeeping row. Kine writes it through the
// datastore's transaction like any row, whose index marks its empty value
// undecoded; without the promise it stands for rows the index never saw.
func (s *store) addCompactKey(x execer) error {
	kind := rowUnmarked
	if s.allRowsIndexed {
		kind = rowUndecoded
	}
	_, err := s.put(x, "compact_rev_key", false, kind, nil, nil)
	return err
}

// checkPromise fails unless the database keeps the promise the store's
// mode makes: with allRowsIndexed, every live row has a harikube_rows entry.
func (s *store) checkPromise(tb testing.TB, q sqlQuerier) {
	tb.Helper()
	if !s.allRowsIndexed {
		return
	}
	var unmarked int64
	if err := q.QueryRow("SELECT COUNT(*) FROM kine WHERE deleted = 0 AND id NOT IN (SELECT id FROM " + RowsTable + ")").Scan(&unmarked); err != nil {
		tb.Fatal(err)
	}
	if unmarked != 0 {
		tb.Fatalf("test data breaks the AllRowsIndexed promise: %d live rows without a %s entry", unmarked, RowsTable)
	}
}

// compactAt deletes what kine's compaction deletes at revision c: rows
// superseded by a newer row of the same key at or before c, and tombstones at
// or before c. The delete trigger must take their index rows along.
func (s *store) compactAt(c int64) error {
	var ids []int64
	for _, rs := range s.byName {
		for i, r := range rs {
			if r.name == "compact_rev_key" || r.id > c {
				continue
			}
			if r.deleted || (i+1 < len(rs) && rs[i+1].id <= c) {
				r.compacted = true
				ids = append(ids, r.id)
			}
		}
	}
	for _, id := range ids {
		if _, err := s.db.Exec("DELETE FROM kine WHERE id = ?", id); err != nil {
			return err
		}
	}
	if _, err := s.db.Exec("UPDATE kine SET prev_revision = ? WHERE name = 'compact_rev_key'", c); err != nil {
		return err
	}
	s.compact = c
	return nil
}

// at returns the row of name visible at revision rev, or nil.
func (s *store) at(name string, rev int64) *mrow {
	var out *mrow
	for _, r := range s.byName[name] {
		if r.id <= rev {
			out = r
		}
	}
	if out != nil && out.compacted {
		return nil
	}
	return out
}

func inRange(name string, r Range) bool {
	switch {
	case r.Start == "":
		return true
	case r.End == "":
		return name == r.Start
	default:
		return name >= r.Start && name < r.End
	}
}

// gotRow is one row of a List result.
type gotRow struct {
	id      int64
	name    string
	deleted bool
	value   []byte
}

// runList executes a List and checks the shape of its result: the two
// revisions on every row, rows ordered by name without duplicates, and the
// single all-NULL row when nothing matched.
func runList(q sqlQuerier, req Request) (current, compact int64, out []gotRow, err error) {
	query := List(req)
	rows, err := q.Query(query.SQL, query.Args...)
	if err != nil {
		return 0, 0, nil, fmt.Errorf("list: %w\n%s", err, query.SQL)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return 0, 0, nil, err
	}
	want := 10
	if req.KeysOnly {
		want = 9
	}
	if len(cols) != want {
		return 0, 0, nil, fmt.Errorf("list returned %d columns %v, want %d", len(cols), cols, want)
	}
	nulls := 0
	first := true
	for rows.Next() {
		var cur, comp, id, created, deleted, createRev, prevRev, lease sql.NullInt64
		var name sql.NullString
		var value []byte
		dest := []any{&cur, &comp, &id, &name, &created, &deleted, &createRev, &prevRev, &lease}
		if !req.KeysOnly {
			dest = append(dest, &value)
		}
		if err := rows.Scan(dest...); err != nil {
			return 0, 0, nil, err
		}
		if !cur.Valid {
			return 0, 0, nil, fmt.Errorf("row without current revision")
		}
		if first {
			current, compact = cur.Int64, comp.Int64
			first = false
		} else if current != cur.Int64 || compact != comp.Int64 {
			return 0, 0, nil, fmt.Errorf("revisions differ between rows")
		}
		if !id.Valid {
			if name.Valid || created.Valid || deleted.Valid || value != nil {
				return 0, 0, nil, fmt.Errorf("partly NULL row")
			}
			nulls++
			continue
		}
		if n := len(out); n > 0 && out[n-1].name >= name.String {
			return 0, 0, nil, fmt.Errorf("rows out of order or duplicated: %q then %q", out[n-1].name, name.String)
		}
		out = append(out, gotRow{id: id.Int64, name: name.String, deleted: deleted.Int64 != 0, value: value})
	}
	if err := rows.Err(); err != nil {
		return 0, 0, nil, err
	}
	if first {
		return 0, 0, nil, fmt.Errorf("list returned no row at all")
	}
	if (len(out) == 0) != (nulls == 1) || nulls > 1 {
		return 0, 0, nil, fmt.Errorf("%d rows and %d NULL rows", len(out), nulls)
	}
	return current, compact, out, nil
}

type sqlQuerier interface {
	Query(query string, args ...any) (*sql.Rows, error)
	QueryRow(query string, args ...any) *sql.Row
}

func runCount(q sqlQuerier, req Request) (current, compact, count int64, err error) {
	query := Count(req)
	var cur, comp sql.NullInt64
	if err := q.QueryRow(query.SQL, query.Args...).Scan(&cur, &comp, &count); err != nil {
		return 0, 0, 0, fmt.Errorf("count: %w\n%s", err, query.SQL)
	}
	return cur.Int64, comp.Int64, count, nil
}

// pushed reports whether Translate renders the requirement.
func pushed(r selection.Requirement, isField bool, indexed func(string) bool) bool {
	if isField {
		_, ok := fieldTerm(r, indexed)
		return ok
	}
	_, ok := labelTerm(r)
	return ok
}

// indexMatch is what the SQL computes for a decoded row: pushed requirements
// evaluated on the values as the index stores them (cut to MaxValueLen),
// the others ignored. It is a second, independent statement of the
// rendering's meaning, so the test can ask for exact results.
func indexMatch(s selection.Selection, indexed func(string) bool, ls, fs map[string]string) bool {
	in := func(stored string, vals []string) bool {
		for _, v := range vals {
			if IndexValue(stored) == IndexValue(v) {
				return true
			}
		}
		return false
	}
	for _, r := range s.Labels {
		if !pushed(r, false, indexed) {
			continue
		}
		v, has := ls[r.Key]
		var ok bool
		switch r.Operator {
		case sel.Equals, sel.DoubleEquals, sel.In:
			ok = has && in(v, r.Values)
		case sel.NotEquals, sel.NotIn:
			ok = !has || !in(v, r.Values)
		case sel.Exists:
			ok = has
		case sel.DoesNotExist:
			ok = !has
		case sel.GreaterThan, sel.LessThan:
			n, nok := IndexNumber(v)
			want, _ := IndexNumber(r.Values[0])
			ok = has && nok && (r.Operator == sel.GreaterThan && n > want || r.Operator == sel.LessThan && n < want)
		default:
			panic("pushed an unknown operator " + string(r.Operator))
		}
		if !ok {
			return false
		}
	}
	for _, r := range s.Fields {
		if !pushed(r, true, indexed) {
			continue
		}
		v := fs[r.Key]
		eq := IndexValue(v) == IndexValue(r.Values[0])
		if r.Operator == sel.NotEquals {
			eq = !eq
		}
		if !eq {
			return false
		}
	}
	return true
}

// exactSelection reports whether the SQL should agree with upstream exactly
// on decoded rows: every requirement pushed and no value long enough to be
// compared cut.
func exactSelection(s selection.Selection, indexed func(string) bool) bool {
	for _, r := range s.Labels {
		if !pushed(r, false, indexed) || anyLong(r.Values) {
			return false
		}
	}
	for _, r := range s.Fields {
		if !pushed(r, true, indexed) || anyLong(r.Values) {
			return false
		}
	}
	return true
}

// diffCase is one random request with its upstream predicate.
type diffCase struct {
	desc     string
	req      Request
	upstream func(ls labels.Set, fs fields.Set) bool
	// partial: the selection lacks some of upstream's requirements
	// (selection.FromSelectors leaves out what it cannot carry).
	partial bool
}

// partialSelection reports whether s carries fewer requirements than the
// upstream selectors it was made from.
func partialSelection(s selection.Selection, l labels.Selector, f fields.Selector) bool {
	lreqs, _ := l.Requirements()
	return len(s.Labels) != len(lreqs) || len(s.Fields) != len(f.Requirements())
}

// checkCase runs the case's List (without and with its limit) and Count and
// compares them with the model. It returns whether the result held rows the
// upstream predicate rejects.
func (s *store) checkCase(q sqlQuerier, c diffCase) (extra bool, err error) {
	req := c.req
	limit := req.Limit
	req.Limit = 0
	rev := req.Revision
	if rev == 0 {
		rev = s.maxID
	}
	current, compact, got, err := runList(q, req)
	if err != nil {
		return false, err
	}
	if current != s.maxID || compact != s.compact {
		return false, fmt.Errorf("revisions %d/%d, want %d/%d", current, compact, s.maxID, s.compact)
	}
	gotByName := map[string]gotRow{}
	for _, g := range got {
		gotByName[g.name] = g
	}
	indexed := req.FieldIndexed
	exact := !c.partial && exactSelection(req.Selection, indexed)
	seen := 0
	for _, name := range s.names {
		if !inRange(name, req.Range) {
			continue
		}
		r := s.at(name, rev)
		if r == nil || (r.deleted && !req.IncludeDeleted) {
			if g, ok := gotByName[name]; ok {
				return false, fmt.Errorf("returned %s (id %d), which is not visible at revision %d", name, g.id, rev)
			}
			continue
		}
		up := !r.deleted && c.upstream(labels.Set(r.labels), fields.Set(r.fields))
		must := up || r.kind != rowIndexed
		model := r.kind != rowIndexed || indexMatch(req.Selection, indexed, r.labels, r.fields)
		if up && !model {
			return false, fmt.Errorf("test model: index semantics reject upstream match %s %v %v", name, r.labels, r.fields)
		}
		g, ok := gotByName[name]
		if ok {
			seen++
			if g.id != r.id || g.deleted != r.deleted {
				return false, fmt.Errorf("%s: got id %d deleted=%v, want id %d deleted=%v", name, g.id, g.deleted, r.id, r.deleted)
			}
			if !req.KeysOnly && string(g.value) != string(r.value) {
				return false, fmt.Errorf("%s: got value %q, want %q", name, g.value, r.value)
			}
		}
		switch {
		case must && !ok:
			return false, fmt.Errorf("DROPPED %s (id %d, %s, labels %v, fields %v), which matches upstream or is not decoded", name, r.id, r.kind, r.labels, r.fields)
		case r.kind == rowIndexed && ok != model:
			return false, fmt.Errorf("%s (id %d, labels %v, fields %v): returned=%v, but the pushed requirements evaluate to %v", name, r.id, r.labels, r.fields, ok, model)
		case r.kind == rowIndexed && exact && ok != up:
			return false, fmt.Errorf("%s (id %d, labels %v, fields %v): returned=%v, upstream=%v, and every requirement was pushed", name, r.id, r.labels, r.fields, ok, up)
		}
		if ok && !up {
			extra = extra || r.kind == rowIndexed
		}
	}
	if seen != len(got) {
		return false, fmt.Errorf("returned %d rows, %d of them expected to be visible", len(got), seen)
	}

	if !req.IncludeDeleted {
		cur, comp, n, err := runCount(q, req)
		if err != nil {
			return false, err
		}
		if cur != s.maxID || comp != s.compact || n != int64(len(got)) {
			return false, fmt.Errorf("count %d (revisions %d/%d), list returned %d (revisions %d/%d)", n, cur, comp, len(got), s.maxID, s.compact)
		}
	}

	if limit > 0 {
		req.Limit = limit
		_, _, lim, err := runList(q, req)
		if err != nil {
			return false, err
		}
		want := got[:min(int(limit), len(got))]
		if len(lim) != len(want) {
			return false, fmt.Errorf("limit %d returned %d rows, want %d", limit, len(lim), len(want))
		}
		for i := range want {
			if lim[i].id != want[i].id || lim[i].name != want[i].name {
				return false, fmt.Errorf("limit %d: row %d is %s/%d, want %s/%d", limit, i, lim[i].name, lim[i].id, want[i].name, want[i].id)
			}
		}
	}
	return extra, nil
}

// The generator's alphabets.
var (
	diffNamespaces = []string{"ns1", "ns2", "ns10", "kube-system"}
	diffLabelKeys  = []string{"app", "tier", "n", "v", "x.io/k"}
	longA          = strings.Repeat("a", MaxValueLen) + "-first"
	longB          = strings.Repeat("a", MaxValueLen) + "-second"
	longC          = strings.Repeat("a", MaxValueLen)
	// stored label values: whatever objects carry, valid label or not.
	diffStoredLabelValues = []string{"0", "7", "12", "-3", "007", "abc", "", "web", "db", "+5", " 7", "1e3",
		"9223372036854775807", "9223372036854775808", "-9223372036854775808", "O'Brien", "50%_off", "é", longA, longB, longC}
	// label values a parsed selector may hold.
	diffSelectorLabelValues = []string{"0", "7", "12", "007", "abc", "web", "db", "100", "9223372036854775807"}
	diffIntValues           = []string{"0", "7", "12", "007", "100", "9223372036854775807"}
	diffColors              = []string{"red", "blue", "", "O'Brien", "50%_off", `a\b`, "é", "'; DROP TABLE kine; --", "a,b", "x=y", longA, longB, longC}
	diffPhases              = []string{"Running", "Pending", "", "Failed"}
	diffFieldKeys           = []string{"metadata.name", "metadata.namespace", "spec.color", "status.phase", "spec.size", "spec.other"}
)

func pick[T any](rnd *rand.Rand, xs []T) T { return xs[rnd.Intn(len(xs))] }

func (s *store) randomLabels(rnd *rand.Rand, prev map[string]string) map[string]string {
	ls := map[string]string{}
	if prev != nil && rnd.Intn(3) > 0 {
		for k, v := range prev {
			ls[k] = v
		}
		// change one or two labels
		for range 1 + rnd.Intn(2) {
			k := pick(rnd, diffLabelKeys)
			if rnd.Intn(4) == 0 {
				delete(ls, k)
			} else {
				ls[k] = pick(rnd, diffStoredLabelValues)
			}
		}
		return ls
	}
	for _, k := range diffLabelKeys {
		if rnd.Intn(2) == 0 {
			ls[k] = pick(rnd, diffStoredLabelValues)
		}
	}
	if rnd.Intn(40) == 0 {
		ls["app"] = "bad\xffutf8" // makes the entry undecodable
	}
	return ls
}

func randomFields(rnd *rand.Rand, key string) map[string]string {
	parts := strings.Split(key, "/")
	fs := map[string]string{
		"metadata.namespace": parts[len(parts)-2],
		"metadata.name":      parts[len(parts)-1],
		"spec.color":         pick(rnd, diffColors),
		"status.phase":       pick(rnd, diffPhases),
	}
	if rnd.Intn(2) == 0 {
		fs["spec.size"] = strconv.Itoa(rnd.Intn(3))
	}
	if rnd.Intn(50) == 0 {
		fs["spec.color"] = "nul\x00inside" // makes the entry undecodable
	}
	return fs
}

// randomKind is how a live row is indexed. Rows without an index entry
// exist only without the AllRowsIndexed promise.
func (s *store) randomKind(rnd *rand.Rand) rowKind {
	switch n := rnd.Intn(100); {
	case n < 8:
		return rowUndecoded
	case n < 14 && !s.allRowsIndexed:
		return rowUnmarked
	default:
		return rowIndexed
	}
}

// populate fills the database with random objects under two resources,
// updates, deletes and re-creations, then compacts part of the history.
func (s *store) populate(t *testing.T, rnd *rand.Rand, keysPerResource int) {
	x, err := s.db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.addCompactKey(x); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, res := range []string{"widgets", "gadgets"} {
		n := keysPerResource
		if res == "gadgets" {
			n /= 4
		}
		for i := range n {
			name := fmt.Sprintf("w%d", i)
			switch rnd.Intn(12) {
			case 0:
				name += "'q"
			case 1:
				name += "%_"
			}
			keys = append(keys, "/registry/"+res+"/"+pick(rnd, diffNamespaces)+"/"+name)
		}
	}
	keys = slices.Compact(slices.Sorted(slices.Values(keys)))
	for _, k := range keys {
		if _, err := s.put(x, k, false, s.randomKind(rnd), s.randomLabels(rnd, nil), randomFields(rnd, k)); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 * len(keys) {
		k := pick(rnd, keys)
		prev := s.latest(k)
		switch {
		case prev.deleted:
			_, err = s.put(x, k, false, s.randomKind(rnd), s.randomLabels(rnd, nil), randomFields(rnd, k))
		case rnd.Intn(8) == 0:
			_, err = s.put(x, k, true, rowUnmarked, prev.labels, prev.fields)
		default:
			_, err = s.put(x, k, false, s.randomKind(rnd), s.randomLabels(rnd, prev.labels), randomFields(rnd, k))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := x.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := s.reindexSome(rnd); err != nil {
		t.Fatal(err)
	}
	if err := s.compactAt(s.maxID * 3 / 10); err != nil {
		t.Fatal(err)
	}
	// A migration that stopped part-way: marks from kine's rows for one
	// stretch of revisions, the rest stays as written.
	from := rnd.Int63n(s.maxID + 1)
	if _, err := s.db.Exec(MarkSupersededSQL, from, from+rnd.Int63n(s.maxID-from+1)); err != nil {
		t.Fatal(err)
	}
	var orphans int64
	if err := s.db.QueryRow("SELECT (SELECT COUNT(*) FROM " + IndexTable + " WHERE id NOT IN (SELECT id FROM kine)) + (SELECT COUNT(*) FROM " + RowsTable + " WHERE id NOT IN (SELECT id FROM kine))").Scan(&orphans); err != nil {
		t.Fatal(err)
	}
	if orphans != 0 {
		t.Fatalf("%d index rows outlived their kine rows after compaction", orphans)
	}
}

// randomLabelSelector writes 0 to 4 requirements in selector syntax.
func randomLabelSelector(rnd *rand.Rand) string {
	var parts []string
	for range rnd.Intn(5) {
		k := pick(rnd, diffLabelKeys)
		v := pick(rnd, diffSelectorLabelValues)
		switch rnd.Intn(10) {
		case 0:
			parts = append(parts, k+"="+v)
		case 1:
			parts = append(parts, k+"=="+v)
		case 2:
			parts = append(parts, k+"!="+v)
		case 3:
			vs := []string{v}
			for range rnd.Intn(3) {
				vs = append(vs, pick(rnd, diffSelectorLabelValues))
			}
			parts = append(parts, k+" in ("+strings.Join(vs, ",")+")")
		case 4:
			vs := []string{v}
			for range rnd.Intn(3) {
				vs = append(vs, pick(rnd, diffSelectorLabelValues))
			}
			parts = append(parts, k+" notin ("+strings.Join(vs, ", ")+")")
		case 5:
			parts = append(parts, k)
		case 6:
			parts = append(parts, "!"+k)
		case 7:
			parts = append(parts, k+">"+pick(rnd, diffIntValues))
		case 8:
			parts = append(parts, k+"<"+pick(rnd, diffIntValues))
		case 9:
			parts = append(parts, k+"=") // empty value
		}
	}
	return strings.Join(parts, ",")
}

func randomFieldValue(rnd *rand.Rand, field string, s *store) string {
	switch field {
	case "metadata.name":
		if n := pick(rnd, s.names); strings.Count(n, "/") > 3 {
			return n[strings.LastIndex(n, "/")+1:]
		}
		return "w1"
	case "metadata.namespace":
		return pick(rnd, append(diffNamespaces, "", "nope"))
	case "spec.color":
		return pick(rnd, append(diffColors, "nul\x00inside", longA+"x", "bad\xffutf8"))
	case "status.phase":
		return pick(rnd, diffPhases)
	default:
		return pick(rnd, []string{"", "0", "1", "2"})
	}
}

func randomFieldSelector(rnd *rand.Rand, s *store) string {
	var parts []string
	for range rnd.Intn(4) {
		f := pick(rnd, diffFieldKeys)
		op := pick(rnd, []string{"=", "==", "!="})
		parts = append(parts, f+op+fields.EscapeValue(randomFieldValue(rnd, f, s)))
	}
	return strings.Join(parts, ",")
}

// randomRawSelection builds requirements directly, as a decoded wire
// selection may hold them, without upstream validation: any operator with
// any number of values, values no selector parser accepts.
func randomRawSelection(rnd *rand.Rand, s *store) (selection.Selection, func(labels.Set, fields.Set) bool, string) {
	var out selection.Selection
	var lreqs []*labels.Requirement
	ops := []sel.Operator{sel.Equals, sel.DoubleEquals, sel.NotEquals, sel.In, sel.NotIn, sel.Exists, sel.DoesNotExist, sel.GreaterThan, sel.LessThan, "~"}
	for range rnd.Intn(5) {
		k := pick(rnd, diffLabelKeys)
		op := pick(rnd, ops)
		var vs []string
		n := 1
		switch rnd.Intn(6) {
		case 0:
			n = 0
		case 1:
			n = 2
		case 2:
			n = 3
		}
		if op == sel.Exists || op == sel.DoesNotExist {
			n = rnd.Intn(2)
		}
		for range n {
			vs = append(vs, pick(rnd, append(diffStoredLabelValues, "-5", "+7", "x\x00y")))
		}
		r, _ := labels.NewRequirement(k, op, vs) // kept even when upstream would reject it
		lreqs = append(lreqs, r)
		out.Labels = append(out.Labels, selection.Requirement{Key: k, Operator: op, Values: vs})
	}
	type fieldReq struct {
		key string
		op  sel.Operator
		vs  []string
	}
	var freqs []fieldReq
	for range rnd.Intn(3) {
		f := pick(rnd, diffFieldKeys)
		op := pick(rnd, []sel.Operator{sel.Equals, sel.DoubleEquals, sel.NotEquals, sel.In})
		vs := []string{randomFieldValue(rnd, f, s)}
		if rnd.Intn(8) == 0 {
			vs = append(vs, randomFieldValue(rnd, f, s))
		}
		if rnd.Intn(10) == 0 {
			vs = nil
		}
		freqs = append(freqs, fieldReq{f, op, vs})
		out.Fields = append(out.Fields, selection.Requirement{Key: f, Operator: op, Values: vs})
	}
	match := func(ls labels.Set, fs fields.Set) bool {
		for _, r := range lreqs {
			if !r.Matches(ls) {
				return false
			}
		}
		for _, r := range freqs {
			// Only one-value equality terms mean anything for fields;
			// other shapes restrict nothing.
			if len(r.vs) != 1 {
				continue
			}
			switch r.op {
			case sel.Equals, sel.DoubleEquals:
				if !fields.OneTermEqualSelector(r.key, r.vs[0]).Matches(fs) {
					return false
				}
			case sel.NotEquals:
				if !fields.OneTermNotEqualSelector(r.key, r.vs[0]).Matches(fs) {
					return false
				}
			}
		}
		return true
	}
	return out, match, fmt.Sprintf("raw labels %q fields %q", out.Labels, out.Fields)
}

func randomRange(rnd *rand.Rand, s *store) Range {
	switch rnd.Intn(8) {
	case 0, 1, 2:
		return Range{Start: "/registry/widgets/", End: "/registry/widgets0"}
	case 3:
		ns := pick(rnd, diffNamespaces)
		return Range{Start: "/registry/widgets/" + ns + "/", End: "/registry/widgets/" + ns + "0"}
	case 4:
		if rnd.Intn(5) == 0 {
			return Range{Start: "/registry/widgets/ns1/missing"}
		}
		return Range{Start: pick(rnd, s.names)}
	case 5:
		return Range{}
	case 6:
		a, b := pick(rnd, s.names), pick(rnd, s.names)
		if a > b {
			a, b = b, a
		}
		return Range{Start: a, End: b}
	default:
		return Range{Start: "/registry/", End: "/registry0"}
	}
}

// queryModes are the two values of Request.AllRowsIndexed: production's
// (true, the datastore's promise) and the one for databases whose rows may
// lack an index entry.
var queryModes = []bool{true, false}

func queryModeName(allRowsIndexed bool) string {
	return fmt.Sprintf("AllRowsIndexed=%v", allRowsIndexed)
}

// TestDifferential compares rendered queries on SQLite with upstream
// selectors evaluated on the same objects, over many random cases, in both
// query modes.
func TestDifferential(t *testing.T) {
	seed := testSeed(t)
	n := testCases(t)
	t.Logf("seed %d (rerun with -args -selectorsql.seed=%d or HARIKUBE_SELECTORSQL_SEED=%d)", seed, seed, seed)
	for _, allRowsIndexed := range queryModes {
		t.Run(queryModeName(allRowsIndexed), func(t *testing.T) { testDifferential(t, seed, n, allRowsIndexed) })
	}
}

func testDifferential(t *testing.T, seed int64, n int, allRowsIndexed bool) {
	rnd := rand.New(rand.NewSource(seed))
	s := newStore(openTestDB(t, t.TempDir()), "metadata.name", "metadata.namespace", "spec.color", "status.phase")
	s.allRowsIndexed = allRowsIndexed
	// A quarter of the supersessions go unmarked, as in a database from
	// before superseded_by that is still being migrated.
	s.unmarked = func() bool { return rnd.Intn(4) == 0 }
	s.populate(t, rnd, 40)
	s.checkPromise(t, s.db)
	kinds := map[rowKind]int{}
	for _, r := range s.rows {
		kinds[r.kind]++
	}
	t.Logf("%d kine rows (%d indexed, %d undecoded, %d unmarked), %d keys, compacted at %d of %d",
		len(s.rows), kinds[rowIndexed], kinds[rowUndecoded], kinds[rowUnmarked], len(s.names), s.compact, s.maxID)

	start := time.Now()
	var parsed, raw, withExtra, withDrive, nonEmpty int
	for i := range n {
		var c diffCase
		if rnd.Intn(5) == 0 {
			c.req.Selection, c.upstream, c.desc = randomRawSelection(rnd, s)
			raw++
		} else {
			ltext, ftext := randomLabelSelector(rnd), randomFieldSelector(rnd, s)
			lsel, err := labels.Parse(ltext)
			if err != nil {
				t.Fatalf("label selector %q: %v", ltext, err)
			}
			fsel, err := fields.ParseSelector(ftext)
			if err != nil {
				t.Fatalf("field selector %q: %v", ftext, err)
			}
			c.req.Selection = selection.FromSelectors(lsel, fsel)
			c.partial = partialSelection(c.req.Selection, lsel, fsel)
			c.upstream = func(ls labels.Set, fs fields.Set) bool { return lsel.Matches(ls) && fsel.Matches(fs) }
			c.desc = fmt.Sprintf("labels %q fields %q", ltext, ftext)
			parsed++
		}
		c.req.FieldIndexed = s.fieldIndexed
		c.req.Range = randomRange(rnd, s)
		if rnd.Intn(3) == 0 {
			c.req.Revision = s.compact + rnd.Int63n(s.maxID-s.compact+1)
		}
		if rnd.Intn(3) == 0 {
			c.req.Limit = 1 + rnd.Int63n(20)
		}
		c.req.KeysOnly = rnd.Intn(2) == 0
		c.req.IncludeDeleted = rnd.Intn(20) == 0
		// The promise covers live rows only: tombstones have no index entry.
		// Production never asks for them with a selection (kine reads
		// deleted rows only to create or delete a single key).
		c.req.AllRowsIndexed = allRowsIndexed && !c.req.IncludeDeleted
		if Translate(c.req.Selection, c.req.FieldIndexed, c.req.Range, c.req.AllRowsIndexed).Drive != "" {
			withDrive++
		}
		extra, err := s.checkCase(s.db, c)
		if err != nil {
			t.Fatalf("case %d (seed %d): %s, range %q, revision %d, limit %d, keysOnly %v, includeDeleted %v:\n%v",
				i, seed, c.desc, c.req.Range, c.req.Revision, c.req.Limit, c.req.KeysOnly, c.req.IncludeDeleted, err)
		}
		if extra {
			withExtra++
		}
		if !c.req.Selection.Empty() {
			nonEmpty++
		}
	}
	t.Logf("%d cases in %v: %d parsed selectors, %d raw selections, %d with a selection, %d index-driven, %d returned decoded rows upstream rejects",
		n, time.Since(start).Round(time.Millisecond), parsed, raw, nonEmpty, withDrive, withExtra)
}

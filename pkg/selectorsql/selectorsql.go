// Package selectorsql translates label and field selectors into SQL over
// harikube's index tables. It is pure: it renders text and arguments and
// never talks to a database, so it can be tested and fuzzed on its own.
//
// The contract every rendering keeps is the superset rule: a row whose object
// matches the selection upstream is never excluded. Whatever cannot be
// expressed exactly (an unindexed field, an operator with odd values, a value
// longer than the index keeps) is left out of the SQL, which widens the result;
// the apiserver applies the real predicate afterwards.
package selectorsql

import (
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/harikube/harikube/pkg/selection"
	sel "k8s.io/apimachinery/pkg/selection"
)

// Index schema shared with the datastore that writes it.
const (
	// RowsTable has one row per kine row: decoded=1 when its labels and
	// fields are in IndexTable, 0 when the value could not be decoded.
	RowsTable = "harikube_rows"
	// IndexTable has one row per label (kind 'l') and per field (kind 'f')
	// of every decoded kine row, keyed by the kine row id (its revision).
	IndexTable = "harikube_index"
	// SupersededColumn of an index row is the id of its key's next
	// revision, or NULL while the row is its key's newest or not yet
	// marked. A mark is never below the true next revision: a read may
	// visit a row it need not (a superset), never skip one it needs.
	SupersededColumn = "superseded_by"

	KindLabel = "l"
	KindField = "f"

	// MaxValueLen is how many bytes of a value the index keeps. Longer
	// values are stored cut to at most this length, so equality on them can
	// only be checked loosely.
	MaxValueLen = 256

	// minCutLen is the shortest a cut value can be: the cut moves back to
	// the start of the UTF-8 character at MaxValueLen, at most 3 bytes.
	minCutLen = MaxValueLen - utf8.UTFMax + 1
)

// IndexValue is what the index stores for value v: v itself, or, when it is
// longer than MaxValueLen, its prefix ending before the first character that
// does not fit, so a cut value stays valid UTF-8 (PostgreSQL refuses text
// that is not).
func IndexValue(v string) string {
	if len(v) <= MaxValueLen {
		return v
	}
	cut := MaxValueLen
	for cut > minCutLen && !utf8.RuneStart(v[cut]) {
		cut--
	}
	return v[:cut]
}

// MayBeCut reports whether a stored value equal to IndexValue(v) may come
// from a longer value than v: v is as long as a cut value can be. Only
// equality (a superset) can be asked of such values, never inequality.
func MayBeCut(v string) bool { return len(v) >= minCutLen }

// MaxRowBytes bounds the name, cut value and key of one index row together.
// PostgreSQL's B-tree refuses entries larger than 2704 bytes (a third of a
// page), which would fail the write; an object with a larger row is stored
// unindexed instead, a candidate for every selector.
const MaxRowBytes = 2600

// RowFits reports whether the index row of name=value for key stays within
// MaxRowBytes.
func RowFits(name, value, key string) bool {
	return len(name)+len(IndexValue(value))+len(key) <= MaxRowBytes
}

// IndexNumber is the integer the index stores next to a label value, with the
// parsing rule upstream uses for the gt and lt operators.
func IndexNumber(v string) (int64, bool) {
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil
}

// Range is the key range of a request: [Start, End). An empty Start means
// every key; an empty End means exactly the key Start.
type Range struct {
	Start, End string
}

// Request describes one LIST or COUNT.
type Request struct {
	Range          Range
	Revision       int64 // 0: the current revision
	Limit          int64 // 0: no limit
	IncludeDeleted bool
	KeysOnly       bool
	Selection      selection.Selection
	// FieldIndexed reports whether every decoded row in the range carries
	// the field in the index. Requirements on other fields are not pushed.
	FieldIndexed func(field string) bool
	// AllRowsIndexed promises that every live row has an index entry (the
	// datastore indexes each row in the transaction that writes it and
	// backfills older rows before it serves). Without the promise,
	// index-driven reads also scan the key range for rows lacking one,
	// which costs O(rows in range).
	AllRowsIndexed bool
}

// Query is rendered SQL with "?" placeholders and its arguments in order.
type Query struct {
	SQL  string
	Args []any
}

type builder struct {
	sql  strings.Builder
	args []any
}

func (b *builder) write(s string, args ...any) {
	b.sql.WriteString(s)
	b.args = append(b.args, args...)
}

// term is one requirement rendered as a boolean SQL expression on kv.id.
type term struct {
	sql  string
	args []any
	// drive, when set, selects the ids of index rows that satisfy the
	// requirement, so a lookup can start from the index instead of the
	// whole key range.
	drive     string
	driveArgs []any
	// walks, for = and in, select the index rows of one value each, as a
	// condition on i: in key order within (kind, name, value), so a page
	// can be read by walking them and stopping at the limit.
	walks    []string
	walkArgs [][]any
}

// valueWalks renders one walk condition per value of kind/name. Values
// stored alike (repeated, or cut to the same prefix) walk the same rows: the
// branches are merged with UNION, which drops the rows found twice.
func valueWalks(kind, name string, vs []string) (walks []string, args [][]any) {
	for _, v := range vs {
		walks = append(walks, "i.kind = ? AND i.name = ? AND i.value = ?")
		args = append(args, []any{kind, name, IndexValue(v)})
	}
	return walks, args
}

func valuesAny(vs []string) []any {
	out := make([]any, len(vs))
	for i, v := range vs {
		out[i] = IndexValue(v)
	}
	return out
}

func anyLong(vs []string) bool {
	for _, v := range vs {
		if MayBeCut(v) {
			return true
		}
	}
	return false
}

const (
	existsPrefix = "EXISTS (SELECT 1 FROM " + IndexTable + " AS i WHERE i.id = kv.id AND i.kind = ? AND i.name = ?"
	driveSelect  = "SELECT i.id AS id FROM " + IndexTable + " AS i WHERE "
	drivePrefix  = driveSelect + "i.kind = ? AND i.name = ?"
)

// labelTerm renders one label requirement with upstream semantics: = and in
// need the key present with one of the values; != and notin also match when
// the key is absent; gt and lt compare the value parsed as a base-10 int64.
func labelTerm(r selection.Requirement) (term, bool) {
	kindName := []any{KindLabel, r.Key}
	switch r.Operator {
	case sel.Equals, sel.DoubleEquals, sel.In:
		if len(r.Values) == 0 {
			return term{}, false
		}
		cond := " AND i.value IN (" + strings.TrimSuffix(strings.Repeat("?, ", len(r.Values)), ", ") + ")"
		args := append(append([]any{}, kindName...), valuesAny(r.Values)...)
		walks, walkArgs := valueWalks(KindLabel, r.Key, r.Values)
		return term{sql: existsPrefix + cond + ")", args: args, drive: drivePrefix + cond, driveArgs: args, walks: walks, walkArgs: walkArgs}, true
	case sel.NotEquals, sel.NotIn:
		// A stored cut value may equal a requested value (as long as a cut
		// value can be) without the object's value being equal: excluding it
		// could drop a match.
		if len(r.Values) == 0 || anyLong(r.Values) {
			return term{}, false
		}
		cond := " AND i.value IN (" + strings.TrimSuffix(strings.Repeat("?, ", len(r.Values)), ", ") + ")"
		return term{sql: "NOT " + existsPrefix + cond + ")", args: append(append([]any{}, kindName...), valuesAny(r.Values)...)}, true
	case sel.Exists:
		return term{sql: existsPrefix + ")", args: kindName, drive: drivePrefix, driveArgs: kindName}, true
	case sel.DoesNotExist:
		return term{sql: "NOT " + existsPrefix + ")", args: kindName}, true
	case sel.GreaterThan, sel.LessThan:
		if len(r.Values) != 1 {
			return term{}, false
		}
		n, ok := IndexNumber(r.Values[0])
		if !ok {
			return term{}, false
		}
		op := " > ?"
		if r.Operator == sel.LessThan {
			op = " < ?"
		}
		cond := " AND i.num" + op
		args := append(append([]any{}, kindName...), n)
		return term{sql: existsPrefix + cond + ")", args: args, drive: drivePrefix + cond, driveArgs: args}, true
	}
	return term{}, false
}

// fieldTerm renders one field requirement. Only fields every decoded row in
// the range carries are pushed; for those a missing value was stored as "",
// which is how upstream reads a missing field.
func fieldTerm(r selection.Requirement, indexed func(string) bool) (term, bool) {
	if len(r.Values) != 1 || indexed == nil || !indexed(r.Key) {
		return term{}, false
	}
	v := r.Values[0]
	kindNameValue := []any{KindField, r.Key, IndexValue(v)}
	cond := " AND i.value = ?"
	switch r.Operator {
	case sel.Equals, sel.DoubleEquals:
		walks, walkArgs := valueWalks(KindField, r.Key, r.Values)
		return term{sql: existsPrefix + cond + ")", args: kindNameValue, drive: drivePrefix + cond, driveArgs: kindNameValue, walks: walks, walkArgs: walkArgs}, true
	case sel.NotEquals:
		if MayBeCut(v) {
			return term{}, false
		}
		return term{sql: "NOT " + existsPrefix + cond + ")", args: kindNameValue}, true
	}
	return term{}, false
}

// Filter is a selection rendered for one key range.
type Filter struct {
	// Where is a boolean expression on the kine row alias kv, or "" when
	// nothing could be pushed.
	Where     string
	WhereArgs []any
	// Drive, when not "", selects candidate ids (column id) that include
	// every row that may match, so the caller can start from them.
	Drive     string
	DriveArgs []any
	// walks are the first = or in requirement's, one per value
	// (term.walks); walkAll is the set of its values as a condition on i,
	// for the rows superseded since an older revision (not in key order).
	walks       []string
	walkArgs    [][]any
	walkAll     string
	walkAllArgs []any
}

// Translate renders sel for rows in r at the current revision. It never
// fails: requirements it cannot render exactly are left out. allRowsIndexed
// is Request.AllRowsIndexed.
func Translate(s selection.Selection, fieldIndexed func(string) bool, r Range, allRowsIndexed bool) Filter {
	return translate(Request{Selection: s, FieldIndexed: fieldIndexed, Range: r, AllRowsIndexed: allRowsIndexed})
}

// translate renders the request's selection for its range and revision.
func translate(req Request) Filter {
	s, fieldIndexed, r, allRowsIndexed := req.Selection, req.FieldIndexed, req.Range, req.AllRowsIndexed
	var terms []term
	for _, requirement := range s.Labels {
		if t, ok := labelTerm(requirement); ok {
			terms = append(terms, t)
		}
	}
	for _, requirement := range s.Fields {
		if t, ok := fieldTerm(requirement, fieldIndexed); ok {
			terms = append(terms, t)
		}
	}
	if len(terms) == 0 {
		return Filter{}
	}

	var f Filter
	// Rows the index knows nothing certain about (value not decodable, or
	// no index entry at all) always stay candidates.
	where := []string{"NOT EXISTS (SELECT 1 FROM " + RowsTable + " AS r WHERE r.id = kv.id AND r.decoded = 1)"}
	var conj []string
	for _, t := range terms {
		conj = append(conj, t.sql)
		f.WhereArgs = append(f.WhereArgs, t.args...)
	}
	where = append(where, "("+strings.Join(conj, " AND ")+")")
	f.Where = "(" + strings.Join(where, " OR ") + ")"

	for _, t := range terms {
		if len(t.walks) == 0 {
			continue
		}
		f.walks, f.walkArgs = t.walks, t.walkArgs
		f.walkAll, f.walkAllArgs = strings.TrimPrefix(t.drive, driveSelect), t.driveArgs
		break
	}
	for _, t := range terms {
		if t.drive == "" {
			continue
		}
		// Rows without an index entry at all (written before the index
		// existed, kine's own rows) are candidates too, as in Where —
		// unless the caller promises there are none.
		unmarked := " UNION ALL SELECT u.id AS id FROM kine AS u WHERE NOT EXISTS (SELECT 1 FROM " + RowsTable + " AS r WHERE r.id = u.id)"
		keyRange := ""
		var rangeArgs []any
		switch {
		case r.Start == "":
		case r.End == "":
			keyRange = " AND i.key = ?"
			unmarked += " AND u.name = ?"
			rangeArgs = []any{r.Start}
		default:
			keyRange = " AND i.key >= ? AND i.key < ?"
			unmarked += " AND u.name >= ? AND u.name < ?"
			rangeArgs = []any{r.Start, r.End}
		}
		// A row is its key's newest at revision R when it is at or before
		// R and its key's next revision (if marked) comes after R: rows
		// still current, and at an older R those superseded since.
		// Unmarked rows count as current; the newest-row check in from
		// drops what they over-include.
		current := " AND i." + SupersededColumn + " IS NULL"
		var revArgs []any
		if req.Revision > 0 {
			current += " AND i.id <= ?"
			revArgs = []any{req.Revision}
		}
		f.Drive = t.drive + current + keyRange
		f.DriveArgs = append(append(append([]any{}, t.driveArgs...), revArgs...), rangeArgs...)
		if req.Revision > 0 {
			f.Drive += " UNION ALL " + t.drive + " AND i." + SupersededColumn + " > ? AND i.id <= ?" + keyRange
			f.DriveArgs = append(append(append(f.DriveArgs, t.driveArgs...), req.Revision, req.Revision), rangeArgs...)
		}
		f.Drive += " UNION ALL SELECT r.id AS id FROM " + RowsTable + " AS r WHERE r.decoded = 0"
		if !allRowsIndexed {
			f.Drive += unmarked
			f.DriveArgs = append(f.DriveArgs, rangeArgs...)
		}
		break
	}
	return f
}

// Columns kine's row scanner expects, in order, after current_rev and compact_rev.
const (
	columns    = "kv.id, kv.name, kv.created, kv.deleted, kv.create_revision, kv.prev_revision, kv.lease"
	nulls      = "NULL, NULL, NULL, NULL, NULL, NULL, NULL"
	currentRev = "(SELECT MAX(id) FROM kine)"
	compactRev = "(SELECT MAX(prev_revision) FROM kine WHERE name = 'compact_rev_key')"
)

// from renders the row source and the conditions every list and count share:
// the key range, the newest revision of each key at the requested revision,
// tombstones, and the filter.
func from(b *builder, req Request, f Filter) {
	if f.Drive != "" {
		// The candidates are the materialised CTE cand (see withCandidates);
		// CROSS JOIN makes SQLite start from them.
		b.write(" FROM cand CROSS JOIN kine AS kv WHERE kv.id = cand.id AND ")
	} else {
		b.write(" FROM kine AS kv WHERE ")
	}
	switch {
	case req.Range.Start == "":
		b.write("1 = 1")
	case req.Range.End == "":
		b.write("kv.name = ?", req.Range.Start)
	default:
		b.write("kv.name >= ? AND kv.name < ?", req.Range.Start, req.Range.End)
	}
	valid(b, req, f)
}

// valid renders the checks of a row kv found by its key: the newest row of
// its key at the requested revision, not a tombstone, and the filter.
func valid(b *builder, req Request, f Filter) {
	validNewest(b, req, f, false)
}

// validNewest is valid; with later, the newest-row check reads "no later
// row of the key at the revision", which PostgreSQL plans as an anti-join
// it expects most rows to pass: the equality with a MAX subquery is taken
// to keep 0.5 % of them, and a walk expected to find fewer rows than its
// limit is planned as a sort of every candidate instead.
func validNewest(b *builder, req Request, f Filter, later bool) {
	switch {
	case later && req.Revision > 0:
		b.write(" AND NOT EXISTS (SELECT 1 FROM kine AS k2 WHERE k2.name = kv.name AND k2.id > kv.id AND k2.id <= ?)", req.Revision)
	case later:
		b.write(" AND NOT EXISTS (SELECT 1 FROM kine AS k2 WHERE k2.name = kv.name AND k2.id > kv.id)")
	case req.Revision > 0:
		b.write(" AND kv.id = (SELECT MAX(k2.id) FROM kine AS k2 WHERE k2.name = kv.name AND k2.id <= ?)", req.Revision)
	default:
		b.write(" AND kv.id = (SELECT MAX(k2.id) FROM kine AS k2 WHERE k2.name = kv.name)")
	}
	b.write(" AND (kv.deleted = 0 OR ?)", req.IncludeDeleted)
	if f.Where != "" {
		b.write(" AND "+f.Where, f.WhereArgs...)
	}
}

// List renders a LIST in the shape kine's row scanner reads: current and
// compact revision, then the row columns (and value unless KeysOnly), with a
// single all-NULL row when nothing matches so the revisions still arrive.
func List(req Request) Query {
	f := translate(req)
	cols, nullCols := columns, nulls
	if !req.KeysOnly {
		cols += ", kv.value"
		nullCols += ", NULL"
	}
	limit := ""
	if req.Limit > 0 {
		limit = " LIMIT " + strconv.FormatInt(req.Limit, 10)
	}
	var b builder
	b.write("WITH ")
	walk := walked(req, f)
	if f.Drive != "" && !walk {
		withCandidates(&b, f)
		b.write(", ")
	}
	b.write("ckv AS (SELECT " + currentRev + " AS current_rev, " + compactRev + " AS compact_rev), ")
	switch {
	case walk:
		// A page walks the index rows of each value in key order from its
		// start key, checks each candidate on the way and stops at the
		// limit: it costs the page and the candidates it rejects, not the
		// matches after it. The branches are merged by key and cut again.
		b.write("chosen AS (SELECT id FROM (")
		walkBranches(&b, req, f, limit)
		b.write(") AS m ORDER BY name ASC" + limit + "), ")
		b.write("mkv AS (SELECT " + cols + " FROM chosen CROSS JOIN kine AS kv WHERE kv.id = chosen.id")
	case f.Drive != "":
		// Matches are found from the candidates first and only then sorted
		// and limited: with ORDER BY and LIMIT on the join itself,
		// PostgreSQL may prefer walking the whole key range in key order
		// (which needs no sort and could stop early) over the index. The
		// matches are ids and keys only; the rows of the page chosen are
		// read last, so a page of a large result reads its own values and
		// not those of every later match as well.
		b.write("sel AS MATERIALIZED (SELECT kv.id AS id, kv.name AS name")
		from(&b, req, f)
		b.write("), chosen AS (SELECT id FROM sel ORDER BY name ASC" + limit + "), ")
		b.write("mkv AS (SELECT " + cols + " FROM chosen CROSS JOIN kine AS kv WHERE kv.id = chosen.id")
	default:
		// Without candidates, walking the key range in order and stopping
		// at the limit is the plan wanted.
		b.write("mkv AS (SELECT " + cols)
		from(&b, req, f)
		b.write(" ORDER BY kv.name ASC" + limit)
	}
	b.write("), fkv AS (SELECT * FROM mkv UNION ALL SELECT " + nullCols + " WHERE NOT EXISTS (SELECT * FROM mkv)) ")
	b.write("SELECT * FROM ckv, fkv ORDER BY name ASC")
	return Query{SQL: b.sql.String(), Args: b.args}
}

// Count renders a COUNT over the same rows List would return without a
// limit; it selects current revision, compact revision and the count.
func Count(req Request) Query {
	f := translate(req)
	var b builder
	if f.Drive != "" {
		b.write("WITH ")
		withCandidates(&b, f)
		b.write(" ")
	}
	b.write("SELECT " + currentRev + ", " + compactRev + ", COUNT(*)")
	from(&b, req, f)
	return Query{SQL: b.sql.String(), Args: b.args}
}

// withCandidates renders the CTE cand of candidate ids, materialised so the
// planner computes it first instead of folding it into a scan of kine.
func withCandidates(b *builder, f Filter) {
	if f.Drive == "" {
		return
	}
	b.write("cand AS MATERIALIZED ("+f.Drive+")", f.DriveArgs...)
}

// maxWalkValues bounds the values of an in requirement walked one by one;
// with more, the page is cut from all candidates (the unlimited shape).
const maxWalkValues = 8

// maxWalkArgs bounds the bind parameters of a walk, which repeats the filter
// in each branch, well below SQLite's limit of 32,766.
const maxWalkArgs = 4000

// walked reports whether a LIST is answered by walking the index in key
// order: it has a limit, an = or in requirement of few values, and every
// row in the range has an index entry (rows without one could only be
// found by a scan of the range).
func walked(req Request, f Filter) bool {
	if req.Limit <= 0 || !req.AllRowsIndexed || len(f.walks) == 0 || len(f.walks) > maxWalkValues {
		return false
	}
	branches := len(f.walks) + 2
	return branches*(len(f.WhereArgs)+8) <= maxWalkArgs
}

// walkBranches renders the candidates of a page as branches of id and name,
// each in key order and cut at the limit after its rows were checked: the
// current index rows of each value, at an older revision the rows of any
// of the values superseded after it (found by revision, so sorted), and the
// undecoded rows, which match every selection.
func walkBranches(b *builder, req Request, f Filter, limit string) {
	var keyRange string
	var rangeArgs []any
	switch {
	case req.Range.Start == "":
	case req.Range.End == "":
		keyRange, rangeArgs = " AND i.key = ?", []any{req.Range.Start}
	default:
		keyRange, rangeArgs = " AND i.key >= ? AND i.key < ?", []any{req.Range.Start, req.Range.End}
	}
	branch := func(n int, cond string, args []any) {
		if n > 0 {
			b.write(" UNION ")
		}
		b.write("SELECT * FROM (SELECT kv.id AS id, kv.name AS name FROM "+IndexTable+" AS i CROSS JOIN kine AS kv WHERE "+cond, args...)
		b.write(keyRange, rangeArgs...)
		b.write(" AND kv.id = i.id")
		validNewest(b, req, f, true)
		b.write(" ORDER BY i.key ASC" + limit + ") AS w" + strconv.Itoa(n))
	}
	n := 0
	for i, w := range f.walks {
		cond, args := w+" AND i."+SupersededColumn+" IS NULL", f.walkArgs[i]
		if req.Revision > 0 {
			cond += " AND i.id <= ?"
			args = append(append([]any{}, args...), req.Revision)
		}
		branch(n, cond, args)
		n++
	}
	if req.Revision > 0 {
		branch(n, f.walkAll+" AND i."+SupersededColumn+" > ? AND i.id <= ?", append(append([]any{}, f.walkAllArgs...), req.Revision, req.Revision))
		n++
	}
	b.write(" UNION SELECT * FROM (SELECT kv.id AS id, kv.name AS name FROM " + RowsTable + " AS r CROSS JOIN kine AS kv WHERE r.decoded = 0 AND kv.id = r.id")
	switch {
	case req.Range.Start == "":
	case req.Range.End == "":
		b.write(" AND kv.name = ?", req.Range.Start)
	default:
		b.write(" AND kv.name >= ? AND kv.name < ?", req.Range.Start, req.Range.End)
	}
	valid(b, req, f)
	b.write(" ORDER BY kv.name ASC" + limit + ") AS u")
}

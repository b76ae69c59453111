package selectorsql

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	sel "k8s.io/apimachinery/pkg/selection"

	"github.com/harikube/harikube/pkg/selection"
)

func rq(key string, op sel.Operator, vals ...string) selection.Requirement {
	return selection.Requirement{Key: key, Operator: op, Values: vals}
}

func allFieldsIndexed(string) bool { return true }

func onlyFields(fs ...string) func(string) bool {
	return func(f string) bool { return slices.Contains(fs, f) }
}

var widgets = Range{Start: "/registry/widgets/", End: "/registry/widgets0"}

const (
	negatedIndex = "NOT EXISTS (SELECT 1 FROM " + IndexTable
	anyIndex     = "EXISTS (SELECT 1 FROM " + IndexTable
)

// checkRendering asserts what must hold for every rendering: one argument
// per placeholder in each part, only plain argument types, and SQL text that
// does not depend on the keys, values and range bounds themselves (any
// value, however hostile, travels only as an argument).
func checkRendering(tb testing.TB, req Request) {
	tb.Helper()
	f := Translate(req.Selection, req.FieldIndexed, req.Range, req.AllRowsIndexed)
	parts := map[string]Query{
		"where": {f.Where, f.WhereArgs},
		"drive": {f.Drive, f.DriveArgs},
		"list":  List(req),
		"count": Count(req),
	}
	for name, q := range parts {
		if n := strings.Count(q.SQL, "?"); n != len(q.Args) {
			tb.Fatalf("%s has %d placeholders and %d arguments:\n%s\n%#v", name, n, len(q.Args), q.SQL, q.Args)
		}
		for _, a := range q.Args {
			switch a.(type) {
			case string, int64, bool:
			default:
				tb.Fatalf("%s has an argument of type %T", name, a)
			}
		}
	}
	canon := canonical(req)
	for name, pair := range map[string][2]Query{
		"list":  {List(req), List(canon)},
		"count": {Count(req), Count(canon)},
	} {
		if pair[0].SQL != pair[1].SQL {
			tb.Fatalf("%s SQL depends on the strings of the request:\n%s\nwith every string replaced:\n%s", name, pair[0].SQL, pair[1].SQL)
		}
		if len(pair[0].Args) != len(pair[1].Args) {
			tb.Fatalf("%s: %d arguments, %d with every string replaced", name, len(pair[0].Args), len(pair[1].Args))
		}
	}
}

// canonicalValue keeps only what may decide how a value is rendered: whether
// it is long enough to be compared cut, and whether it is an integer.
func canonicalValue(v string) string {
	if MayBeCut(v) {
		return strings.Repeat("z", MaxValueLen)
	}
	if _, ok := IndexNumber(v); ok {
		return "1"
	}
	return "z"
}

// canonical replaces every key, value and range bound of req by a fixed
// string of the same rendering class.
func canonical(req Request) Request {
	out := req
	out.Selection = selection.Selection{}
	for _, r := range req.Selection.Labels {
		c := selection.Requirement{Key: "k", Operator: r.Operator}
		for _, v := range r.Values {
			c.Values = append(c.Values, canonicalValue(v))
		}
		out.Selection.Labels = append(out.Selection.Labels, c)
	}
	for _, r := range req.Selection.Fields {
		c := selection.Requirement{Key: "unindexed", Operator: r.Operator}
		if req.FieldIndexed != nil && req.FieldIndexed(r.Key) {
			c.Key = "indexed"
		}
		for _, v := range r.Values {
			c.Values = append(c.Values, canonicalValue(v))
		}
		out.Selection.Fields = append(out.Selection.Fields, c)
	}
	if req.FieldIndexed != nil {
		out.FieldIndexed = func(f string) bool { return f == "indexed" }
	}
	if out.Range.Start != "" {
		out.Range.Start = "s"
	}
	if out.Range.End != "" {
		out.Range.End = "e"
	}
	return out
}

func TestLabelOperators(t *testing.T) {
	for _, c := range []struct {
		r        selection.Requirement
		negated  bool   // rendered as NOT EXISTS
		fragment string // the comparison inside the subquery
		args     []any
	}{
		{rq("app", sel.Equals, "web"), false, "i.value IN (?)", []any{"l", "app", "web"}},
		{rq("app", sel.DoubleEquals, "web"), false, "i.value IN (?)", []any{"l", "app", "web"}},
		{rq("app", sel.NotEquals, "web"), true, "i.value IN (?)", []any{"l", "app", "web"}},
		{rq("app", sel.In, "web", "db", ""), false, "i.value IN (?, ?, ?)", []any{"l", "app", "web", "db", ""}},
		{rq("app", sel.NotIn, "web", "db"), true, "i.value IN (?, ?)", []any{"l", "app", "web", "db"}},
		{rq("app", sel.Exists), false, "i.name = ?)", []any{"l", "app"}},
		{rq("app", sel.DoesNotExist), true, "i.name = ?)", []any{"l", "app"}},
		{rq("n", sel.GreaterThan, "7"), false, "i.num > ?", []any{"l", "n", int64(7)}},
		{rq("n", sel.GreaterThan, "007"), false, "i.num > ?", []any{"l", "n", int64(7)}},
		{rq("n", sel.LessThan, "-3"), false, "i.num < ?", []any{"l", "n", int64(-3)}},
		{rq("n", sel.LessThan, "+12"), false, "i.num < ?", []any{"l", "n", int64(12)}},
		{rq("n", sel.GreaterThan, "9223372036854775807"), false, "i.num > ?", []any{"l", "n", int64(9223372036854775807)}},
	} {
		t.Run(fmt.Sprintf("%s %s %q", c.r.Key, c.r.Operator, c.r.Values), func(t *testing.T) {
			f := Translate(selection.Selection{Labels: []selection.Requirement{c.r}}, nil, widgets, false)
			if f.Where == "" {
				t.Fatal("not pushed")
			}
			if got := strings.Contains(f.Where, negatedIndex); got != c.negated {
				t.Fatalf("negated=%v, want %v: %s", got, c.negated, f.Where)
			}
			if !strings.Contains(f.Where, c.fragment) {
				t.Fatalf("no %q in %s", c.fragment, f.Where)
			}
			if !reflect.DeepEqual(f.WhereArgs, c.args) {
				t.Fatalf("args %#v, want %#v", f.WhereArgs, c.args)
			}
			// Requirements that can hold on a row without the label cannot
			// drive the read from the index.
			if (f.Drive == "") != c.negated {
				t.Fatalf("drive %q for negated=%v", f.Drive, c.negated)
			}
			if f.Drive != "" && !reflect.DeepEqual(f.DriveArgs[:len(c.args)], c.args) {
				t.Fatalf("drive args %#v, want them to start with %#v", f.DriveArgs, c.args)
			}
			// A decoded row is judged by the index; any other row stays.
			if !strings.HasPrefix(f.Where, "(NOT EXISTS (SELECT 1 FROM "+RowsTable+" AS r WHERE r.id = kv.id AND r.decoded = 1) OR (") {
				t.Fatalf("undecoded rows are not kept: %s", f.Where)
			}
			checkRendering(t, Request{Range: widgets, Selection: selection.Selection{Labels: []selection.Requirement{c.r}}})
		})
	}
}

func TestFieldOperators(t *testing.T) {
	for _, c := range []struct {
		r       selection.Requirement
		negated bool
	}{
		{rq("spec.color", sel.Equals, "red"), false},
		{rq("spec.color", sel.DoubleEquals, "red"), false},
		{rq("spec.color", sel.NotEquals, "red"), true},
		{rq("spec.color", sel.Equals, ""), false},
		{rq("spec.color", sel.NotEquals, ""), true},
	} {
		t.Run(fmt.Sprintf("%s %s %q", c.r.Key, c.r.Operator, c.r.Values), func(t *testing.T) {
			s := selection.Selection{Fields: []selection.Requirement{c.r}}
			f := Translate(s, allFieldsIndexed, widgets, false)
			if f.Where == "" {
				t.Fatal("not pushed")
			}
			if want := []any{"f", "spec.color", c.r.Values[0]}; !reflect.DeepEqual(f.WhereArgs, want) {
				t.Fatalf("args %#v, want %#v", f.WhereArgs, want)
			}
			if got := strings.Contains(f.Where, negatedIndex); got != c.negated {
				t.Fatalf("negated=%v, want %v: %s", got, c.negated, f.Where)
			}
			if !strings.Contains(f.Where, "i.value = ?") {
				t.Fatalf("no value comparison in %s", f.Where)
			}
			if (f.Drive == "") != c.negated {
				t.Fatalf("drive %q for negated=%v", f.Drive, c.negated)
			}
			checkRendering(t, Request{Range: widgets, Selection: s, FieldIndexed: allFieldsIndexed})
		})
	}
}

// notPushed lists requirements Translate must leave to the apiserver.
func TestRequirementsNotPushed(t *testing.T) {
	long := strings.Repeat("x", MaxValueLen)
	for _, c := range []struct {
		name    string
		s       selection.Selection
		indexed func(string) bool
	}{
		{"gt with a word", sel1(rq("n", sel.GreaterThan, "abc")), nil},
		{"lt with a fraction", sel1(rq("n", sel.LessThan, "1.5")), nil},
		{"gt with an empty value", sel1(rq("n", sel.GreaterThan, "")), nil},
		{"gt with a space", sel1(rq("n", sel.GreaterThan, " 7")), nil},
		{"gt beyond int64", sel1(rq("n", sel.GreaterThan, "9223372036854775808")), nil},
		{"lt in hex", sel1(rq("n", sel.LessThan, "0x10")), nil},
		{"gt without a value", sel1(rq("n", sel.GreaterThan)), nil},
		{"gt with two values", sel1(rq("n", sel.GreaterThan, "1", "2")), nil},
		{"in with no values", sel1(rq("app", sel.In)), nil},
		{"notin with no values", sel1(rq("app", sel.NotIn)), nil},
		{"= with no values", sel1(rq("app", sel.Equals)), nil},
		{"!= with no values", sel1(rq("app", sel.NotEquals)), nil},
		{"unknown operator", sel1(rq("app", "~", "web")), nil},
		{"!= with a long value", sel1(rq("app", sel.NotEquals, long)), nil},
		{"notin with one long value", sel1(rq("app", sel.NotIn, "web", long+"y")), nil},
		{"unindexed field", self(rq("spec.size", sel.Equals, "1")), onlyFields("spec.color")},
		{"field without coverage information", self(rq("spec.color", sel.Equals, "red")), nil},
		{"field != with a long value", self(rq("spec.color", sel.NotEquals, long)), allFieldsIndexed},
		{"field with two values", self(rq("spec.color", sel.Equals, "red", "blue")), allFieldsIndexed},
		{"field with no value", self(rq("spec.color", sel.Equals)), allFieldsIndexed},
		{"field in", self(rq("spec.color", sel.In, "red")), allFieldsIndexed},
		{"field exists", self(rq("spec.color", sel.Exists)), allFieldsIndexed},
	} {
		t.Run(c.name, func(t *testing.T) {
			if f := Translate(c.s, c.indexed, widgets, false); !reflect.DeepEqual(f, Filter{}) {
				t.Fatalf("pushed: %+v", f)
			}
			req := Request{Range: widgets, Selection: c.s, FieldIndexed: c.indexed}
			if q := List(req); strings.Contains(q.SQL, IndexTable) {
				t.Fatalf("list reads the index: %s", q.SQL)
			}
			checkRendering(t, req)
		})
	}
}

func sel1(r ...selection.Requirement) selection.Selection { return selection.Selection{Labels: r} }
func self(r ...selection.Requirement) selection.Selection { return selection.Selection{Fields: r} }

// Only the requirements that can be rendered are; the others are dropped
// without dropping their neighbours.
func TestPartialPushdown(t *testing.T) {
	s := selection.Selection{
		Labels: []selection.Requirement{rq("n", sel.GreaterThan, "abc"), rq("app", sel.Equals, "web")},
		Fields: []selection.Requirement{rq("spec.size", sel.Equals, "1"), rq("spec.color", sel.NotEquals, "red")},
	}
	f := Translate(s, onlyFields("spec.color"), widgets, false)
	want := []any{"l", "app", "web", "f", "spec.color", "red"}
	if !reflect.DeepEqual(f.WhereArgs, want) {
		t.Fatalf("args %#v, want %#v", f.WhereArgs, want)
	}
	checkRendering(t, Request{Range: widgets, Selection: s, FieldIndexed: onlyFields("spec.color")})
}

func TestLongValues(t *testing.T) {
	// The longest value no cut value can equal: a cut keeps at least
	// MaxValueLen-3 bytes (the start of a 4-byte character at the limit).
	short := strings.Repeat("v", MaxValueLen-utf8.UTFMax)
	shortestCut := strings.Repeat("v", MaxValueLen-utf8.UTFMax+1)
	exact := strings.Repeat("v", MaxValueLen)
	long := strings.Repeat("v", MaxValueLen) + "-tail"
	cut := long[:MaxValueLen]

	// = and in compare the cut value: a superset of the real matches.
	for _, r := range []selection.Requirement{rq("app", sel.Equals, long), rq("app", sel.In, "web", long)} {
		f := Translate(sel1(r), nil, widgets, false)
		if f.Where == "" || f.Drive == "" {
			t.Fatalf("%s not pushed", r.Operator)
		}
		if got := f.WhereArgs[len(f.WhereArgs)-1]; got != cut {
			t.Fatalf("%s compares %d bytes, want the %d the index keeps", r.Operator, len(got.(string)), MaxValueLen)
		}
	}
	f := Translate(self(rq("spec.color", sel.Equals, long)), allFieldsIndexed, widgets, false)
	if f.Where == "" || f.WhereArgs[2] != cut {
		t.Fatalf("field = on a long value: %+v", f)
	}

	// != and notin cannot exclude on a value as long as a cut value can be
	// (a stored longer value is cut to it).
	for _, v := range []string{shortestCut, exact, long} {
		for _, s := range []selection.Selection{
			sel1(rq("app", sel.NotEquals, v)),
			sel1(rq("app", sel.NotIn, "web", v)),
		} {
			if f := Translate(s, nil, widgets, false); f.Where != "" {
				t.Fatalf("%s with a %d-byte value pushed", s.Labels[0].Operator, len(v))
			}
		}
		if f := Translate(self(rq("spec.color", sel.NotEquals, v)), allFieldsIndexed, widgets, false); f.Where != "" {
			t.Fatalf("field != with a %d-byte value pushed", len(v))
		}
	}
	// One byte shorter is exact and pushed.
	if f := Translate(sel1(rq("app", sel.NotEquals, short)), nil, widgets, false); f.Where == "" || f.WhereArgs[2] != short {
		t.Fatalf("!= with a %d-byte value not pushed as is", len(short))
	}
	if f := Translate(self(rq("spec.color", sel.NotEquals, short)), allFieldsIndexed, widgets, false); f.Where == "" {
		t.Fatalf("field != with a %d-byte value not pushed", len(short))
	}
	if IndexValue(long) != cut || IndexValue(exact) != exact || IndexValue(short) != short {
		t.Fatal("IndexValue does not keep exactly MaxValueLen bytes of an ASCII value")
	}
}

// A value is cut before the character that crosses MaxValueLen, whatever its
// width, so the stored prefix is valid UTF-8; for every width and position
// of the character straddling the limit.
func TestCutAtCharacterBoundary(t *testing.T) {
	for _, char := range []string{"é", "€", "𝄞"} { // 2, 3 and 4 bytes
		for pad := MaxValueLen - 2*len(char); pad <= MaxValueLen+1; pad++ {
			v := strings.Repeat("a", pad) + char + char + "tail"
			got := IndexValue(v)
			if len(v) <= MaxValueLen {
				if got != v {
					t.Fatalf("%d-byte value changed", len(v))
				}
				continue
			}
			if !utf8.ValidString(got) || len(got) > MaxValueLen || !strings.HasPrefix(v, got) {
				t.Fatalf("%q at %d: cut to %d bytes, valid UTF-8 %v", char, pad, len(got), utf8.ValidString(got))
			}
			// Nothing more fits: the next character would cross the limit.
			if _, size := utf8.DecodeRuneInString(v[len(got):]); len(got)+size <= MaxValueLen {
				t.Fatalf("%q at %d: cut to %d bytes, but the next %d-byte character fits", char, pad, len(got), size)
			}
			if !MayBeCut(got) {
				t.Fatalf("%q at %d: a %d-byte cut value is not treated as possibly cut", char, pad, len(got))
			}
			// The cut value is found by = on the full value, and != on it
			// is not pushed (it could exclude the longer stored value).
			if IndexValue(got) != got {
				t.Fatalf("cut value is cut again")
			}
			if f := Translate(self(rq("spec.color", sel.NotEquals, got)), allFieldsIndexed, widgets, false); f.Where != "" {
				t.Fatalf("%q at %d: != on a %d-byte value pushed", char, pad, len(got))
			}
		}
	}
}

func TestEmptySelection(t *testing.T) {
	for _, s := range []selection.Selection{{}, {Labels: []selection.Requirement{}, Fields: []selection.Requirement{}}} {
		if f := Translate(s, allFieldsIndexed, widgets, false); !reflect.DeepEqual(f, Filter{}) {
			t.Fatalf("filter %+v for an empty selection", f)
		}
		for _, r := range []Range{widgets, {}, {Start: "/registry/widgets/ns/a"}} {
			for _, q := range []Query{List(Request{Range: r, Selection: s}), Count(Request{Range: r, Selection: s})} {
				if strings.Contains(q.SQL, RowsTable) || strings.Contains(q.SQL, IndexTable) || strings.Contains(q.SQL, "cand") {
					t.Fatalf("an empty selection reads the index: %s", q.SQL)
				}
				checkRendering(t, Request{Range: r, Selection: s})
			}
		}
	}
}

// Every combination of the request's shape keeps placeholders and arguments
// in step, for Where, Drive, List and Count alike.
func TestPlaceholdersMatchArgs(t *testing.T) {
	reqs := [][]selection.Requirement{
		nil,
		{rq("app", sel.Equals, "web")},
		{rq("app", sel.NotEquals, "web")},
		{rq("app", sel.In, "a", "b", "c")},
		{rq("app", sel.NotIn, "a", "b")},
		{rq("app", sel.Exists)},
		{rq("app", sel.DoesNotExist)},
		{rq("n", sel.GreaterThan, "1")},
		{rq("n", sel.LessThan, "1")},
		{rq("n", sel.LessThan, "x")},
		{rq("app", sel.DoesNotExist), rq("n", sel.GreaterThan, "1"), rq("app", sel.In, "a", "b"), rq("tier", sel.NotIn, "x")},
	}
	freqs := [][]selection.Requirement{
		nil,
		{rq("spec.color", sel.Equals, "red")},
		{rq("spec.color", sel.NotEquals, "red")},
		{rq("spec.color", sel.NotEquals, "red"), rq("metadata.name", sel.DoubleEquals, "a"), rq("spec.size", sel.Equals, "1")},
	}
	ranges := []Range{{}, widgets, {Start: "/registry/widgets/ns/a"}, {Start: "", End: "/x"}}
	n := 0
	for _, ls := range reqs {
		for _, fs := range freqs {
			for _, r := range ranges {
				for _, rev := range []int64{0, 7} {
					for _, limit := range []int64{0, 3} {
						for flags := range 4 {
							req := Request{
								Range: r, Revision: rev, Limit: limit,
								IncludeDeleted: flags&1 != 0, KeysOnly: flags&2 != 0,
								Selection:    selection.Selection{Labels: ls, Fields: fs},
								FieldIndexed: onlyFields("spec.color", "metadata.name"),
							}
							checkRendering(t, req)
							n++
						}
					}
				}
			}
		}
	}
	t.Logf("%d renderings", n)
}

// hostile strings must reach the database only as arguments.
var hostile = []string{
	`'`, `''`, `"`, `'; DROP TABLE kine; --`, `" OR 1=1 --`, `') OR ('1'='1`, `%`, `_`, `%_%`, `\`, `\'`, `\\`,
	"é", "日本語", "\u202e", "\x00", "a\x00b", "\xff\xfe", "?", "$1", ":name", "@p", "SELECT", "NULL", "OR", "*/", "/*",
	"; SELECT 1", "kine", "i.value", "1 = 1", " ", "\n", "\t",
}

func TestNoValueInSQL(t *testing.T) {
	for _, h := range hostile {
		for _, req := range []Request{
			{Range: Range{Start: h, End: h + "z"}, Selection: sel1(rq(h, sel.Equals, h), rq(h, sel.In, h, "x"+h))},
			{Range: Range{Start: h}, Selection: sel1(rq(h, sel.NotEquals, h), rq(h, sel.NotIn, h), rq(h, sel.Exists), rq(h, sel.DoesNotExist), rq(h, sel.GreaterThan, h), rq(h, sel.LessThan, h))},
			{Range: widgets, Selection: self(rq(h, sel.Equals, h), rq("spec.color", sel.NotEquals, h), rq("spec.color", sel.DoubleEquals, h+h)), FieldIndexed: allFieldsIndexed},
			{Selection: selection.Selection{Labels: []selection.Requirement{rq("app", sel.Equals, h)}, Fields: []selection.Requirement{rq(h, sel.NotEquals, h)}}, FieldIndexed: allFieldsIndexed},
		} {
			checkRendering(t, req)
			for _, q := range []Query{List(req), Count(req)} {
				// Strings that cannot occur in the statement's own text must
				// not occur at all.
				if strings.ContainsAny(h, "'\"%\\\x00\xff;$:@\n\té日\u202e") && strings.Contains(strings.ReplaceAll(q.SQL, "'compact_rev_key'", ""), h) {
					t.Fatalf("%q appears in the SQL: %s", h, q.SQL)
				}
				if !slices.Contains(q.Args, any(h)) {
					t.Fatalf("%q is not among the arguments %#v", h, q.Args)
				}
			}
		}
	}
}

// Hostile strings, run for real: stored objects carrying them are found by
// = and excluded by !=, and the database survives.
func TestHostileValuesOnSQLite(t *testing.T) {
	db := openTestDB(t, t.TempDir())
	s := newStore(db, "metadata.name", "metadata.namespace", "spec.color")
	if err := s.addCompactKey(db); err != nil {
		t.Fatal(err)
	}
	for i, h := range hostile {
		key := fmt.Sprintf("/registry/widgets/ns/%02d", i)
		if _, err := s.put(db, key, false, rowIndexed, map[string]string{"app": h, h: "x"}, map[string]string{"metadata.name": fmt.Sprintf("%02d", i), "metadata.namespace": "ns", "spec.color": h}); err != nil {
			t.Fatal(err)
		}
	}
	for i, h := range hostile {
		key := fmt.Sprintf("/registry/widgets/ns/%02d", i)
		decodable := cleanEntry(map[string]string{h: h}, nil)
		for _, c := range []struct {
			s    selection.Selection
			want bool
		}{
			{sel1(rq("app", sel.Equals, h)), true},
			{sel1(rq("app", sel.NotEquals, h)), !decodable},
			{sel1(rq(h, sel.Exists)), true},
			{sel1(rq(h, sel.DoesNotExist)), !decodable},
			{self(rq("spec.color", sel.Equals, h)), true},
			{self(rq("spec.color", sel.NotEquals, h)), !decodable},
		} {
			req := Request{Range: widgets, Selection: c.s, FieldIndexed: s.fieldIndexed}
			_, _, rows, err := runList(db, req)
			if err != nil {
				t.Fatal(err)
			}
			found := slices.ContainsFunc(rows, func(g gotRow) bool { return g.name == key })
			if found != c.want {
				t.Fatalf("%+v: %s returned=%v, want %v", c.s, key, found, c.want)
			}
			_, _, n, err := runCount(db, req)
			if err != nil {
				t.Fatal(err)
			}
			if n != int64(len(rows)) {
				t.Fatalf("%+v: count %d, list %d", c.s, n, len(rows))
			}
		}
	}
	var n int
	if err := db.QueryRow("SELECT COUNT(*) FROM kine").Scan(&n); err != nil || n != len(hostile)+1 {
		t.Fatalf("kine has %d rows (%v), want %d", n, err, len(hostile)+1)
	}
}

// fixture is a small database for semantic checks: decoded objects, one that
// could not be decoded and one written without any index entry.
func fixture(t *testing.T) *store {
	t.Helper()
	s := newStore(openTestDB(t, t.TempDir()), "metadata.name", "metadata.namespace", "spec.color")
	if err := s.addCompactKey(s.db); err != nil {
		t.Fatal(err)
	}
	objs := []struct {
		name   string
		kind   rowKind
		labels map[string]string
		color  string
	}{
		{"plain", rowIndexed, nil, ""},
		{"web", rowIndexed, map[string]string{"app": "web", "n": "7"}, "red"},
		{"db", rowIndexed, map[string]string{"app": "db", "n": "12", "tier": "back"}, "blue"},
		{"neg", rowIndexed, map[string]string{"app": "", "n": "-3"}, ""},
		{"zero", rowIndexed, map[string]string{"n": "007", "tier": ""}, "red"},
		{"word", rowIndexed, map[string]string{"n": "abc"}, "blue"},
		{"huge", rowIndexed, map[string]string{"n": "9223372036854775808"}, "red"},
		{"undecoded", rowUndecoded, map[string]string{"app": "zzz"}, "green"},
		{"unmarked", rowUnmarked, map[string]string{"app": "zzz"}, "green"},
	}
	for _, o := range objs {
		key := "/registry/widgets/ns/" + o.name
		if _, err := s.put(s.db, key, false, o.kind, o.labels, map[string]string{"metadata.name": o.name, "metadata.namespace": "ns", "spec.color": o.color}); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func names(t *testing.T, s *store, req Request) []string {
	t.Helper()
	_, _, rows, err := runList(s.db, req)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rows {
		out = append(out, strings.TrimPrefix(r.name, "/registry/widgets/ns/"))
	}
	_, _, n, err := runCount(s.db, req)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(out)) {
		t.Fatalf("count %d, list %v", n, out)
	}
	return out
}

// TestSemanticsOnSQLite pins down upstream semantics for each operator on a
// hand-made set of objects, including the rows the index cannot judge.
func TestSemanticsOnSQLite(t *testing.T) {
	s := fixture(t)
	maybe := []string{"undecoded", "unmarked"}
	for _, c := range []struct {
		labels, fields string
		want           []string // decoded objects expected, besides the undecoded and unmarked ones
	}{
		{"app=web", "", []string{"web"}},
		{"app==web", "", []string{"web"}},
		{"app=", "", []string{"neg"}},
		{"app!=web", "", []string{"db", "huge", "neg", "plain", "word", "zero"}},
		{"app in (web,db)", "", []string{"db", "web"}},
		{"app notin (web,db)", "", []string{"huge", "neg", "plain", "word", "zero"}},
		{"tier", "", []string{"db", "zero"}},
		{"!tier", "", []string{"huge", "neg", "plain", "web", "word"}},
		{"n>6", "", []string{"db", "web", "zero"}},
		{"n>7", "", []string{"db"}},
		{"n<7", "", []string{"neg"}}, // a stored "-3" is a number, though no selector could hold it
		{"n<8", "", []string{"neg", "web", "zero"}},
		{"n<100", "", []string{"db", "neg", "web", "zero"}},
		{"", "spec.color=red", []string{"huge", "web", "zero"}},
		{"", "spec.color==", []string{"neg", "plain"}},
		{"", "spec.color!=red", []string{"db", "neg", "plain", "word"}},
		{"", "metadata.name=web,spec.color!=blue", []string{"web"}},
		{"app in (web,db),n>7", "spec.color=blue", []string{"db"}},
	} {
		t.Run(c.labels+" "+c.fields, func(t *testing.T) {
			lsel, err := labels.Parse(c.labels)
			if err != nil {
				t.Fatal(err)
			}
			fsel, err := fields.ParseSelector(c.fields)
			if err != nil {
				t.Fatal(err)
			}
			req := Request{Range: widgets, Selection: selection.FromSelectors(lsel, fsel), FieldIndexed: s.fieldIndexed}
			want := append(append([]string{}, c.want...), maybe...)
			slices.Sort(want)
			if got := names(t, s, req); !slices.Equal(got, want) {
				t.Fatalf("got %v, want %v", got, want)
			}
			// The same answer from upstream on the decoded objects.
			var up []string
			for _, name := range s.names {
				r := s.latest(name)
				if inRange(name, widgets) && r.kind == rowIndexed && lsel.Matches(labels.Set(r.labels)) && fsel.Matches(fields.Set(r.fields)) {
					up = append(up, strings.TrimPrefix(name, "/registry/widgets/ns/"))
				}
			}
			if !slices.Equal(up, c.want) {
				t.Fatalf("upstream matches %v, the test wants %v", up, c.want)
			}
		})
	}
	// gt and lt on stored values no selector could hold.
	if got := names(t, s, Request{Range: widgets, Selection: sel1(rq("n", sel.LessThan, "0"))}); !slices.Equal(got, []string{"neg", "undecoded", "unmarked"}) {
		t.Fatalf("n<0: %v", got)
	}
}

// Selectors no object can satisfy render fine and return only the rows the
// index cannot judge.
func TestContradictions(t *testing.T) {
	s := fixture(t)
	for _, c := range []struct{ labels, fields string }{
		{"app=web,app=db", ""},
		{"tier,!tier", ""},
		{"app in (web),app notin (web)", ""},
		{"n>12,n<7", ""},
		{"n>9223372036854775807", ""},
		{"app=web", "spec.color=blue"},
		{"", "spec.color=red,spec.color!=red"},
		{"", "spec.color=red,spec.color=blue"},
	} {
		lsel, err := labels.Parse(c.labels)
		if err != nil {
			t.Fatal(err)
		}
		fsel, err := fields.ParseSelector(c.fields)
		if err != nil {
			t.Fatal(err)
		}
		req := Request{Range: widgets, Selection: selection.FromSelectors(lsel, fsel), FieldIndexed: s.fieldIndexed}
		checkRendering(t, req)
		if got := names(t, s, req); !slices.Equal(got, []string{"undecoded", "unmarked"}) {
			t.Fatalf("%q %q: got %v", c.labels, c.fields, got)
		}
	}
	// Nothing at all: the single NULL row still carries the revisions.
	s2 := newStore(openTestDB(t, t.TempDir()))
	if _, err := s2.put(s2.db, "/registry/widgets/ns/a", false, rowIndexed, map[string]string{"app": "web"}, nil); err != nil {
		t.Fatal(err)
	}
	for _, keysOnly := range []bool{false, true} {
		cur, _, rows, err := runList(s2.db, Request{Range: widgets, KeysOnly: keysOnly, Selection: sel1(rq("app", sel.Equals, "web"), rq("app", sel.DoesNotExist))})
		if err != nil || len(rows) != 0 || cur != 1 {
			t.Fatalf("keysOnly=%v: rows %v, current revision %d, %v", keysOnly, rows, cur, err)
		}
	}
}

// Regression: a read driven by the index (any requirement that needs the
// label or field present) used to start only from matching index rows and
// undecoded rows, so a row without any harikube_rows entry (written before
// the index existed, or kine's compact_rev_key) was never a candidate,
// although Where keeps such rows. It must be returned like an undecoded one.
func TestUnmarkedRowsInIndexDrivenReads(t *testing.T) {
	s := newStore(openTestDB(t, t.TempDir()), "metadata.name")
	if err := s.addCompactKey(s.db); err != nil {
		t.Fatal(err)
	}
	put := func(name string, kind rowKind, app string) {
		t.Helper()
		if _, err := s.put(s.db, "/registry/widgets/ns/"+name, false, kind, map[string]string{"app": app}, map[string]string{"metadata.name": name}); err != nil {
			t.Fatal(err)
		}
	}
	put("a", rowIndexed, "web")
	put("b", rowIndexed, "db")
	put("old", rowUnmarked, "web")
	put("other", rowUnmarked, "db")
	put("c", rowUndecoded, "web")
	for _, c := range []struct {
		s    selection.Selection
		r    Range
		want []string
	}{
		{sel1(rq("app", sel.Equals, "web")), widgets, []string{"/registry/widgets/ns/a", "/registry/widgets/ns/c", "/registry/widgets/ns/old", "/registry/widgets/ns/other"}},
		{sel1(rq("app", sel.Exists), rq("n", sel.GreaterThan, "1")), widgets, []string{"/registry/widgets/ns/c", "/registry/widgets/ns/old", "/registry/widgets/ns/other"}},
		{self(rq("metadata.name", sel.Equals, "zzz")), Range{Start: "/registry/widgets/ns/old"}, []string{"/registry/widgets/ns/old"}},
		{sel1(rq("app", sel.In, "none")), Range{}, []string{"/registry/widgets/ns/c", "/registry/widgets/ns/old", "/registry/widgets/ns/other", "compact_rev_key"}},
	} {
		req := Request{Range: c.r, Selection: c.s, FieldIndexed: s.fieldIndexed}
		if Translate(c.s, s.fieldIndexed, c.r, false).Drive == "" {
			t.Fatalf("%+v: expected an index-driven read", c.s)
		}
		checkRendering(t, req)
		_, _, rows, err := runList(s.db, req)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range rows {
			got = append(got, r.name)
		}
		if !slices.Equal(got, c.want) {
			t.Fatalf("%+v in %q: got %v, want %v", c.s, c.r, got, c.want)
		}
		if _, _, n, err := runCount(s.db, req); err != nil || n != int64(len(c.want)) {
			t.Fatalf("%+v in %q: count %d (%v), want %d", c.s, c.r, n, err, len(c.want))
		}
	}
}

// An index row over MaxRowBytes (name, cut value and key) does not fit.
func TestRowFits(t *testing.T) {
	key := "/registry/widgets/ns/" + strings.Repeat("n", 2000)
	if !RowFits("app", strings.Repeat("v", 1000), key) {
		t.Fatal("a long value counts with more than the bytes the index keeps of it")
	}
	if RowFits(strings.Repeat("k", MaxRowBytes-len(key)-MaxValueLen+1), strings.Repeat("v", MaxValueLen), key) {
		t.Fatalf("a row of %d bytes fits", MaxRowBytes+1)
	}
}

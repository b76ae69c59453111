package datastore

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	_ "modernc.org/sqlite"

	"github.com/harikube/harikube/pkg/index"
	"github.com/harikube/harikube/pkg/selection"
	"github.com/harikube/harikube/pkg/selectorsql"
	"github.com/harikube/harikube/tests/pgserver"
)

func TestMain(m *testing.M) {
	logrus.SetLevel(logrus.WarnLevel)
	os.Exit(m.Run())
}

const prefix = "/registry/widgets/"

type env struct {
	dir    string
	client *clientv3.Client
	ds     *Datastore
	stop   func()
}

// store names one database the tests run against: SQLite in a directory,
// or a PostgreSQL database.
type store struct {
	dir      string
	endpoint string // "" for SQLite in dir
}

func (s store) sql(t *testing.T) *sql.DB {
	t.Helper()
	driver, dsn := "sqlite", "file://"+DatabasePath(s.dir)
	if s.endpoint != "" {
		driver, dsn = "pgx", s.endpoint
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// forEachStore runs a test against SQLite and against a private PostgreSQL
// (skipped when PostgreSQL is not installed).
func forEachStore(t *testing.T, test func(t *testing.T, s store)) {
	t.Run("sqlite", func(t *testing.T) { test(t, store{dir: t.TempDir()}) })
	t.Run("postgres", func(t *testing.T) {
		pg := pgserver.Start(t)
		test(t, store{dir: t.TempDir(), endpoint: pg.DSN()})
	})
}

// start runs a datastore on s; registry may be nil.
func start(t testing.TB, s store, registry *index.Registry) *env {
	t.Helper()
	return startWith(t, Options{DataDir: s.dir, Endpoint: s.endpoint, Registry: registry})
}

func startWith(t testing.TB, opts Options) *env {
	t.Helper()
	dir := opts.DataDir
	opts.KineArgs = append(opts.KineArgs, "--compact-min-retain=0")
	ctx, cancel := context.WithCancel(context.Background())
	ds, err := Start(ctx, opts)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	client, err := clientv3.New(clientv3.Config{Endpoints: []string{ds.Endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{dir: dir, client: client, ds: ds}
	stopped := false
	e.stop = func() {
		if stopped {
			return
		}
		stopped = true
		client.Close()
		cancel()
		ds.Wait()
	}
	t.Cleanup(e.stop)
	return e
}

func object(name string, lbls map[string]string, color string) string {
	b, _ := json.Marshal(map[string]any{
		"apiVersion": "example.com/v1", "kind": "Widget",
		"metadata": map[string]any{"name": name, "namespace": "ns", "labels": lbls},
		"spec":     map[string]any{"color": color},
	})
	return string(b)
}

// widgets registers an extractor like the apiserver's for a CRD with the
// selectable field spec.color.
func widgets(fieldNames ...string) index.Resource {
	return index.Resource{Name: "widgets", Prefix: prefix, Fields: fieldNames, Extract: func(v []byte) (labels.Set, fields.Set, error) {
		var o struct {
			Metadata struct {
				Name, Namespace string
				Labels          map[string]string
			}
			Spec struct{ Color string }
		}
		if err := json.Unmarshal(v, &o); err != nil {
			return nil, nil, err
		}
		fs := fields.Set{"metadata.name": o.Metadata.Name, "metadata.namespace": o.Metadata.Namespace}
		for _, f := range fieldNames {
			if f == "spec.color" {
				fs[f] = o.Spec.Color
			}
		}
		return o.Metadata.Labels, fs, nil
	}}
}

func put(t *testing.T, c *clientv3.Client, key, value string) {
	t.Helper()
	resp, err := c.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	var rev int64
	if len(resp.Kvs) > 0 {
		rev = resp.Kvs[0].ModRevision
	}
	// The transaction shapes kine accepts: create, and update with a read
	// on conflict.
	t0 := c.Txn(context.Background()).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).Then(clientv3.OpPut(key, value))
	if rev != 0 {
		t0 = t0.Else(clientv3.OpGet(key))
	}
	txn, err := t0.Commit()
	if err != nil || !txn.Succeeded {
		t.Fatalf("put %s: %v (succeeded=%v)", key, err, txn != nil && txn.Succeeded)
	}
}

func del(t *testing.T, c *clientv3.Client, key string) {
	t.Helper()
	resp, err := c.Get(context.Background(), key)
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("get %s before delete: %v", key, err)
	}
	txn, err := c.Txn(context.Background()).If(clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)).Then(clientv3.OpDelete(key)).Else(clientv3.OpGet(key)).Commit()
	if err != nil || !txn.Succeeded {
		t.Fatalf("delete %s: %v", key, err)
	}
}

func selected(t *testing.T, label, field string) context.Context {
	t.Helper()
	ls, err := labels.Parse(label)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := fields.ParseSelector(field)
	if err != nil {
		t.Fatal(err)
	}
	ctx, err := selection.NewOutgoingContext(context.Background(), selection.FromSelectors(ls, fs))
	if err != nil {
		t.Fatal(err)
	}
	return ctx
}

// list returns the keys a selected range read returns, and the count the
// datastore reports for it.
func list(t *testing.T, c *clientv3.Client, ctx context.Context, opts ...clientv3.OpOption) ([]string, int64) {
	t.Helper()
	resp, err := c.Get(ctx, prefix, append([]clientv3.OpOption{clientv3.WithPrefix()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	return keys, resp.Count
}

func equal(a, b []string) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

func TestFilteredListCountAndRevisions(t *testing.T) {
	forEachStore(t, testFilteredListCountAndRevisions)
}

func testFilteredListCountAndRevisions(t *testing.T, s store) {
	registry := index.NewRegistry()
	registry.Register(widgets("spec.color"))
	e := start(t, s, registry)
	c := e.client
	put(t, c, prefix+"ns/a", object("a", map[string]string{"app": "web", "tier": "1"}, "red"))
	put(t, c, prefix+"ns/b", object("b", map[string]string{"app": "db"}, "blue"))
	put(t, c, prefix+"ns/c", object("c", nil, "red"))
	first, _ := c.Get(context.Background(), "/x")
	put(t, c, prefix+"ns/b", object("b", map[string]string{"app": "web"}, "blue"))
	del(t, c, prefix+"ns/c")

	cases := []struct {
		label, field string
		want         []string
	}{
		{"app=web", "", []string{prefix + "ns/a", prefix + "ns/b"}},
		{"app!=web", "", nil},
		{"!app", "", nil},
		{"tier>0", "", []string{prefix + "ns/a"}},
		{"", "spec.color=red", []string{prefix + "ns/a"}},
		{"", "spec.color!=red", []string{prefix + "ns/b"}},
		{"app=web", "metadata.name=b", []string{prefix + "ns/b"}},
	}
	for _, tc := range cases {
		keys, count := list(t, c, selected(t, tc.label, tc.field))
		if !equal(keys, tc.want) || count != int64(len(tc.want)) {
			t.Errorf("%q %q: got %v (count %d), want %v", tc.label, tc.field, keys, count, tc.want)
		}
	}
	// At the earlier revision b was app=db and c still existed.
	keys, _ := list(t, c, selected(t, "app=db", ""), clientv3.WithRev(first.Header.Revision))
	if !equal(keys, []string{prefix + "ns/b"}) {
		t.Errorf("at revision %d: got %v", first.Header.Revision, keys)
	}
	keys, _ = list(t, c, selected(t, "!app", ""), clientv3.WithRev(first.Header.Revision))
	if !equal(keys, []string{prefix + "ns/c"}) {
		t.Errorf("!app at revision %d: got %v", first.Header.Revision, keys)
	}
	// A limited read reports the filtered count, so paging knows when to stop.
	resp, err := c.Get(selected(t, "app=web", ""), prefix, clientv3.WithPrefix(), clientv3.WithLimit(1))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || !resp.More || resp.Count != 2 {
		t.Errorf("limit 1: %d kvs, more=%v, count=%d; want 1, true, 2", len(resp.Kvs), resp.More, resp.Count)
	}
}

// A value that cannot be decoded is stored, served and always a candidate.
func TestUndecodableValuesAreCandidates(t *testing.T) {
	forEachStore(t, testUndecodableValuesAreCandidates)
}

func testUndecodableValuesAreCandidates(t *testing.T, s store) {
	e := start(t, s, nil)
	put(t, e.client, prefix+"ns/enc", "k8s:enc:aescbc:v1:key1:\x00\x01garbage")
	put(t, e.client, prefix+"ns/plain", object("plain", map[string]string{"app": "db"}, ""))
	keys, _ := list(t, e.client, selected(t, "app=web", ""))
	if !equal(keys, []string{prefix + "ns/enc"}) {
		t.Fatalf("got %v, want only the undecodable row", keys)
	}
	resp, err := e.client.Get(context.Background(), prefix+"ns/enc")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "k8s:enc:aescbc:v1:key1:\x00\x01garbage" {
		t.Fatalf("undecodable value not served intact: %v %v", resp, err)
	}
}

func scalar(t *testing.T, db *sql.DB, q string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := db.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// Rows written before the index existed (by stock Kine) are indexed at
// start, so index-driven reads find them.
func TestBackfillOfUnindexedRows(t *testing.T) { forEachStore(t, testBackfillOfUnindexedRows) }

func testBackfillOfUnindexedRows(t *testing.T, s store) {
	putWithStockKine(t, s, prefix+"ns/old", object("old", map[string]string{"app": "web"}, ""))
	e := start(t, s, nil)
	keys, _ := list(t, e.client, selected(t, "app=web", ""))
	if !equal(keys, []string{prefix + "ns/old"}) {
		t.Fatalf("got %v after backfill", keys)
	}
}

// putWithStockKine writes key through Kine's own driver, which adds no
// index entry, as another writer of the database would.
func putWithStockKine(t *testing.T, s store, key, value string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ds, err := Start(ctx, Options{DataDir: s.dir, Endpoint: s.endpoint, Unindexed: true})
	if err != nil {
		t.Fatal(err)
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{ds.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	put(t, c, key, value)
	c.Close()
	cancel()
	ds.Wait()
}

// A field the rows were not indexed with is not filtered in SQL until the
// rows are re-indexed.
func TestNewFieldIsFilteredOnlyAfterReindex(t *testing.T) {
	forEachStore(t, testNewFieldIsFilteredOnlyAfterReindex)
}

func testNewFieldIsFilteredOnlyAfterReindex(t *testing.T, s store) {
	e := start(t, s, nil) // generic extraction: no spec.color
	put(t, e.client, prefix+"ns/a", object("a", nil, "red"))
	put(t, e.client, prefix+"ns/b", object("b", nil, "blue"))
	e.stop()

	registry := index.NewRegistry()
	e = start(t, s, registry)
	registry.Register(widgets("spec.color"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		keys, _ := list(t, e.client, selected(t, "", "spec.color=red"))
		if equal(keys, []string{prefix + "ns/a"}) {
			break
		}
		// Before the re-index finishes the field must not be filtered:
		// both rows are returned, never fewer.
		if !equal(keys, []string{prefix + "ns/a", prefix + "ns/b"}) {
			t.Fatalf("got %v while re-indexing", keys)
		}
		if time.Now().After(deadline) {
			t.Fatal("re-index did not finish")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Compaction removes the index rows of the rows it removes.
func TestCompactionRemovesIndexRows(t *testing.T) { forEachStore(t, testCompactionRemovesIndexRows) }

func testCompactionRemovesIndexRows(t *testing.T, s store) {
	e := start(t, s, nil)
	for i := 0; i < 20; i++ {
		put(t, e.client, prefix+"ns/a", object("a", map[string]string{"n": fmt.Sprint(i)}, ""))
	}
	resp, err := e.client.Get(context.Background(), prefix+"ns/a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Compact(context.Background(), resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	db := s.sql(t)
	orphans := scalar(t, db, "SELECT COUNT(*) FROM "+selectorsql.IndexTable+" i WHERE NOT EXISTS (SELECT 1 FROM kine k WHERE k.id = i.id)")
	rows := scalar(t, db, "SELECT COUNT(*) FROM "+selectorsql.IndexTable+" WHERE key = '"+prefix+"ns/a'")
	if orphans != 0 || rows > 2*2 {
		t.Fatalf("after compaction: %d orphan index rows, %d index rows for the key", orphans, rows)
	}
	keys, _ := list(t, e.client, selected(t, "n=19", ""))
	if !equal(keys, []string{prefix + "ns/a"}) {
		t.Fatalf("got %v after compaction", keys)
	}
}

// A watch with a selection receives an event when the new or the previous
// value matches, with the previous value, and nothing else.
func TestWatchFilter(t *testing.T) { forEachStore(t, testWatchFilter) }

func testWatchFilter(t *testing.T, s store) {
	e := start(t, s, nil)
	put(t, e.client, prefix+"ns/a", object("a", map[string]string{"app": "web"}, ""))
	start, _ := e.client.Get(context.Background(), prefix+"ns/a")
	ctx, cancel := context.WithTimeout(selected(t, "app=web", ""), 20*time.Second)
	defer cancel()
	wch := e.client.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithRev(start.Header.Revision+1))

	put(t, e.client, prefix+"ns/b", object("b", map[string]string{"app": "db"}, ""))  // never matches: dropped
	put(t, e.client, prefix+"ns/a", object("a", map[string]string{"app": "db"}, ""))  // stops matching: sent
	put(t, e.client, prefix+"ns/b", object("b", map[string]string{"app": "web"}, "")) // starts matching: sent
	del(t, e.client, prefix+"ns/b")                                                   // matched before: sent
	put(t, e.client, prefix+"ns/z", object("z", map[string]string{"app": "web"}, "")) // marker

	var got []string
	for len(got) < 4 {
		select {
		case resp := <-wch:
			for _, ev := range resp.Events {
				prev := ""
				if ev.PrevKv != nil {
					prev = " prev"
				}
				got = append(got, fmt.Sprintf("%s %s%s", ev.Type, ev.Kv.Key, prev))
			}
		case <-ctx.Done():
			t.Fatalf("timed out; got %v", got)
		}
	}
	want := []string{"PUT " + prefix + "ns/a prev", "PUT " + prefix + "ns/b prev", "DELETE " + prefix + "ns/b prev", "PUT " + prefix + "ns/z"}
	if !equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// The offline check finds an index that disagrees with the data.
func TestCheckFindsDisagreements(t *testing.T) {
	dir := t.TempDir()
	e := start(t, store{dir: dir}, nil)
	put(t, e.client, prefix+"ns/a", object("a", map[string]string{"app": "web"}, ""))
	put(t, e.client, prefix+"ns/b", object("b", map[string]string{"app": "db"}, ""))
	e.stop()
	path := DatabasePath(dir)
	report, err := CheckSQLite(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	if len(report.Problems) != 0 || report.Rows < 2 {
		t.Fatalf("clean database: %+v", report)
	}

	db := store{dir: dir}.sql(t)
	for _, stmt := range []string{
		"UPDATE " + selectorsql.IndexTable + " SET value = 'tampered' WHERE kind = 'l' AND key = '" + prefix + "ns/a'",
		"DELETE FROM " + selectorsql.RowsTable + " WHERE id = (SELECT MAX(id) FROM kine WHERE name = '" + prefix + "ns/b')",
		"INSERT INTO " + selectorsql.IndexTable + " (id, kind, name, value, key) VALUES (999999, 'l', 'x', 'y', 'z')",
	} {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	db.Close()
	report, err = CheckSQLite(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	report.Write(&out)
	for _, want := range []string{"revision 999999: index entry without data row", "ns/b): no index entry", "labels map[app:web] in the value, map[app:tampered] in the index"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

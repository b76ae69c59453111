// Package split tests `harikube server --datastore-override` against the
// real binary: resources in SQLite files and a PostgreSQL database of their
// own beside the default datastore.
package split

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	clientv3 "go.etcd.io/etcd/client/v3"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	_ "modernc.org/sqlite"

	"github.com/harikube/harikube/pkg/selectorsql"
	"github.com/harikube/harikube/tests/pgserver"
	"github.com/harikube/harikube/tests/testserver"
)

const group = "split.harikube.io"

// kind is one resource of the test, with where it is stored and how its
// selectable fields are read (as upstream defines them).
type kind struct {
	gvr       schema.GroupVersionResource
	flag      string // GROUP/RESOURCE of --datastore-override; "" for the default datastore
	datastore string // the metrics' datastore label
	prefix    string // its keys
	make      func(name string, i int) *unstructured.Unstructured
	fields    func(u *unstructured.Unstructured) fields.Set
	fieldSels []string                           // the first one is the watch's: something new must match it
	restyle   func(u *unstructured.Unstructured) // an update that changes its indexed values
}

func metaFields(u *unstructured.Unstructured) fields.Set {
	return fields.Set{"metadata.name": u.GetName(), "metadata.namespace": u.GetNamespace()}
}

func colorFields(u *unstructured.Unstructured) fields.Set {
	f := metaFields(u)
	f["spec.color"], _, _ = unstructured.NestedString(u.Object, "spec", "color")
	return f
}

// eventFields are the event fields the test selects on, as upstream's
// event.ToSelectableFields names them.
func eventFields(u *unstructured.Unstructured) fields.Set {
	f := metaFields(u)
	f["involvedObject.name"], _, _ = unstructured.NestedString(u.Object, "involvedObject", "name")
	f["reason"], _, _ = unstructured.NestedString(u.Object, "reason")
	f["type"], _, _ = unstructured.NestedString(u.Object, "type")
	return f
}

var colors = []string{"red", "green", "blue"}

func tierLabels(i int) map[string]string {
	l := map[string]string{"tier": []string{"a", "b", "c", "d"}[i%4], "n": strconv.Itoa(i)}
	if i%5 == 0 {
		l["rare"] = "yes"
	}
	return l
}

func colored(gvk schema.GroupVersionKind) func(string, int) *unstructured.Unstructured {
	return func(name string, i int) *unstructured.Unstructured {
		u := &unstructured.Unstructured{Object: map[string]any{
			"metadata": map[string]any{"name": name, "namespace": "default"},
			"spec":     map[string]any{"color": colors[i%3]},
		}}
		u.SetGroupVersionKind(gvk)
		u.SetLabels(tierLabels(i))
		return u
	}
}

func recolor(u *unstructured.Unstructured) {
	_ = unstructured.SetNestedField(u.Object, "purple", "spec", "color")
	u.SetLabels(map[string]string{"tier": "z"})
}

func kinds(dir string, pgDSN string) ([]kind, []string) {
	widgets := schema.GroupVersionResource{Group: group, Version: "v1", Resource: "widgets"}
	gadgets := schema.GroupVersionResource{Group: group, Version: "v1", Resource: "gadgets"}
	ks := []kind{
		{
			gvr: schema.GroupVersionResource{Version: "v1", Resource: "events"}, flag: "/events", datastore: "events", prefix: "/registry/events/",
			make: func(name string, i int) *unstructured.Unstructured {
				u := &unstructured.Unstructured{Object: map[string]any{
					"apiVersion": "v1", "kind": "Event",
					"metadata":       map[string]any{"name": name, "namespace": "default"},
					"involvedObject": map[string]any{"kind": "Pod", "namespace": "default", "name": fmt.Sprintf("pod-%d", i%7)},
					"reason":         []string{"Started", "Pulled", "BackOff"}[i%3],
					"type":           []string{"Normal", "Warning"}[i%2],
					"message":        "m",
				}}
				u.SetLabels(tierLabels(i))
				return u
			},
			fields:    eventFields,
			fieldSels: []string{"involvedObject.name=pod-3", "reason=BackOff,type=Warning", "type!=Normal", "metadata.name=e-00007"},
			restyle: func(u *unstructured.Unstructured) {
				u.Object["reason"] = "Killing"
				u.SetLabels(map[string]string{"tier": "z"})
			},
		},
		{
			gvr: widgets, flag: group + "/widgets", datastore: "widgets." + group, prefix: "/registry/" + group + "/widgets/",
			make: colored(widgets.GroupVersion().WithKind("Widget")), fields: colorFields,
			fieldSels: []string{"spec.color=green", "spec.color!=red", "metadata.name=w-00004"}, restyle: recolor,
		},
		{
			gvr: schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}, flag: "/configmaps", datastore: "configmaps", prefix: "/registry/configmaps/",
			make: func(name string, i int) *unstructured.Unstructured {
				u := &unstructured.Unstructured{Object: map[string]any{
					"apiVersion": "v1", "kind": "ConfigMap",
					"metadata": map[string]any{"name": name, "namespace": "default"},
					"data":     map[string]any{"i": strconv.Itoa(i)},
				}}
				u.SetLabels(tierLabels(i))
				return u
			},
			fields: metaFields, fieldSels: []string{"metadata.name!=c-00001", "metadata.name=c-00009"},
			restyle: func(u *unstructured.Unstructured) { u.SetLabels(map[string]string{"tier": "z"}) },
		},
		{
			gvr: gadgets, datastore: "default", prefix: "/registry/" + group + "/gadgets/",
			make: colored(gadgets.GroupVersion().WithKind("Gadget")), fields: colorFields,
			fieldSels: []string{"spec.color=blue", "metadata.name=g-00002"}, restyle: recolor,
		},
	}
	args := []string{
		"--datastore-override=/events=sqlite://" + filepath.Join(dir, "db", "events.db"),
		"--datastore-override=" + group + "/widgets=sqlite://" + filepath.Join(dir, "db", "widgets.db"),
		"--datastore-override=/configmaps=" + pgDSN,
		// ConfigMaps from the datastore, so their selectors reach it.
		"--kube-apiserver-arg=watch-cache-sizes=configmaps#0",
	}
	return ks, args
}

var labelSels = []string{"tier=a", "tier in (b,c),rare=yes", "tier!=a", "!rare", "rare", "tier notin (a,b)"}

// TestSplitDatastores: Events and a custom resource each in a SQLite file of
// their own, ConfigMaps in PostgreSQL, another custom resource in the
// default datastore. Selector LISTs and WATCHes on each equal upstream's
// predicate and are answered by that resource's datastore; each file holds
// only its own resource; SIGKILL during writes to all four and a restart
// keep every acknowledged write; a restart without, or with a changed,
// override is refused, naming what it would hide, how many objects and
// where the flags now send them. The server warns that its snapshot
// schedule saves the default datastore only.
func TestSplitDatastores(t *testing.T) {
	pg := pgserver.Start(t)
	pgDSN := pg.DSN()
	dir := t.TempDir()
	ks, overrideArgs := kinds(dir, pgDSN)
	// A schedule that never fires during the test: only its warning is
	// looked at.
	s := testserver.Start(t, append([]string{"--data-dir", dir, "--snapshot-schedule", "@every 24h"}, overrideArgs...)...)
	ctx := context.Background()
	checkUnservedOverrideWarning(t, s)
	checkSnapshotScheduleWarning(t, s)
	createCRD(t, s, "widgets", "Widget")
	createCRD(t, s, "gadgets", "Gadget")
	dyn := dynamic.NewForConfigOrDie(s.Config)
	overrides := 0
	for _, a := range overrideArgs {
		if strings.HasPrefix(a, "--datastore-override=") {
			overrides++
		}
	}
	checkReadyzPerDatastore(t, s, overrides)

	const n = 60
	for _, k := range ks {
		for i := range n {
			if _, err := dyn.Resource(k.gvr).Namespace("default").Create(ctx, k.make(objName(k, i), i), metav1.CreateOptions{}); err != nil {
				t.Fatalf("create %s %d: %v", k.gvr.Resource, i, err)
			}
		}
	}

	for _, k := range ks {
		t.Run("list/"+k.gvr.Resource, func(t *testing.T) { checkLists(t, s, dyn, k) })
	}
	for _, k := range ks {
		t.Run("watch/"+k.gvr.Resource, func(t *testing.T) { checkWatch(t, dyn, k) })
	}
	checkFiles(t, dir, pgDSN, ks)
	checkModes(t, dir)
	for i, k := range ks[:3] {
		checkCompaction(t, s, k, []string{"sqlite", "sqlite", "pgx"}[i], []string{sqliteDSN(dir, "events.db"), sqliteDSN(dir, "widgets.db"), pgDSN}[i])
	}

	// The running server checks each datastore with the definitions it
	// serves.
	checkAll(t, s, dir, overrideArgs, "through the running server")

	// SIGKILL while every resource is written.
	acked := writeUntilKilled(t, s, dyn, ks)
	s.Restart(t)
	dyn = dynamic.NewForConfigOrDie(s.Config)
	for _, k := range ks {
		list, err := dyn.Resource(k.gvr).Namespace("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		have := map[string]bool{}
		for _, u := range list.Items {
			have[u.GetName()] = true
		}
		missing := 0
		for _, name := range acked[k.gvr.Resource] {
			if !have[name] {
				missing++
				t.Errorf("%s %s: created and acknowledged before SIGKILL, missing after restart", k.gvr.Resource, name)
			}
		}
		t.Logf("%s: %d creates acknowledged while the server was killed, %d of them present after the restart", k.gvr.Resource, len(acked[k.gvr.Resource]), len(acked[k.gvr.Resource])-missing)
		checkLists(t, s, dyn, k)
	}
	checkFiles(t, dir, pgDSN, ks)
	if code := s.Stop(t); code != 0 {
		t.Fatalf("stop: exit code %d", code)
	}

	checkAll(t, s, dir, overrideArgs, "offline")

	// Refusals: events dropped (back to the default), widgets moved to
	// another file. Each names how many objects the holder has, counted
	// here in its database (the server is stopped, so nothing changes them).
	defaultStore := "default (SQLite " + filepath.Join(dir, "db", "state.db") + ")"
	dropped := []string{"--data-dir", dir, overrideArgs[1], overrideArgs[2], overrideArgs[3]}
	refused(t, s, dropped, "events", "/registry/events/", filepath.Join(dir, "db", "events.db"),
		liveObjects(t, "sqlite", sqliteDSN(dir, "events.db"), ks[0].prefix), defaultStore)
	moved := []string{"--data-dir", dir, overrideArgs[0], "--datastore-override=" + group + "/widgets=sqlite://" + filepath.Join(dir, "db", "widgets2.db"), overrideArgs[2], overrideArgs[3]}
	refused(t, s, moved, "widgets."+group, "/registry/"+group+"/widgets/", filepath.Join(dir, "db", "widgets.db"),
		liveObjects(t, "sqlite", sqliteDSN(dir, "widgets.db"), ks[1].prefix), "widgets."+group+" (SQLite "+filepath.Join(dir, "db", "widgets2.db")+")")
	pgDropped := []string{"--data-dir", dir, overrideArgs[0], overrideArgs[1], overrideArgs[3]}
	refused(t, s, pgDropped, "configmaps", "/registry/configmaps/", "configmaps",
		liveObjects(t, "pgx", pgDSN, ks[2].prefix), defaultStore)
	// Adding an override for a resource the default datastore holds.
	added := append(append([]string{}, overrideArgs...), "--data-dir", dir, "--datastore-override="+group+"/gadgets=sqlite://"+filepath.Join(dir, "db", "gadgets.db"))
	gadgets := liveObjects(t, "sqlite", sqliteDSN(dir, "state.db"), ks[3].prefix)
	gadgetsStore := "gadgets." + group + " (SQLite " + filepath.Join(dir, "db", "gadgets.db") + ")"
	refused(t, s, added, "gadgets."+group, "/registry/"+group+"/gadgets/", "default", gadgets, gadgetsStore)
	// The same from a database whose routes were never recorded (an older
	// harikube's): the resource's usual keys are looked at.
	forgetRoutes(t, dir)
	refused(t, s, added, "gadgets."+group, "/registry/"+group+"/gadgets/", "default", gadgets, gadgetsStore)

	// The same flags again: everything is there.
	s.Restart(t)
	dyn = dynamic.NewForConfigOrDie(s.Config)
	for _, k := range ks {
		checkLists(t, s, dyn, k)
	}

	// A recorded datastore that cannot be reached cannot be checked for
	// objects left, so dropping its override is refused too.
	if code := s.Stop(t); code != 0 {
		t.Fatalf("stop: exit code %d", code)
	}
	if err := pg.Halt(); err != nil {
		t.Fatal(err)
	}
	refused(t, s, pgDropped, "configmaps", "/registry/configmaps/", "it cannot be checked for objects left", -1, "default")
}

// liveObjects counts the keys under prefix whose newest row is not a
// deletion: the objects a datastore holds there.
func liveObjects(t *testing.T, driver, dsn, prefix string) int64 {
	t.Helper()
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int64
	q := "SELECT COUNT(*) FROM kine AS k JOIN (SELECT name, MAX(id) AS id FROM kine WHERE name LIKE '" + prefix + "%' GROUP BY name) AS newest ON k.id = newest.id WHERE k.deleted = 0"
	if err := db.QueryRow(q).Scan(&n); err != nil {
		t.Fatalf("count the objects under %s: %v", prefix, err)
	}
	if n == 0 {
		t.Fatalf("no objects under %s to be stranded", prefix)
	}
	return n
}

// checkModes: the override databases and sockets are the owner's only, as
// the default ones are.
func checkModes(t *testing.T, dir string) {
	t.Helper()
	socks, _ := filepath.Glob(filepath.Join(dir, "kine-*.sock"))
	if len(socks) != 3 {
		t.Errorf("override sockets %v, want 3", socks)
	}
	for _, p := range append(socks, filepath.Join(dir, "db", "events.db"), filepath.Join(dir, "db", "widgets.db")) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", p, fi.Mode().Perm())
		}
	}
}

func sqliteDSN(dir, name string) string {
	return "file:" + filepath.Join(dir, "db", name) + "?mode=ro&_pragma=busy_timeout(10000)"
}

// etcdAPI connects to the etcd API of the datastore the server logged for
// name ("Datastore events: ... (etcd API unix://...)").
func etcdAPI(t *testing.T, s *testserver.Server, name string) *clientv3.Client {
	t.Helper()
	log, err := os.ReadFile(s.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`Datastore ` + regexp.QuoteMeta(name) + `: [^\n]*\(etcd API (unix://[^)]+)\)`).FindSubmatch(log)
	if m == nil {
		t.Fatalf("the server log names no etcd API for datastore %s", name)
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{string(m[1])}, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// checkCompaction writes one key of the resource many times through its
// datastore's etcd API, compacts, and checks in the database that the
// superseded rows and their index rows are gone.
func checkCompaction(t *testing.T, s *testserver.Server, k kind, driver, dsn string) {
	t.Helper()
	const updates = 1500 // kine keeps the newest 1,000 revisions
	ctx := context.Background()
	c := etcdAPI(t, s, k.datastore)
	key := k.prefix + "default/compaction-probe"
	value, err := k.make("compaction-probe", 3).MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	var rev int64
	for range updates {
		resp, err := c.Put(ctx, key, string(value))
		if err != nil {
			t.Fatalf("put %s: %v", key, err)
		}
		rev = resp.Header.Revision
	}
	if _, err := c.Compact(ctx, rev); err != nil {
		t.Fatalf("compact datastore %s at %d: %v", k.datastore, rev, err)
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var rows, orphans int
	if err := db.QueryRow("SELECT COUNT(*) FROM kine WHERE name = '" + key + "'").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow("SELECT COUNT(*) FROM " + selectorsql.IndexTable + " AS i WHERE NOT EXISTS (SELECT 1 FROM kine AS k WHERE k.id = i.id)").Scan(&orphans); err != nil {
		t.Fatal(err)
	}
	t.Logf("datastore %s: %d updates of one key, compacted at %d: %d rows of it left", k.datastore, updates, rev, rows)
	if rows >= updates-400 || orphans != 0 {
		t.Errorf("datastore %s after %d updates of one key and a compaction: %d rows of it, %d index rows without their row", k.datastore, updates, rows, orphans)
	}
}

// checkAll runs `harikube datastore check` on every datastore of the
// flags, then on one.
func checkAll(t *testing.T, s *testserver.Server, dir string, overrideArgs []string, how string) {
	t.Helper()
	out, code := s.Run(t, append([]string{"datastore", "check", "--data-dir", dir}, overrideFlags(overrideArgs)...)...)
	if code != 0 || strings.Count(out, "ok:") != 4 {
		t.Fatalf("datastore check of all datastores %s: exit %d\n%s", how, code, out)
	}
	out, code = s.Run(t, append([]string{"datastore", "check", "--data-dir", dir, "--datastore", "events"}, overrideFlags(overrideArgs)...)...)
	if code != 0 || strings.Count(out, "ok:") != 1 || !strings.Contains(out, "datastore events:") {
		t.Fatalf("datastore check --datastore events %s: exit %d\n%s", how, code, out)
	}
	t.Logf("datastore check %s:\n%s", how, out)
}

// forgetRoutes empties the default datastore's record of routes, as a
// database written before harikube recorded them.
func forgetRoutes(t *testing.T, dir string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "db", "state.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("DELETE FROM harikube_routes"); err != nil {
		t.Fatal(err)
	}
}

func objName(k kind, i int) string { return fmt.Sprintf("%c-%05d", k.gvr.Resource[0], i) }

func overrideFlags(args []string) []string {
	var out []string
	for _, a := range args {
		if strings.HasPrefix(a, "--datastore-override=") {
			out = append(out, a)
		}
	}
	return out
}

func createCRD(t *testing.T, s *testserver.Server, plural, kind string) {
	t.Helper()
	crd := &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: plural + "." + group},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: group,
			Names: apiextensionsv1.CustomResourceDefinitionNames{Plural: plural, Kind: kind, ListKind: kind + "List"},
			Scope: apiextensionsv1.NamespaceScoped,
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{
				Name: "v1", Served: true, Storage: true,
				SelectableFields: []apiextensionsv1.SelectableField{{JSONPath: ".spec.color"}},
				Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
					Type: "object",
					Properties: map[string]apiextensionsv1.JSONSchemaProps{"spec": {Type: "object", Properties: map[string]apiextensionsv1.JSONSchemaProps{
						"color": {Type: "string"},
					}}},
				}},
			}},
		},
	}
	ext := apiextensionsclient.NewForConfigOrDie(s.Config)
	if _, err := ext.ApiextensionsV1().CustomResourceDefinitions().Create(context.Background(), crd, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create CRD %s: %v", crd.Name, err)
	}
	res := dynamic.NewForConfigOrDie(s.Config).Resource(schema.GroupVersionResource{Group: group, Version: "v1", Resource: plural})
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := res.Namespace("default").List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("%s not served: %v", crd.Name, err)
	}
}

// checkLists compares selector LISTs with upstream's label and field
// selector matching over the full list at the same resourceVersion, and
// checks the resource's own datastore answered them.
func checkLists(t *testing.T, s *testserver.Server, dyn *dynamic.DynamicClient, k kind) {
	t.Helper()
	ctx := context.Background()
	res := dyn.Resource(k.gvr).Namespace("default")
	all, err := res.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rv := all.GetResourceVersion()
	metric := func() float64 {
		return s.Metric(t, "harikube_datastore_selection_requests_total", `datastore="`+k.datastore+`"`, `resource="`+k.gvr.GroupResource().String()+`"`)
	}
	before := metric()
	var asked int
	try := func(ls, fs string) {
		lsel, err := labels.Parse(ls)
		if err != nil {
			t.Fatal(err)
		}
		fsel, err := fields.ParseSelector(fs)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{}
		for i := range all.Items {
			u := &all.Items[i]
			if lsel.Matches(labels.Set(u.GetLabels())) && fsel.Matches(k.fields(u)) {
				want = append(want, u.GetName())
			}
		}
		got, err := res.List(ctx, metav1.ListOptions{LabelSelector: ls, FieldSelector: fs, ResourceVersion: rv, ResourceVersionMatch: metav1.ResourceVersionMatchExact})
		if err != nil {
			t.Fatalf("%s list %q %q: %v", k.gvr.Resource, ls, fs, err)
		}
		if !strings.Contains(fs, "metadata.name=") {
			asked++ // a LIST by name is a read of one key, not a selection
		}
		sort.Strings(want)
		if g := itemNames(got.Items); !equal(g, want) {
			t.Errorf("%s list labels %q fields %q at %s: got %d %v, want %d %v", k.gvr.Resource, ls, fs, rv, len(g), g, len(want), want)
		}
	}
	for _, ls := range labelSels {
		try(ls, "")
	}
	for _, fs := range k.fieldSels {
		try("", fs)
		try("tier!=b", fs)
	}
	if pushed := metric() - before; pushed < float64(asked) {
		t.Errorf("%s: datastore %s saw %v selector requests for %d selector LISTs", k.gvr.Resource, k.datastore, pushed, asked)
	}
}

// checkWatch watches with a selector, writes objects that match, do not
// match, and stop matching, and compares the events with the predicate.
func checkWatch(t *testing.T, dyn *dynamic.DynamicClient, k kind) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res := dyn.Resource(k.gvr).Namespace("default")
	list, err := res.List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	w, err := res.Watch(ctx, metav1.ListOptions{LabelSelector: "tier=a", FieldSelector: k.fieldSels[0], ResourceVersion: list.GetResourceVersion()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	lsel := labels.SelectorFromSet(labels.Set{"tier": "a"})
	fsel := fields.ParseSelectorOrDie(k.fieldSels[0])
	matches := func(u *unstructured.Unstructured) bool {
		return lsel.Matches(labels.Set(u.GetLabels())) && fsel.Matches(k.fields(u))
	}
	var want []string
	for i := 1000; i < 1024; i++ {
		u := k.make(objName(k, i), i)
		created, err := res.Create(ctx, u, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if matches(created) {
			want = append(want, "ADDED "+created.GetName())
		}
		if i%2 == 0 {
			created = created.DeepCopy()
			before := created.DeepCopy()
			k.restyle(created)
			updated, err := res.Update(ctx, created, metav1.UpdateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			switch was, is := matches(before), matches(updated); {
			case was && !is:
				want = append(want, "DELETED "+updated.GetName())
			case !was && is:
				want = append(want, "ADDED "+updated.GetName())
			case is:
				want = append(want, "MODIFIED "+updated.GetName())
			}
		}
	}
	// A marker that matches ends the wait.
	var marker *unstructured.Unstructured
	for i := 2000; marker == nil; i++ {
		if u := k.make(objName(k, i), i); matches(u) {
			marker = u
		}
	}
	if _, err := res.Create(ctx, marker, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want = append(want, "ADDED "+marker.GetName())
	var got []string
	for ev := range w.ResultChan() {
		if ev.Type == watch.Error {
			t.Fatalf("watch error: %v", apierrors.FromObject(ev.Object))
		}
		u := ev.Object.(*unstructured.Unstructured)
		got = append(got, string(ev.Type)+" "+u.GetName())
		if u.GetName() == marker.GetName() {
			break
		}
	}
	if !equal(got, want) {
		t.Errorf("%s watch tier=a,%s:\n got  %v\n want %v", k.gvr.Resource, k.fieldSels[0], got, want)
	}
}

// checkFiles reads each datastore's kine table directly: the override
// databases hold only their resource, the default one none of them.
func checkFiles(t *testing.T, dir, pgDSN string, ks []kind) {
	t.Helper()
	read := func(driver, dsn string) []string {
		db, err := sql.Open(driver, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		rows, err := db.Query("SELECT DISTINCT name FROM kine WHERE name LIKE '/registry/%'")
		if err != nil {
			t.Fatalf("read %s: %v", dsn, err)
		}
		defer rows.Close()
		var names []string
		for rows.Next() {
			var name string
			if err := rows.Scan(&name); err != nil {
				t.Fatal(err)
			}
			names = append(names, name)
		}
		return names
	}
	count := func(names []string, prefix string) int {
		n := 0
		for _, name := range names {
			if strings.HasPrefix(name, prefix) {
				n++
			}
		}
		return n
	}
	own := func(k kind, names []string, where string) {
		for _, name := range names {
			if !strings.HasPrefix(name, k.prefix) && !strings.HasPrefix(name, "/registry/health") {
				t.Errorf("%s (datastore of %s) holds %s", where, k.gvr.Resource, name)
			}
		}
		if count(names, k.prefix) == 0 {
			t.Errorf("%s holds no %s", where, k.gvr.Resource)
		}
	}
	sqlite := func(name string) string { return sqliteDSN(dir, name) }
	own(ks[0], read("sqlite", sqlite("events.db")), "events.db")
	own(ks[1], read("sqlite", sqlite("widgets.db")), "widgets.db")
	own(ks[2], read("pgx", pgDSN), "PostgreSQL")
	def := read("sqlite", sqlite("state.db"))
	for _, k := range ks[:3] {
		if n := count(def, k.prefix); n > 0 {
			t.Errorf("state.db holds %d keys of %s", n, k.gvr.Resource)
		}
	}
	if count(def, ks[3].prefix) == 0 {
		t.Errorf("state.db holds no %s", ks[3].gvr.Resource)
	}
}

// writeUntilKilled creates objects of every resource from several clients
// and SIGKILLs the server while they run; it returns the names whose
// creation was acknowledged.
func writeUntilKilled(t *testing.T, s *testserver.Server, dyn *dynamic.DynamicClient, ks []kind) map[string][]string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	acked := map[string][]string{}
	var wg sync.WaitGroup
	for _, k := range ks {
		for c := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res := dyn.Resource(k.gvr).Namespace("default")
				for i := 0; ctx.Err() == nil; i++ {
					idx := 10000 + c*10000 + i
					u := k.make(objName(k, idx), idx)
					if _, err := res.Create(ctx, u, metav1.CreateOptions{}); err != nil {
						continue
					}
					mu.Lock()
					acked[k.gvr.Resource] = append(acked[k.gvr.Resource], u.GetName())
					mu.Unlock()
				}
			}()
		}
	}
	time.Sleep(3 * time.Second)
	s.Kill(t)
	cancel()
	wg.Wait()
	for _, k := range ks {
		if len(acked[k.gvr.Resource]) == 0 {
			t.Fatalf("no %s create was acknowledged before the kill", k.gvr.Resource)
		}
	}
	return acked
}

// refused starts the server with args and expects it to exit non-zero,
// naming the resource, its keys, the datastore that holds them, how many
// objects that is (objects < 0: the holder cannot be reached to count them)
// and the datastore the flags now route the resource to.
func refused(t *testing.T, s *testserver.Server, args []string, resource, prefix, holder string, objects int64, dest string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testserver.Binary(t), append([]string{"server", "--https-listen-port", strconv.Itoa(s.Port), "--bind-address", "127.0.0.1"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("server with %v: want a refusal, got %v\n%s", args, err, out.String())
	}
	msg := out.String()
	// The count and the destination are those of this resource's line.
	line := fmt.Sprintf("holds %d objects of %s (keys %s), which the flags now route to datastore %s\n", objects, resource, prefix, dest)
	if objects < 0 {
		line = fmt.Sprintf("held %s (keys %s), which the flags now route to datastore %s; it cannot be checked for objects left", resource, prefix, dest)
	}
	wants := []string{"refusing to start", resource, prefix, holder, line}
	for _, want := range wants {
		if !strings.Contains(msg, want) {
			t.Errorf("refusal for %s does not name %q:\n%s", resource, want, lastLines(msg, 5))
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func itemNames(items []unstructured.Unstructured) []string {
	out := []string{}
	for _, i := range items {
		out = append(out, i.GetName())
	}
	sort.Strings(out)
	return out
}

func equal(a, b []string) bool {
	if len(a) == 0 && len(b) == 0 {
		return true
	}
	return strings.Join(a, ",") == strings.Join(b, ",")
}

// TestBadOverrides: each bad --datastore-override stops the server at once
// with exit 1 and the reason, before anything starts.
func TestBadOverrides(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--datastore-override=/events"}, "want GROUP/RESOURCE=DSN"},
		{[]string{"--datastore-override=events=sqlite:///tmp/e.db"}, "is not GROUP/RESOURCE"},
		{[]string{"--datastore-override=/events=mysql://db/events"}, `scheme "mysql" is not supported`},
		{[]string{"--datastore-override=/events=sqlite://events.db"}, "must be absolute"},
		{[]string{"--datastore-override=/events=sqlite:///tmp/e.db", "--datastore-override=/events=sqlite:///tmp/f.db"}, "given twice"},
		{[]string{"--datastore-override=/events=sqlite://" + filepath.Join(dir, "db", "state.db")}, "that is the default datastore"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		cmd := exec.CommandContext(ctx, testserver.Binary(t), append([]string{"server", "--data-dir", dir, "--https-listen-port", strconv.Itoa(testserver.FreePort(t))}, c.args...)...)
		out, _ := cmd.CombinedOutput()
		cancel()
		if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), c.want) {
			t.Errorf("%v: exit %d, want 1 with %q:\n%s", c.args, code, c.want, lastLines(string(out), 5))
		}
	}
	if entries, _ := filepath.Glob(filepath.Join(dir, "*")); len(entries) > 0 {
		t.Errorf("a refused start left %v in the data directory", entries)
	}

	// events.k8s.io's Events are stored as the core group's: an override
	// of the former alone would not move them, and stops the server.
	other := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testserver.Binary(t), "server", "--data-dir", other, "--bind-address", "127.0.0.1",
		"--https-listen-port", strconv.Itoa(testserver.FreePort(t)), "--datastore-override=events.k8s.io/events=sqlite://"+filepath.Join(other, "db", "events.db"))
	out, _ := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), "override that resource instead (e.g. /events") {
		t.Errorf("override of events.k8s.io/events: exit %d, want 1 naming /events:\n%s", code, lastLines(string(out), 5))
	}
}

// checkUnservedOverrideWarning: the widgets override names a custom
// resource whose definition comes after the start; the server warns about
// it, and about no resource it serves. The check ends before the server
// logs its API URL, so the definitions are created only after that line.
func checkUnservedOverrideWarning(t *testing.T, s *testserver.Server) {
	t.Helper()
	var log []byte
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		var err error
		log, err = os.ReadFile(s.LogPath)
		return bytes.Contains(log, []byte("API server: ")), err
	})
	if err != nil {
		t.Fatalf("the server did not log its API URL: %v", err)
	}
	const warning = "the API serves no such resource yet (a custom resource's definition may come later)"
	var warned []string
	for _, m := range regexp.MustCompile(`--datastore-override (\S*): `+regexp.QuoteMeta(warning)).FindAllSubmatch(log, -1) {
		warned = append(warned, string(m[1]))
	}
	if want := []string{group + "/widgets"}; !slices.Equal(warned, want) {
		t.Errorf("warnings for overrides of unserved resources: %q, want %q", warned, want)
	}
}

// checkSnapshotScheduleWarning: scheduled snapshots save the default
// datastore only, and a server with overrides says so at start (logged
// before its API URL, which checkUnservedOverrideWarning waited for).
func checkSnapshotScheduleWarning(t *testing.T, s *testserver.Server) {
	t.Helper()
	log, err := os.ReadFile(s.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	const warning = "--snapshot-schedule saves the default datastore only; back up the datastores of --datastore-override separately"
	if n := bytes.Count(log, []byte(warning)); n != 1 {
		t.Errorf("the server with --snapshot-schedule and overrides logged %q %d times, want once", warning, n)
	}
}

// checkReadyzPerDatastore: /readyz has upstream's etcd-override-N and
// etcd-override-readiness-N checks for each --etcd-servers-overrides entry
// harikube passes, one per override, each passing.
func checkReadyzPerDatastore(t *testing.T, s *testserver.Server, overrides int) {
	t.Helper()
	body, err := s.Client.Discovery().RESTClient().Get().AbsPath("/readyz").Param("verbose", "true").DoRaw(context.Background())
	if err != nil {
		t.Fatalf("/readyz?verbose: %v\n%s", err, body)
	}
	for i := range overrides {
		for _, want := range []string{fmt.Sprintf("[+]etcd-override-%d ok", i), fmt.Sprintf("[+]etcd-override-readiness-%d ok", i)} {
			if !strings.Contains(string(body), want) {
				t.Errorf("/readyz?verbose has no %q:\n%s", want, body)
			}
		}
	}
	if extra := fmt.Sprintf("etcd-override-%d ", overrides); strings.Contains(string(body), extra) {
		t.Errorf("/readyz?verbose has a check %q beyond the %d overrides:\n%s", extra, overrides, body)
	}
}

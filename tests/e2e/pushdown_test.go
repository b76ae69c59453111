package e2e

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/harikube/harikube/tests/pgserver"
	"github.com/harikube/harikube/tests/testserver"
)

// forEachDatastore runs an end-to-end test against a server on SQLite (the
// default) and on a private PostgreSQL (skipped when not installed).
func forEachDatastore(t *testing.T, test func(t *testing.T, datastoreArgs []string)) {
	t.Run("sqlite", func(t *testing.T) { test(t, nil) })
	t.Run("postgres", func(t *testing.T) {
		pg := pgserver.Start(t)
		test(t, []string{"--datastore-endpoint=" + pg.DSN()})
	})
}

var gadgets = schema.GroupVersionResource{Group: "pushdown.harikube.io", Version: "v1", Resource: "gadgets"}

// createGadgetCRD installs Gadgets: spec.color (selectable) and spec.payload.
func createGadgetCRD(t *testing.T, cfg *rest.Config) dynamic.NamespaceableResourceInterface {
	return installColorCRD(t, cfg, gadgets, "Gadget", map[string]apiextensionsv1.JSONSchemaProps{
		"color": {Type: "string"}, "payload": {Type: "string"},
	})
}

func gadget(name string, lbls map[string]string, color string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "pushdown.harikube.io/v1", "kind": "Gadget",
		"metadata": map[string]any{"name": name, "namespace": "default"},
		"spec":     map[string]any{"color": color, "payload": strings.Repeat("x", 64)},
	}}
	u.SetLabels(lbls)
	return u
}

// createAll creates objects with a few concurrent clients.
func createAll(t *testing.T, dyn dynamic.NamespaceableResourceInterface, objs []*unstructured.Unstructured) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(objs))
	work := make(chan *unstructured.Unstructured)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for o := range work {
				if _, err := dyn.Namespace("default").Create(context.Background(), o, metav1.CreateOptions{}); err != nil {
					errs <- fmt.Errorf("create %s: %w", o.GetName(), err)
				}
			}
		}()
	}
	for _, o := range objs {
		work <- o
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func names(items []unstructured.Unstructured) []string {
	out := make([]string, 0, len(items))
	for _, i := range items {
		out = append(out, i.GetName())
	}
	sort.Strings(out)
	return out
}

// TestPushdownAtScale: 10,000 custom resources; a label selector matching
// 10 returns exactly those and the datastore returns no more rows than that;
// limit/continue walks every match once; a label-selector watch sees ADDED,
// MODIFIED and DELETED when the label goes away.
func TestPushdownAtScale(t *testing.T) { forEachDatastore(t, testPushdownAtScale) }

func testPushdownAtScale(t *testing.T, datastoreArgs []string) {
	s := testserver.Start(t, datastoreArgs...)
	dyn := createGadgetCRD(t, s.Config)
	const n = 10000
	objs := make([]*unstructured.Unstructured, n)
	for i := range objs {
		objs[i] = gadget(fmt.Sprintf("g%05d", i), map[string]string{"id": fmt.Sprint(i), "mod1000": fmt.Sprint(i % 1000), "mod10": fmt.Sprint(i % 10)}, fmt.Sprintf("c%d", i))
	}
	start := time.Now()
	createAll(t, dyn, objs)
	t.Logf("created %d custom resources in %s", n, time.Since(start).Round(time.Millisecond))
	ctx := context.Background()

	t.Run("ten matches", func(t *testing.T) {
		rowsBefore := s.Metric(t, "harikube_datastore_selection_rows_total", `resource="gadgets.pushdown.harikube.io"`)
		keptBefore := s.Metric(t, "harikube_apiserver_pushdown_items_kept_total", `resource="gadgets.pushdown.harikube.io"`)
		list, err := dyn.Namespace("default").List(ctx, metav1.ListOptions{LabelSelector: "mod1000=7"})
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"g00007", "g01007", "g02007", "g03007", "g04007", "g05007", "g06007", "g07007", "g08007", "g09007"}
		if got := names(list.Items); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("got %v, want %v", got, want)
		}
		rows := s.Metric(t, "harikube_datastore_selection_rows_total", `resource="gadgets.pushdown.harikube.io"`) - rowsBefore
		if rows == 0 || rows > 10 {
			t.Fatalf("datastore returned %v rows for 10 matches", rows)
		}
		if kept := s.Metric(t, "harikube_apiserver_pushdown_items_kept_total", `resource="gadgets.pushdown.harikube.io"`) - keptBefore; kept != 10 || rows < kept {
			t.Fatalf("apiserver kept %v items of the datastore's %v rows, want 10", kept, rows)
		}
	})

	t.Run("field selector on a selectable field", func(t *testing.T) {
		rowsBefore := s.Metric(t, "harikube_datastore_selection_rows_total", `resource="gadgets.pushdown.harikube.io"`)
		list, err := dyn.Namespace("default").List(ctx, metav1.ListOptions{FieldSelector: "spec.color=c4242"})
		if err != nil {
			t.Fatal(err)
		}
		if got := names(list.Items); fmt.Sprint(got) != "[g04242]" {
			t.Fatalf("got %v", got)
		}
		// The CRD's storage version is indexed with its selectable field:
		// the datastore answers it, not the apiserver.
		if rows := s.Metric(t, "harikube_datastore_selection_rows_total", `resource="gadgets.pushdown.harikube.io"`) - rowsBefore; rows != 1 {
			t.Fatalf("datastore returned %v rows for 1 match", rows)
		}
	})

	t.Run("limit and continue", func(t *testing.T) {
		seen := map[string]bool{}
		opts := metav1.ListOptions{LabelSelector: "mod10=3", Limit: 97}
		pages := 0
		for {
			list, err := dyn.Namespace("default").List(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			for _, item := range list.Items {
				if seen[item.GetName()] {
					t.Fatalf("%s returned twice", item.GetName())
				}
				if item.GetLabels()["mod10"] != "3" {
					t.Fatalf("%s does not match", item.GetName())
				}
				seen[item.GetName()] = true
			}
			if list.GetContinue() == "" {
				break
			}
			opts.Continue = list.GetContinue()
		}
		if len(seen) != n/10 {
			t.Fatalf("walked %d matches in %d pages, want %d", len(seen), pages, n/10)
		}
		if want := (n/10 + 96) / 97; pages != want {
			t.Fatalf("%d pages, want %d (one per %d matches)", pages, want, 97)
		}
	})

	t.Run("watch", func(t *testing.T) {
		w, err := dyn.Namespace("default").Watch(ctx, metav1.ListOptions{LabelSelector: "watched=yes"})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		filteredBefore := s.Metric(t, "harikube_datastore_watch_events_filtered_total")
		obj, err := dyn.Namespace("default").Create(ctx, gadget("watched", map[string]string{"watched": "yes"}, "red"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// An unrelated change must not arrive.
		if _, err := dyn.Namespace("default").Create(ctx, gadget("unrelated", map[string]string{"watched": "no"}, "red"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		obj.Object["spec"].(map[string]any)["color"] = "blue"
		if obj, err = dyn.Namespace("default").Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		obj.SetLabels(map[string]string{"other": "x"})
		if _, err = dyn.Namespace("default").Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		var got []string
		// Generous: under a fully loaded CI machine the datastore's poller can
		// lag behind a burst of 10,000 writes.
		timeout := time.After(90 * time.Second)
		for len(got) < 3 {
			select {
			case ev := <-w.ResultChan():
				got = append(got, fmt.Sprintf("%s %s", ev.Type, ev.Object.(*unstructured.Unstructured).GetName()))
			case <-timeout:
				t.Fatalf("timed out; got %v", got)
			}
		}
		want := []string{string(watch.Added) + " watched", string(watch.Modified) + " watched", string(watch.Deleted) + " watched"}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("got %v, want %v", got, want)
		}
		if s.Metric(t, "harikube_apiserver_pushdown_requests_total", `verb="watch"`) < 1 {
			t.Fatal("the watch was not pushed down")
		}
		// The unrelated create reached the datastore's watch before the
		// DELETED event did, and was not sent. The counter is the whole
		// datastore's: it shows the datastore filtering, the events above
		// show that this watch got only its own.
		if filtered := s.Metric(t, "harikube_datastore_watch_events_filtered_total") - filteredBefore; filtered < 1 {
			t.Fatalf("harikube_datastore_watch_events_filtered_total rose by %v across an unrelated create", filtered)
		}
	})
}

// TestBuiltinFieldSelectors: field selectors from the resources' own
// attribute functions — pods' spec.nodeName (pods served from the datastore
// here) and events' involvedObject.name — are pushed down and exact.
func TestBuiltinFieldSelectors(t *testing.T) { forEachDatastore(t, testBuiltinFieldSelectors) }

func testBuiltinFieldSelectors(t *testing.T, datastoreArgs []string) {
	s := testserver.Start(t, append(datastoreArgs, "--kube-apiserver-arg=watch-cache-sizes=pods#0")...)
	ctx := context.Background()
	waitDefaultServiceAccount(t, s)
	for i, node := range []string{"node1", "node10", "node1", ""} {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%d", i), Namespace: "default"},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
		}
		if _, err := s.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	before := s.Metric(t, "harikube_datastore_selection_requests_total", `resource="pods"`)
	pods, err := s.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=node1"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range pods.Items {
		got = append(got, p.Name)
	}
	if fmt.Sprint(got) != "[p0 p2]" {
		t.Fatalf("spec.nodeName=node1: got %v (no substring matches allowed)", got)
	}
	if s.Metric(t, "harikube_datastore_selection_requests_total", `resource="pods"`) <= before {
		t.Fatal("pod field selector did not reach the datastore")
	}
	// A WATCH's selection reaches the datastore too (counted as resource
	// "any"), which drops the events that cannot match.
	watches := s.Metric(t, "harikube_datastore_selection_requests_total", `resource="any"`, `kind="watch"`)
	filtered := s.Metric(t, "harikube_datastore_watch_events_filtered_total")
	w, err := s.Client.CoreV1().Pods("default").Watch(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=node1", ResourceVersion: pods.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for _, p := range []struct{ name, node string }{{"elsewhere", "node2"}, {"here", "node1"}} {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: "default"},
			Spec:       corev1.PodSpec{NodeName: p.node, Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
		}
		if _, err := s.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Events of p0 and p2 (on node1 too) may come first: the pod garbage
	// collector deletes pods of nodes that do not exist.
	timeout := time.After(30 * time.Second)
	for added := false; !added; {
		select {
		case ev := <-w.ResultChan():
			p, ok := ev.Object.(*corev1.Pod)
			switch {
			case !ok || p.Spec.NodeName != "node1":
				t.Fatalf("watch spec.nodeName=node1: event %s %v, which the selector does not match", ev.Type, ev.Object)
			case p.Name == "here":
				added = ev.Type == watch.Added
				if !added {
					t.Fatalf("watch spec.nodeName=node1: %s pod here, want ADDED", ev.Type)
				}
			}
		case <-timeout:
			t.Fatal("watch spec.nodeName=node1: no ADDED pod here in 30 s")
		}
	}
	if got := s.Metric(t, "harikube_datastore_selection_requests_total", `resource="any"`, `kind="watch"`); got <= watches {
		t.Errorf("selection watches: %v before the WATCH, %v after; the WATCH's selection did not reach the datastore", watches, got)
	}
	if got := s.Metric(t, "harikube_datastore_watch_events_filtered_total"); got <= filtered {
		t.Errorf("watch events filtered in the datastore: %v before the pod on node2, %v after", filtered, got)
	}
	pods, err = s.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName!=node1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != 3 {
		t.Fatalf("spec.nodeName!=node1: got %d pods, want 3", len(pods.Items))
	}

	for i, involved := range []string{"web", "web-1", "web"} {
		ev := &corev1.Event{
			ObjectMeta:     metav1.ObjectMeta{Name: fmt.Sprintf("e%d", i), Namespace: "default"},
			InvolvedObject: corev1.ObjectReference{Kind: "Pod", Name: involved, Namespace: "default"},
			Reason:         "Test", Message: "m", Type: corev1.EventTypeNormal,
		}
		if _, err := s.Client.CoreV1().Events("default").Create(ctx, ev, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	events, err := s.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("involvedObject.name", "web").String()})
	if err != nil {
		t.Fatal(err)
	}
	if len(events.Items) != 2 {
		t.Fatalf("involvedObject.name=web: got %d events, want 2", len(events.Items))
	}
	if s.Metric(t, "harikube_datastore_selection_requests_total", `resource="events"`) < 1 {
		t.Fatal("event field selector did not reach the datastore")
	}
}

func waitDefaultServiceAccount(t *testing.T, s *testserver.Server) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := s.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatal("default service account not created")
	}
}

// TestMalformedSelectors: bad selectors get HTTP 400 with the upstream
// wording, and the server keeps serving.
func TestMalformedSelectors(t *testing.T) {
	s := testserver.Start(t)
	rt, err := rest.TransportFor(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: rt, Timeout: 10 * time.Second}
	cases := []struct{ query, want string }{
		{"labelSelector=" + url.QueryEscape("app in (a"), "unable to parse requirement"},
		{"labelSelector=" + url.QueryEscape("app in (a b)"), "unable to parse requirement"},
		{"labelSelector=" + url.QueryEscape("a b"), "found 'b', expected"},
		{"fieldSelector=" + url.QueryEscape("spec.unknown=x"), "field label not supported: spec.unknown"},
		{"labelSelector=" + url.QueryEscape(strings.Repeat("k", 64)+"=v"), "name part must be no more than 63 bytes"},
	}
	for _, tc := range cases {
		resp, err := client.Get(s.Config.Host + "/api/v1/namespaces/default/pods?" + tc.query)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), tc.want) {
			t.Errorf("%s: %d %s; want 400 containing %q", tc.query, resp.StatusCode, body, tc.want)
		}
	}
	if _, err := s.Client.CoreV1().Namespaces().List(context.Background(), metav1.ListOptions{}); err != nil {
		t.Fatalf("server unusable after bad selectors: %v", err)
	}
}

// TestDifferentialThroughServer compares, for at least 10,000 random label
// and field selectors, what the server returns with pushdown against the
// upstream predicate applied to a full unfiltered list.
func TestDifferentialThroughServer(t *testing.T) { forEachDatastore(t, testDifferentialThroughServer) }

func testDifferentialThroughServer(t *testing.T, datastoreArgs []string) {
	s := testserver.Start(t, datastoreArgs...)
	dyn := createGadgetCRD(t, s.Config)
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 1))
	keys := []string{"a", "b", "c", "tier"}
	values := []string{"1", "2", "10", "x", "y", "007"}
	colors := []string{"red", "blue", "", "red-ish"}
	var objs []*unstructured.Unstructured
	for i := range 150 {
		l := map[string]string{}
		for _, k := range keys {
			if rng.IntN(3) > 0 {
				l[k] = values[rng.IntN(len(values))]
			}
		}
		objs = append(objs, gadget(fmt.Sprintf("d%03d", i), l, colors[rng.IntN(len(colors))]))
	}
	createAll(t, dyn, objs)
	// Some objects change afterwards, so older revisions exist too.
	for i := 0; i < 50; i++ {
		o := objs[rng.IntN(len(objs))]
		cur, err := dyn.Namespace("default").Get(context.Background(), o.GetName(), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		l := cur.GetLabels()
		if l == nil {
			l = map[string]string{}
		}
		l[keys[rng.IntN(len(keys))]] = values[rng.IntN(len(values))]
		cur.SetLabels(l)
		if _, err := dyn.Namespace("default").Update(context.Background(), cur, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	all, err := dyn.Namespace("default").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}

	randomLabelSelector := func() string {
		var reqs []string
		for range 1 + rng.IntN(3) {
			k := keys[rng.IntN(len(keys))]
			v := values[rng.IntN(len(values))]
			switch rng.IntN(9) {
			case 0:
				reqs = append(reqs, k+"="+v)
			case 1:
				reqs = append(reqs, k+"=="+v)
			case 2:
				reqs = append(reqs, k+"!="+v)
			case 3:
				reqs = append(reqs, fmt.Sprintf("%s in (%s,%s)", k, v, values[rng.IntN(len(values))]))
			case 4:
				reqs = append(reqs, fmt.Sprintf("%s notin (%s,%s)", k, v, values[rng.IntN(len(values))]))
			case 5:
				reqs = append(reqs, k)
			case 6:
				reqs = append(reqs, "!"+k)
			case 7:
				reqs = append(reqs, fmt.Sprintf("%s>%d", k, rng.IntN(12)-1))
			case 8:
				reqs = append(reqs, fmt.Sprintf("%s<%d", k, rng.IntN(12)-1))
			}
		}
		return strings.Join(reqs, ",")
	}
	randomFieldSelector := func() string {
		switch rng.IntN(4) {
		case 0:
			return ""
		case 1:
			return "spec.color=" + colors[rng.IntN(len(colors))]
		case 2:
			return "spec.color!=" + colors[rng.IntN(len(colors))]
		default:
			return fmt.Sprintf("metadata.name=d%03d", rng.IntN(170))
		}
	}
	type query struct{ label, field string }
	const cases = 10000
	queries := make([]query, cases)
	for i := range queries {
		queries[i] = query{randomLabelSelector(), randomFieldSelector()}
	}
	var mu sync.Mutex
	var failures []string
	var wg sync.WaitGroup
	next := make(chan query)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for q := range next {
				ls, err := labels.Parse(q.label)
				if err != nil {
					continue // the generator made a selector upstream rejects
				}
				fs, err := fields.ParseSelector(q.field)
				if err != nil {
					continue
				}
				var want []string
				for _, o := range all.Items {
					f := fields.Set{"metadata.name": o.GetName(), "metadata.namespace": o.GetNamespace(), "spec.color": o.Object["spec"].(map[string]any)["color"].(string)}
					if ls.Matches(labels.Set(o.GetLabels())) && fs.Matches(f) {
						want = append(want, o.GetName())
					}
				}
				sort.Strings(want)
				list, err := dyn.Namespace("default").List(context.Background(), metav1.ListOptions{LabelSelector: q.label, FieldSelector: q.field})
				mu.Lock()
				if err != nil {
					failures = append(failures, fmt.Sprintf("%q %q: %v", q.label, q.field, err))
				} else if got := names(list.Items); fmt.Sprint(got) != fmt.Sprint(want) {
					failures = append(failures, fmt.Sprintf("%q %q: got %v, want %v", q.label, q.field, got, want))
				}
				mu.Unlock()
			}
		}()
	}
	for _, q := range queries {
		next <- q
	}
	close(next)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d selectors differ from the upstream predicate, e.g. %s", len(failures), cases, failures[0])
	}
	if pushed := s.Metric(t, "harikube_apiserver_pushdown_requests_total", `resource="gadgets.pushdown.harikube.io"`); pushed < cases/2 {
		t.Fatalf("only %v of %d lists were pushed down", pushed, cases)
	}
	t.Logf("%d selectors matched the upstream predicate", cases)
}

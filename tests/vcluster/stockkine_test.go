package vcluster

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
)

// stockKine builds, once and cached outside the repository, the kine that
// vCluster 0.25 to 0.32 ship as /usr/local/bin/kine: k3s-io/kine at the
// KINE_VERSION of v0.30.0's Dockerfile (v0.14.4), built as kine builds it.
func stockKine(t *testing.T) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(filepath.Join(repoRoot(t), "scripts", "build-vcluster-syncer"), "--kine-only", "v0.30.0")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("scripts/build-vcluster-syncer --kine-only v0.30.0: %v\n%s", err, stderr.String())
	}
	lines := strings.Fields(string(out))
	if len(lines) == 0 {
		t.Fatalf("scripts/build-vcluster-syncer printed no cache directory\n%s", stderr.String())
	}
	kine := filepath.Join(lines[len(lines)-1], "kine")
	// The binary is the stock one, not harikube's kine role.
	if v, err := exec.Command(kine, "--version").CombinedOutput(); err != nil || !strings.HasPrefix(string(v), "kine version v0.14.4 ") {
		t.Fatalf("%s --version: %q, %v; want kine version v0.14.4", kine, v, err)
	}
	return kine
}

// checkStockKineSelectors: the stock kine knows nothing of the selection
// harikube's apiserver attaches to its etcd requests, so it answers each
// LIST and WATCH in full and the apiserver filters, as upstream does. LISTs
// (whole, paged and at resourceVersion 0) equal upstream's predicate over
// the unfiltered LIST, and a label WATCH sees objects enter and leave.
func checkStockKineSelectors(t *testing.T, c *cluster) {
	t.Helper()
	admin := restConfig(t, c.adminConf)
	dyn := dynamic.NewForConfigOrDie(admin)
	things := schema.GroupVersionResource{Group: "stock.harikube.io", Version: "v1", Resource: "stockthings"}
	createRoleCRD(t, apiextensionsclient.NewForConfigOrDie(admin), dyn, things, "StockThing", nil, c.procs...)
	res := dyn.Resource(things).Namespace("default")
	ctx := context.Background()

	tier0 := metav1.ListOptions{LabelSelector: "tier=0"}
	start, err := res.List(ctx, tier0)
	if err != nil {
		t.Fatal(err)
	}
	tier0.ResourceVersion = start.GetResourceVersion()
	w, err := res.Watch(ctx, tier0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	const n = 30
	var want []string // the WATCH's events, in order
	for i := range n {
		u := &unstructured.Unstructured{}
		u.SetGroupVersionKind(things.GroupVersion().WithKind("StockThing"))
		u.SetName(fmt.Sprintf("thing-%02d", i))
		if i%5 != 4 { // every fifth has no tier label
			u.SetLabels(map[string]string{"tier": strconv.Itoa(i % 3)})
		}
		if _, err := res.Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if u.GetLabels()["tier"] == "0" {
			want = append(want, "ADDED "+u.GetName())
		}
	}
	relabel := func(name, tier string) {
		patch := fmt.Sprintf(`{"metadata":{"labels":{"tier":%q}}}`, tier)
		if _, err := res.Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	relabel("thing-01", "0") // enters the selection
	relabel("thing-00", "2") // leaves it
	want = append(want, "ADDED thing-01", "DELETED thing-00")

	var got []string
	timeout := time.After(time.Minute)
	for len(got) < len(want) {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatalf("the WATCH tier=0 ended after %q", got)
			}
			if ev.Type == watch.Error {
				t.Fatalf("the WATCH tier=0: %v", ev.Object)
			}
			got = append(got, string(ev.Type)+" "+ev.Object.(*unstructured.Unstructured).GetName())
		case <-timeout:
			t.Fatalf("the WATCH tier=0 gave %q within a minute, want %q", got, want)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("the WATCH tier=0 gave %q, want %q", got, want)
	}

	all, err := res.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Items) != n {
		t.Fatalf("%d things, want %d", len(all.Items), n)
	}
	for _, q := range []struct{ labels, fields string }{
		{labels: "tier=0"}, {labels: "tier in (1,2)"}, {labels: "tier!=0"}, {labels: "!tier"}, {labels: "tier"},
		{labels: "tier notin (0)"}, {fields: "metadata.name=thing-07"}, {labels: "tier=1", fields: "metadata.name!=thing-07"},
	} {
		ls, err := labels.Parse(q.labels)
		if err != nil {
			t.Fatal(err)
		}
		fs, err := fields.ParseSelector(q.fields)
		if err != nil {
			t.Fatal(err)
		}
		var expected []string
		for _, u := range all.Items {
			if ls.Matches(labels.Set(u.GetLabels())) && fs.Matches(fields.Set{"metadata.name": u.GetName(), "metadata.namespace": u.GetNamespace()}) {
				expected = append(expected, u.GetName())
			}
		}
		if len(expected) == 0 || len(expected) == n {
			t.Fatalf("%+v selects %d of %d: a query that cannot tell a filter from none", q, len(expected), n)
		}
		for _, opts := range []metav1.ListOptions{
			{LabelSelector: q.labels, FieldSelector: q.fields},
			{LabelSelector: q.labels, FieldSelector: q.fields, Limit: 4},
			{LabelSelector: q.labels, FieldSelector: q.fields, ResourceVersion: "0"},
		} {
			var names []string
			for {
				page, err := res.List(ctx, opts)
				if err != nil {
					t.Fatalf("%+v: %v", opts, err)
				}
				for _, u := range page.Items {
					names = append(names, u.GetName())
				}
				if opts.Continue = page.GetContinue(); opts.Continue == "" {
					break
				}
			}
			if !slices.Equal(names, expected) {
				t.Errorf("LIST %+v: %q, want %q (upstream's predicate over the whole LIST)", opts, names, expected)
			}
		}
	}
}

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/harikube/harikube/tests/testserver"
)

// gizmos change definition in these tests; group and names are their own so
// the CRD can be edited freely.
const gizmoGroup = "definition.harikube.io"

func gizmoCRD() *apiextensionsv1.CustomResourceDefinition {
	return &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: "gizmos." + gizmoGroup},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group:    gizmoGroup,
			Names:    apiextensionsv1.CustomResourceDefinitionNames{Plural: "gizmos", Kind: "Gizmo", ListKind: "GizmoList"},
			Scope:    apiextensionsv1.NamespaceScoped,
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{gizmoVersion("v1", true, "", "color")},
		},
	}
}

// gizmoVersion is a version whose spec has color (defaulted to def unless def
// is "") and size, with the named spec fields selectable. (Versions whose
// selectable fields are the same but whose schemas differ are refused by
// the apiserver's validation, so the tests' versions keep them apart.)
func gizmoVersion(name string, storage bool, def string, selectable ...string) apiextensionsv1.CustomResourceDefinitionVersion {
	var fields []apiextensionsv1.SelectableField
	for _, f := range selectable {
		fields = append(fields, apiextensionsv1.SelectableField{JSONPath: ".spec." + f})
	}
	color := apiextensionsv1.JSONSchemaProps{Type: "string"}
	if def != "" {
		color.Default = &apiextensionsv1.JSON{Raw: []byte(fmt.Sprintf("%q", def))}
	}
	return apiextensionsv1.CustomResourceDefinitionVersion{
		Name: name, Served: true, Storage: storage,
		SelectableFields: fields,
		Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
			Type: "object",
			Properties: map[string]apiextensionsv1.JSONSchemaProps{"spec": {Type: "object", Default: &apiextensionsv1.JSON{Raw: []byte("{}")},
				Properties: map[string]apiextensionsv1.JSONSchemaProps{"color": color, "size": {Type: "string"}}}},
		}},
	}
}

// gizmoSelectors are asked of every served version after every change.
var gizmoSelectors = []string{"spec.color=blue", "spec.color=green", "spec.color=red", "spec.color=", "spec.color!=blue", "spec.size=big"}

// TestDefinitionChanges edits a CRD the way its owners do — a default added
// and changed, a second version with other defaults, the storage version
// moved, a selectable field added — and after each edit compares every field
// selector LIST (whole, and paged with limit/continue, at an exact
// resourceVersion) with the upstream predicate applied to the full LIST at
// the same resourceVersion, from the moment of the edit on: while the index
// is re-indexed and after. A field-selector WATCH started after the edit sees
// an object that only the new definition makes match. At the end the server
// restarts with --selector-pushdown=false on the same data and must answer
// every selector the same.
func TestDefinitionChanges(t *testing.T) { forEachDatastore(t, testDefinitionChanges) }

func testDefinitionChanges(t *testing.T, datastoreArgs []string) {
	s := testserver.Start(t, datastoreArgs...)
	ext := apiextensionsclient.NewForConfigOrDie(s.Config)
	ctx := context.Background()
	crd, err := ext.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, gizmoCRD(), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v1 := gizmoGVR("v1")
	pollUntil(t, "gizmos served", func(ctx context.Context) bool {
		_, err := dynamic.NewForConfigOrDie(s.Config).Resource(v1).Namespace("default").List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil
	})
	var objs []*unstructured.Unstructured
	for i := range 300 {
		spec := map[string]any{}
		switch i % 4 {
		case 1:
			spec["color"] = "red"
		case 2:
			spec["color"] = "blue"
		case 3:
			spec["size"] = "big"
		}
		objs = append(objs, &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": gizmoGroup + "/v1", "kind": "Gizmo",
			"metadata": map[string]any{"name": fmt.Sprintf("g%03d", i), "namespace": "default"},
			"spec":     spec,
		}})
	}
	createAll(t, dynamic.NewForConfigOrDie(s.Config).Resource(v1), objs)
	checkGizmos(t, s.Config, []string{"v1"}, time.Second)

	edits := []struct {
		name     string
		edit     func(*apiextensionsv1.CustomResourceDefinition)
		versions []string
	}{
		{"default added", func(c *apiextensionsv1.CustomResourceDefinition) {
			c.Spec.Versions[0] = gizmoVersion("v1", true, "blue", "color")
		}, []string{"v1"}},
		{"default changed", func(c *apiextensionsv1.CustomResourceDefinition) {
			c.Spec.Versions[0] = gizmoVersion("v1", true, "green", "color")
		}, []string{"v1"}},
		{"second version with another default and another selectable field", func(c *apiextensionsv1.CustomResourceDefinition) {
			c.Spec.Versions = []apiextensionsv1.CustomResourceDefinitionVersion{gizmoVersion("v1", true, "green", "color"), gizmoVersion("v2", false, "blue", "color", "size")}
		}, []string{"v1", "v2"}},
		{"storage version moved", func(c *apiextensionsv1.CustomResourceDefinition) {
			c.Spec.Versions = []apiextensionsv1.CustomResourceDefinitionVersion{gizmoVersion("v1", false, "green", "color"), gizmoVersion("v2", true, "blue", "color", "size")}
		}, []string{"v1", "v2"}},
		{"storage version's default removed", func(c *apiextensionsv1.CustomResourceDefinition) {
			c.Spec.Versions = []apiextensionsv1.CustomResourceDefinitionVersion{gizmoVersion("v1", false, "green", "color"), gizmoVersion("v2", true, "", "color", "size")}
		}, []string{"v1", "v2"}},
		{"selectable field moved between versions", func(c *apiextensionsv1.CustomResourceDefinition) {
			c.Spec.Versions = []apiextensionsv1.CustomResourceDefinitionVersion{gizmoVersion("v1", false, "green", "color", "size"), gizmoVersion("v2", true, "", "color")}
		}, []string{"v1", "v2"}},
	}
	for _, e := range edits {
		t.Run(e.name, func(t *testing.T) {
			crd, err = ext.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, crd.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			e.edit(crd)
			if crd, err = ext.ApiextensionsV1().CustomResourceDefinitions().Update(ctx, crd, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			// From the edit on, while the apiserver rebuilds the storage and
			// the datastore re-indexes.
			checkGizmos(t, s.Config, e.versions, 10*time.Second)
			if e.name == "default added" {
				// g000 is stored without a color: only the new default
				// makes it match.
				checkGizmoWatch(t, s.Config, "v1", "spec.color=blue", "g000")
			}
		})
	}

	// Once re-indexed, every indexed value is what the definition as it is
	// now computes (the running server recomputes them all).
	check := append([]string{"datastore", "check", "--data-dir", s.DataDir}, datastoreArgs...)
	pollUntil(t, "a check with every resource re-indexed", func(context.Context) bool {
		out, code := s.Run(t, check...)
		if code != 0 {
			t.Fatalf("datastore check after the definition changes: exit %d\n%s", code, out)
		}
		return !strings.Contains(out, "being re-indexed") && strings.Contains(out, "recomputed from the current definitions")
	})

	// Upstream behaviour on the same data: every selector answers the same.
	want := gizmoAnswers(t, s.Config, []string{"v1", "v2"})
	s.Stop(t)
	s.Args = append(append([]string{}, s.Args...), "--selector-pushdown=false")
	s.Restart(t)
	if got := gizmoAnswers(t, s.Config, []string{"v1", "v2"}); !slices.Equal(got, want) {
		t.Fatalf("with pushdown:\n%v\nwith --selector-pushdown=false on the same data:\n%v", want, got)
	}
	for _, m := range []string{"harikube_apiserver_pushdown_requests_total", "harikube_datastore_selection_requests_total", "harikube_datastore_selection_rows_total"} {
		if v := s.Metric(t, m); v != 0 {
			t.Errorf("%s = %v with --selector-pushdown=false, want 0", m, v)
		}
	}
}

func gizmoGVR(version string) schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: gizmoGroup, Version: version, Resource: "gizmos"}
}

// checkGizmos compares every selector at every version with the predicate
// for at least d (and until two rounds in a row agreed after it).
func checkGizmos(t *testing.T, cfg *rest.Config, versions []string, d time.Duration) {
	t.Helper()
	end := time.Now().Add(d)
	for round := 0; ; round++ {
		for _, v := range versions {
			compareGizmos(t, cfg, v)
		}
		if time.Now().After(end) && round > 1 {
			return
		}
	}
}

// compareGizmos lists every selector at one exact resourceVersion, whole and
// in pages of 7, and compares each with the full list at that version
// filtered the way upstream's field selector does.
func compareGizmos(t *testing.T, cfg *rest.Config, version string) {
	t.Helper()
	ctx := context.Background()
	dyn := dynamic.NewForConfigOrDie(cfg).Resource(gizmoGVR(version)).Namespace("default")
	all, err := dyn.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rv := all.GetResourceVersion()
	exact := metav1.ListOptions{ResourceVersion: rv, ResourceVersionMatch: metav1.ResourceVersionMatchExact}
	for _, sel := range gizmoSelectors {
		key, _, _ := parseFieldSelector(sel)
		if key == "spec.size" && !selectable(t, cfg, version, "spec.size") {
			continue
		}
		opts := exact
		opts.FieldSelector = sel
		got, err := dyn.List(ctx, opts)
		if err != nil {
			t.Fatalf("%s %s at %s: %v", version, sel, rv, err)
		}
		// While the apiserver swaps the storage of an edited CRD, two reads
		// may see two definitions (upstream too): the predicate is only
		// asked of a full list that reads the same before and after.
		again, err := dyn.List(ctx, exact)
		if err != nil {
			t.Fatal(err)
		}
		want := gizmoPredicate(all, sel)
		if !slices.Equal(want, gizmoPredicate(again, sel)) {
			return
		}
		if n := names(got.Items); !slices.Equal(n, want) {
			t.Fatalf("%s %s at resourceVersion %s: got %d objects, the predicate on the full list gives %d\nmissing: %v\nextra: %v",
				version, sel, rv, len(n), len(want), minus(want, n), minus(n, want))
		}
		var paged []string
		opts.Limit = 7
		for {
			page, err := dyn.List(ctx, opts)
			if err != nil {
				t.Fatalf("%s %s page: %v", version, sel, err)
			}
			for _, o := range page.Items {
				paged = append(paged, o.GetName())
			}
			if page.GetContinue() == "" {
				break
			}
			opts.Continue, opts.ResourceVersion, opts.ResourceVersionMatch = page.GetContinue(), "", ""
		}
		sort.Strings(paged)
		if !slices.Equal(paged, want) {
			if after, err := dyn.List(ctx, exact); err == nil && !slices.Equal(want, gizmoPredicate(after, sel)) {
				return // the definition changed while paging
			}
			t.Fatalf("%s %s paged by 7: missing %v, extra %v", version, sel, minus(want, paged), minus(paged, want))
		}
	}
}

// gizmoPredicate is upstream's field selector on the listed objects: a
// missing field reads as "".
func gizmoPredicate(all *unstructured.UnstructuredList, sel string) []string {
	key, op, val := parseFieldSelector(sel)
	want := []string{}
	for _, o := range all.Items {
		have, _, _ := unstructured.NestedString(o.Object, "spec", strings.TrimPrefix(key, "spec."))
		if (op == "=") == (have == val) {
			want = append(want, o.GetName())
		}
	}
	sort.Strings(want)
	return want
}

func parseFieldSelector(sel string) (key, op, val string) {
	if k, v, ok := strings.Cut(sel, "!="); ok {
		return k, "!=", v
	}
	k, v, _ := strings.Cut(sel, "=")
	return k, "=", v
}

func selectable(t *testing.T, cfg *rest.Config, version, field string) bool {
	t.Helper()
	crd, err := apiextensionsclient.NewForConfigOrDie(cfg).ApiextensionsV1().CustomResourceDefinitions().Get(context.Background(), "gizmos."+gizmoGroup, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range crd.Spec.Versions {
		if v.Name == version {
			return slices.ContainsFunc(v.SelectableFields, func(f apiextensionsv1.SelectableField) bool { return f.JSONPath == "."+field })
		}
	}
	return false
}

func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// gizmoAnswers is every selector's sorted answer at every version.
func gizmoAnswers(t *testing.T, cfg *rest.Config, versions []string) []string {
	t.Helper()
	var out []string
	for _, v := range versions {
		dyn := dynamic.NewForConfigOrDie(cfg).Resource(gizmoGVR(v)).Namespace("default")
		for _, sel := range gizmoSelectors {
			if key, _, _ := parseFieldSelector(sel); key == "spec.size" && !selectable(t, cfg, v, key) {
				continue
			}
			var got *unstructured.UnstructuredList
			pollUntil(t, "list "+sel, func(ctx context.Context) bool {
				var err error
				got, err = dyn.List(ctx, metav1.ListOptions{FieldSelector: sel})
				return err == nil
			})
			out = append(out, fmt.Sprintf("%s %s: %v", v, sel, names(got.Items)))
		}
	}
	return out
}

// checkGizmoWatch: a watch on sel must see target change when it matches.
func checkGizmoWatch(t *testing.T, cfg *rest.Config, version, sel, target string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dyn := dynamic.NewForConfigOrDie(cfg).Resource(gizmoGVR(version)).Namespace("default")
	list, err := dyn.List(ctx, metav1.ListOptions{FieldSelector: sel})
	if err != nil || !slices.Contains(names(list.Items), target) {
		t.Fatalf("%s lists %v (err %v) without %s", sel, names(list.Items), err, target)
	}
	w, err := dyn.Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: list.GetResourceVersion()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]string{"touched": "yes"}}})
	if _, err := dyn.Patch(ctx, target, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatal("watch closed before the event")
			}
			if ev.Type == watch.Modified {
				if o, ok := ev.Object.(*unstructured.Unstructured); ok && o.GetName() == target {
					return
				}
			}
		case <-ctx.Done():
			t.Fatalf("no MODIFIED event for %s on a %s watch", target, sel)
		}
	}
}

package e2e

import (
	"context"
	"fmt"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/harikube/harikube/tests/testserver"
)

var plainThings = schema.GroupVersionResource{Group: "plain.harikube.io", Version: "v1", Resource: "things"}

// TestCustomResourceWithoutSelectableFields covers the reduced extractor of
// a large schema: reading only metadata (no selectable fields), label and
// namespace selectors are answered by the datastore with exact results; once
// the CRD gains a selectable field, values reduced to its path answer its
// field selector in the datastore too.
func TestCustomResourceWithoutSelectableFields(t *testing.T) {
	forEachDatastore(t, testCustomResourceWithoutSelectableFields)
}

func testCustomResourceWithoutSelectableFields(t *testing.T, datastoreArgs []string) {
	s := testserver.Start(t, datastoreArgs...)
	ctx := context.Background()
	ext := apiextensionsclient.NewForConfigOrDie(s.Config)
	// A schema large enough (100 settings) for the reduced value.
	settings := map[string]apiextensionsv1.JSONSchemaProps{}
	for i := range 100 {
		settings[fmt.Sprintf("s%03d", i)] = apiextensionsv1.JSONSchemaProps{Type: "string"}
	}
	version := apiextensionsv1.CustomResourceDefinitionVersion{
		Name: "v1", Served: true, Storage: true,
		Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
			Type: "object",
			Properties: map[string]apiextensionsv1.JSONSchemaProps{"spec": {Type: "object", Properties: map[string]apiextensionsv1.JSONSchemaProps{
				"color":    {Type: "string", Default: &apiextensionsv1.JSON{Raw: []byte(`"grey"`)}},
				"size":     {Type: "integer"},
				"settings": {Type: "object", Properties: settings},
			}}},
		}},
	}
	crd, err := ext.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: plainThings.Resource + "." + plainThings.Group},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group:    plainThings.Group,
			Names:    apiextensionsv1.CustomResourceDefinitionNames{Plural: plainThings.Resource, Kind: "Thing", ListKind: "ThingList"},
			Scope:    apiextensionsv1.NamespaceScoped,
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{version},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dyn := dynamic.NewForConfigOrDie(s.Config).Resource(plainThings)
	pollUntil(t, "things served", func(ctx context.Context) bool {
		_, err := dyn.Namespace("default").List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil
	})
	const n = 200
	var objs []*unstructured.Unstructured
	for i := range n {
		spec := map[string]any{"size": int64(i), "settings": map[string]any{"s007": "x", "s042": fmt.Sprint(i)}}
		if i%4 == 1 {
			spec["color"] = "red"
		} // else defaulted to grey when written
		objs = append(objs, &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": plainThings.GroupVersion().String(), "kind": "Thing",
			"metadata": map[string]any{"name": fmt.Sprintf("t%03d", i), "namespace": "default",
				"labels": map[string]any{"tier": fmt.Sprint(i % 20)}},
			"spec": spec,
		}})
	}
	createAll(t, dyn, objs)

	resource := `resource="` + plainThings.Resource + "." + plainThings.Group + `"`
	listed := func(t *testing.T, opts metav1.ListOptions) ([]string, float64) {
		t.Helper()
		before := s.Metric(t, "harikube_datastore_selection_rows_total", resource)
		list, err := dyn.Namespace("default").List(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		return names(list.Items), s.Metric(t, "harikube_datastore_selection_rows_total", resource) - before
	}
	t.Run("label selector", func(t *testing.T) {
		got, rows := listed(t, metav1.ListOptions{LabelSelector: "tier=7"})
		want := "[t007 t027 t047 t067 t087 t107 t127 t147 t167 t187]"
		if fmt.Sprint(got) != want {
			t.Fatalf("got %v, want %v", got, want)
		}
		if rows == 0 || rows > 10 {
			t.Fatalf("datastore returned %v rows for 10 matches", rows)
		}
	})
	t.Run("namespace and label selector", func(t *testing.T) {
		got, rows := listed(t, metav1.ListOptions{LabelSelector: "tier in (3,4)", FieldSelector: "metadata.namespace=default"})
		if len(got) != 20 || rows == 0 || rows > 20 {
			t.Fatalf("got %v from %v datastore rows, want 20", got, rows)
		}
	})

	t.Run("selectable field added", func(t *testing.T) {
		crd, err = ext.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, crd.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		crd.Spec.Versions[0].SelectableFields = []apiextensionsv1.SelectableField{{JSONPath: ".spec.settings.s042"}}
		if _, err := ext.ApiextensionsV1().CustomResourceDefinitions().Update(ctx, crd, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// Exact from the first answer; the datastore answers it alone once
		// the objects are extracted again, from values reduced to the path.
		pollUntil(t, "spec.settings.s042=42 answered by the datastore", func(context.Context) bool {
			list, err := dyn.Namespace("default").List(ctx, metav1.ListOptions{FieldSelector: "spec.settings.s042=42"})
			if err != nil {
				return false
			}
			if got := fmt.Sprint(names(list.Items)); got != "[t042]" {
				t.Fatalf("spec.settings.s042=42 returned %v, want [t042]", got)
			}
			_, rows := listed(t, metav1.ListOptions{FieldSelector: "spec.settings.s042=42"})
			return rows == 1
		})
		if got, rows := listed(t, metav1.ListOptions{FieldSelector: "spec.settings.s042=42,metadata.namespace=default", LabelSelector: "tier=2"}); fmt.Sprint(got) != "[t042]" || rows != 1 {
			t.Fatalf("with a label and a namespace: %v from %v datastore rows", got, rows)
		}
	})
}

package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/diff"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"

	"github.com/harikube/harikube/tests/testserver"
)

const reuseGroup = "reuse.harikube.io"

// reuseVersion has its own default for spec.color, and the storage version
// has a field the other prunes, so the same stored bytes decode differently
// in each version; the rest covers what decoding does to
// a value: pruning, int-or-string, preserved unknown fields, an embedded
// object and a nullable field.
func reuseVersion(name string, storage bool, colorDefault string) apiextensionsv1.CustomResourceDefinitionVersion {
	v := apiextensionsv1.CustomResourceDefinitionVersion{
		Name: name, Served: true, Storage: storage,
		Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
			Type: "object",
			Properties: map[string]apiextensionsv1.JSONSchemaProps{"spec": {Type: "object", Properties: map[string]apiextensionsv1.JSONSchemaProps{
				"color":    {Type: "string", Default: &apiextensionsv1.JSON{Raw: []byte(fmt.Sprintf("%q", colorDefault))}},
				"size":     {Type: "integer"},
				"port":     {XIntOrString: true, AnyOf: []apiextensionsv1.JSONSchemaProps{{Type: "integer"}, {Type: "string"}}},
				"free":     {Type: "object", XPreserveUnknownFields: ptrTo(true)},
				"template": {Type: "object", XEmbeddedResource: true, XPreserveUnknownFields: ptrTo(true)},
				"note":     {Type: "string", Nullable: true},
			}}},
		}},
	}
	if storage {
		// Only the storage version knows spec.extra: decoding in the other
		// prunes it.
		v.Schema.OpenAPIV3Schema.Properties["spec"].Properties["extra"] = apiextensionsv1.JSONSchemaProps{Type: "string"}
		v.SelectableFields = []apiextensionsv1.SelectableField{{JSONPath: ".spec.color"}}
	}
	return v
}

func reuseGVR(version string) schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: reuseGroup, Version: version, Resource: "reusers"}
}

// TestDecodedValuesReused covers the apiserver answering its decodes of a
// just-written custom resource (the write's answer, each watch's event) with
// a copy of what the datastore decoded while indexing the write. Every object
// it handed out, in the storage version and in a version with other
// defaults, is compared with what a fresh process decodes from the stored
// bytes at the same resourceVersion, where nothing is reused.
func TestDecodedValuesReused(t *testing.T) {
	s := testserver.Start(t)
	ctx := context.Background()
	ext := apiextensionsclient.NewForConfigOrDie(s.Config)
	crd, err := ext.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: "reusers." + reuseGroup},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group:    reuseGroup,
			Names:    apiextensionsv1.CustomResourceDefinitionNames{Plural: "reusers", Kind: "Reuser", ListKind: "ReuserList"},
			Scope:    apiextensionsv1.NamespaceScoped,
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{reuseVersion("v1", true, "grey"), reuseVersion("v2", false, "blue")},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dyn := dynamic.NewForConfigOrDie(s.Config)
	pollUntil(t, "the Reuser CRD is served", func(ctx context.Context) bool {
		_, err := dyn.Resource(reuseGVR("v2")).Namespace("default").List(ctx, metav1.ListOptions{})
		return err == nil
	})
	start, err := dyn.Resource(reuseGVR("v1")).Namespace("default").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// seen are the objects the server handed out, by version.
	seen := map[string][]*unstructured.Unstructured{}
	watchers := map[string]watch.Interface{}
	for _, v := range []string{"v1", "v2"} {
		w, err := dyn.Resource(reuseGVR(v)).Namespace("default").Watch(ctx, metav1.ListOptions{ResourceVersion: start.GetResourceVersion()})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		watchers[v] = w
	}
	reused := s.Metric(t, "harikube_apiserver_decoded_values_reused_total", crd.Name)

	const objects = 12
	for i := range objects {
		v := []string{"v1", "v2"}[i%2]
		spec := map[string]any{
			"size":     int64(i),
			"port":     []any{int64(8080), "http"}[i%2],
			"free":     map[string]any{"any": []any{"thing", int64(i), 1.5, nil}},
			"template": map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": "t"}, "data": map[string]any{"k": "v"}},
			"unknown":  "pruned",
			"extra":    "kept in v1 only",
		}
		if i%3 == 0 {
			spec["color"] = "red"
		}
		if i%4 == 0 {
			spec["note"] = nil
		}
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": reuseGroup + "/" + v, "kind": "Reuser",
			"metadata": map[string]any{"name": fmt.Sprintf("r%02d", i), "namespace": "default", "labels": map[string]any{"i": fmt.Sprint(i)}},
			"spec":     spec,
		}}
		created, err := dyn.Resource(reuseGVR(v)).Namespace("default").Create(ctx, obj, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		seen[v] = append(seen[v], created)
		patch := []byte(`{"metadata":{"labels":{"patched":"yes"}},"spec":{"size":100}}`)
		patched, err := dyn.Resource(reuseGVR(v)).Namespace("default").Patch(ctx, created.GetName(), types.MergePatchType, patch, metav1.PatchOptions{})
		if err != nil {
			t.Fatal(err)
		}
		seen[v] = append(seen[v], patched)
	}
	for v, w := range watchers {
		deadline := time.After(time.Minute)
		for got := 0; got < 2*objects; got++ {
			select {
			case ev, ok := <-w.ResultChan():
				if !ok {
					t.Fatalf("%s watch closed after %d events", v, got)
				}
				u, ok := ev.Object.(*unstructured.Unstructured)
				if !ok || (ev.Type != watch.Added && ev.Type != watch.Modified) {
					t.Fatalf("%s watch: unexpected %s event %T", v, ev.Type, ev.Object)
				}
				seen[v] = append(seen[v], u)
			case <-deadline:
				t.Fatalf("%s watch: %d of %d events in a minute", v, got, 2*objects)
			}
		}
	}
	// The writes through the storage version and both watches of each
	// write's value had the chance to reuse; a run where none did tests
	// nothing.
	if got := s.Metric(t, "harikube_apiserver_decoded_values_reused_total", crd.Name) - reused; got < objects {
		t.Fatalf("only %v decodes reused what indexing decoded, want at least %d", got, objects)
	}

	for _, w := range watchers {
		w.Stop()
	}
	s.Stop(t)
	s.Restart(t)
	dyn = dynamic.NewForConfigOrDie(s.Config)
	for v, objs := range seen {
		for _, want := range objs {
			list, err := dyn.Resource(reuseGVR(v)).Namespace("default").List(ctx, metav1.ListOptions{
				FieldSelector:        "metadata.name=" + want.GetName(),
				ResourceVersion:      want.GetResourceVersion(),
				ResourceVersionMatch: metav1.ResourceVersionMatchExact,
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(list.Items) != 1 {
				t.Fatalf("%s %s at %s: %d objects", v, want.GetName(), want.GetResourceVersion(), len(list.Items))
			}
			if !equality.Semantic.DeepEqual(want.Object, list.Items[0].Object) {
				t.Errorf("%s %s at %s handed out differs from a fresh decode:\n%s", v, want.GetName(), want.GetResourceVersion(), diff.Diff(list.Items[0].Object, want.Object))
			}
		}
	}
	if got := s.Metric(t, "harikube_apiserver_decoded_values_reused_total", crd.Name); got != 0 {
		t.Fatalf("the fresh process reused %v decodes; the comparison needs real ones", got)
	}
}

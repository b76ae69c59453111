package e2e

import (
	"context"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/harikube/harikube/tests/testserver"
)

// installColorCRD installs a namespaced CRD for gvr (kind as given) whose spec
// has the properties specProps and the selectable field spec.color, and
// waits until it is served.
func installColorCRD(t *testing.T, cfg *rest.Config, gvr schema.GroupVersionResource, kind string, specProps map[string]apiextensionsv1.JSONSchemaProps) dynamic.NamespaceableResourceInterface {
	t.Helper()
	crd := testserver.NamespacedCRD(gvr, kind, &apiextensionsv1.JSONSchemaProps{
		Type:       "object",
		Properties: map[string]apiextensionsv1.JSONSchemaProps{"spec": {Type: "object", Properties: specProps}},
	})
	crd.Spec.Versions[0].SelectableFields = []apiextensionsv1.SelectableField{{JSONPath: ".spec.color"}}
	ext := apiextensionsclient.NewForConfigOrDie(cfg)
	if _, err := ext.ApiextensionsV1().CustomResourceDefinitions().Create(context.Background(), crd, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create CRD %s: %v", crd.Name, err)
	}
	dyn := dynamic.NewForConfigOrDie(cfg).Resource(gvr)
	pollUntil(t, crd.Name+" served", func(ctx context.Context) bool {
		_, err := dyn.Namespace("default").List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil
	})
	return dyn
}

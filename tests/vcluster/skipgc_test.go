package vcluster

import (
	"context"
	"strings"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/harikube/harikube/pkg/controllermanager"
	"github.com/harikube/harikube/tests/testserver"
)

// checkSkipGCAndQuota: the kube-apiserver role honours the CRD annotation
// harikube.io/skip-gc-and-quota as `harikube server` does (tests/e2e
// TestSkipGCAndQuota covers the rest): the controller manager, a process of
// its own here, watches the followed resource and never the opted-out one,
// and a foreground deletion of an opted-out object is refused, not left
// hanging.
func checkSkipGCAndQuota(t *testing.T, c *cluster) {
	t.Helper()
	admin := restConfig(t, c.adminConf)
	ext := apiextensionsclient.NewForConfigOrDie(admin)
	dyn := dynamic.NewForConfigOrDie(admin)
	client := kubernetes.NewForConfigOrDie(admin)
	followed := schema.GroupVersionResource{Group: "roles.harikube.io", Version: "v1", Resource: "things"}
	skipped := schema.GroupVersionResource{Group: "roles.harikube.io", Version: "v1", Resource: "skippedthings"}
	// The opted-out CRD first: any discovery that shows things also shows it.
	createRoleCRD(t, ext, dyn, skipped, "SkippedThing", map[string]string{controllermanager.SkipGCAndQuotaAnnotation: "true"}, c.procs...)
	createRoleCRD(t, ext, dyn, followed, "Thing", nil, c.procs...)

	watches := func(resource string) (float64, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		body, err := client.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
		if err != nil {
			return 0, err
		}
		return testserver.SumMetric(body, "apiserver_longrunning_requests", `group="roles.harikube.io"`, `resource="`+resource+`"`, `verb="WATCH"`)
	}
	// Two discovery periods of the controllers (30 s each), on a busy machine.
	poll(t, "the controller manager to watch things", time.Second, 150*time.Second, func() (bool, error) {
		n, err := watches(followed.Resource)
		return n >= 1, err
	}, c.procs...)
	if n, err := watches(skipped.Resource); err != nil || n != 0 {
		t.Fatalf("%v watches of %s (%v), want none: the controller manager follows an opted-out resource", n, skipped.Resource, err)
	}

	obj := &unstructured.Unstructured{}
	obj.SetGroupVersionKind(skipped.GroupVersion().WithKind("SkippedThing"))
	obj.SetName("refused")
	if _, err := dyn.Resource(skipped).Namespace("default").Create(context.Background(), obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	foreground := metav1.DeletePropagationForeground
	// A dry run goes through admission without deleting while the guard
	// is not in place yet.
	var last error
	poll(t, "a foreground deletion of an opted-out object to be refused", time.Second, time.Minute, func() (bool, error) {
		last = dyn.Resource(skipped).Namespace("default").Delete(context.Background(), "refused",
			metav1.DeleteOptions{PropagationPolicy: &foreground, DryRun: []string{metav1.DryRunAll}})
		return apierrors.IsForbidden(last), nil
	}, c.procs...)
	if !strings.Contains(last.Error(), controllermanager.SkipGCAndQuotaAnnotation) {
		t.Errorf("refusal %q does not name the annotation", last)
	}
}

func createRoleCRD(t *testing.T, ext apiextensionsclient.Interface, dyn dynamic.Interface, gvr schema.GroupVersionResource, kind string, annotations map[string]string, procs ...*process) {
	t.Helper()
	preserve := true
	crd := testserver.NamespacedCRD(gvr, kind, &apiextensionsv1.JSONSchemaProps{Type: "object", XPreserveUnknownFields: &preserve})
	crd.Annotations = annotations
	_, err := ext.ApiextensionsV1().CustomResourceDefinitions().Create(context.Background(), crd, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	poll(t, gvr.Resource+" to be served", 250*time.Millisecond, time.Minute, func() (bool, error) {
		_, err := dyn.Resource(gvr).List(context.Background(), metav1.ListOptions{Limit: 1})
		return err == nil, err
	}, procs...)
}

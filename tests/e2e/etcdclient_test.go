package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/harikube/harikube/tests/testserver"
)

// TestSharedEtcdClient counts the datastore's accepted connections: by
// default every resource's store shares one etcd client, so custom resources
// add none; with --shared-etcd-client=false each store opens its own, as
// upstream does. Deleting a CRD destroys its store and must not close the
// client the other stores still use.
func TestSharedEtcdClient(t *testing.T) {
	const crds = 8
	for _, tc := range []struct {
		name   string
		args   []string
		shared bool
	}{
		{name: "shared", shared: true},
		{name: "per-store", args: []string{"--shared-etcd-client=false"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testserver.Start(t, tc.args...)
			socket := filepath.Join(s.DataDir, "kine.sock")
			before := testserver.UnixSocketEnds(t, socket)
			var gvrs []schema.GroupVersionResource
			for i := range crds {
				gvr := schema.GroupVersionResource{Group: fmt.Sprintf("c%d.clients.example.com", i), Version: "v1", Resource: "gadgets"}
				dyn := installColorCRD(t, s.Config, gvr, "Gadget", map[string]apiextensionsv1.JSONSchemaProps{"color": {Type: "string"}})
				createAndSelect(t, dyn.Namespace("default"), gvr, "g")
				gvrs = append(gvrs, gvr)
			}
			after := testserver.UnixSocketEnds(t, socket)
			t.Logf("datastore connections: %d before %d CRDs, %d after", before, crds, after)
			switch {
			case tc.shared && after != before:
				t.Fatalf("%d CRDs opened %d datastore connections, want none with the shared client", crds, after-before)
			case !tc.shared && after-before < crds:
				t.Fatalf("%d CRDs opened %d datastore connections, want at least one each with --shared-etcd-client=false", crds, after-before)
			}

			ext := apiextensionsclient.NewForConfigOrDie(s.Config)
			gone := gvrs[0].Resource + "." + gvrs[0].Group
			if err := ext.ApiextensionsV1().CustomResourceDefinitions().Delete(context.Background(), gone, metav1.DeleteOptions{}); err != nil {
				t.Fatalf("delete CRD %s: %v", gone, err)
			}
			pollUntil(t, gone+" deleted", func(ctx context.Context) bool {
				_, err := ext.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, gone, metav1.GetOptions{})
				return apierrors.IsNotFound(err)
			})
			for _, gvr := range gvrs[1:] {
				createAndSelect(t, dynamic.NewForConfigOrDie(s.Config).Resource(gvr).Namespace("default"), gvr, "h")
			}
			cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "after-crd-delete"}}
			if _, err := s.Client.CoreV1().ConfigMaps("default").Create(context.Background(), cm, metav1.CreateOptions{}); err != nil {
				t.Fatalf("create a ConfigMap after a CRD's store was destroyed: %v", err)
			}
			if tc.shared {
				if n := testserver.UnixSocketEnds(t, socket); n != before {
					t.Fatalf("datastore connections: %d after the CRD deletion, want %d", n, before)
				}
			}
			checkConsistentReadsFromCache(t, s)
		})
	}
}

// checkConsistentReadsFromCache: LISTs of Secrets (watch cache, no writes)
// while ConfigMaps are written. A consistent read from the cache waits until
// the cache has seen the datastore's current revision, which for a resource
// nobody writes comes from a progress notification on its watch stream; the
// datastore sends one only when every watch on that stream has caught up. Had
// the stores one shared stream, the busy ConfigMap watch would delay the
// Secrets' progress, and reads would time out into a fallback to the
// datastore (apiserver_watch_cache_consistent_read_total, fallback != false).
func checkConsistentReadsFromCache(t *testing.T, s *testserver.Server) {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	writes := make(chan error, 1)
	go func() {
		var err error
		for i := 0; ctx.Err() == nil; i++ {
			cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("busy-%d", i)}}
			if _, err = s.Client.CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{}); err != nil && ctx.Err() == nil {
				break
			}
			err = nil
		}
		writes <- err
	}()
	for range 40 {
		if _, err := s.Client.CoreV1().Secrets("kube-system").List(context.Background(), metav1.ListOptions{}); err != nil {
			stop()
			t.Fatalf("consistent LIST of Secrets during writes: %v", err)
		}
	}
	stop()
	if err := <-writes; err != nil {
		t.Fatalf("ConfigMap writes: %v", err)
	}
	served := s.Metric(t, "apiserver_watch_cache_consistent_read_total", `resource="secrets"`, `fallback="false"`)
	fallbacks := s.Metric(t, "apiserver_watch_cache_consistent_read_total", `resource="secrets"`, `success="true"`) +
		s.Metric(t, "apiserver_watch_cache_consistent_read_total", `resource="secrets"`, `success="false"`) - served
	t.Logf("consistent reads of Secrets from the watch cache: %.0f, fallbacks or refusals: %.0f", served, fallbacks)
	if served < 40 || fallbacks > 0 {
		t.Fatalf("consistent reads of Secrets: %.0f served from the cache, %.0f fell back or were refused; want all 40 from the cache", served, fallbacks)
	}
}

// createAndSelect creates an object and reads it back by a label selector
// and by its selectable field.
func createAndSelect(t *testing.T, res dynamic.ResourceInterface, gvr schema.GroupVersionResource, name string) {
	t.Helper()
	ctx := context.Background()
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": gvr.GroupVersion().String(), "kind": "Gadget",
		"metadata": map[string]any{"name": name, "labels": map[string]any{"pick": name}},
		"spec":     map[string]any{"color": name},
	}}
	if _, err := res.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	for _, opts := range []metav1.ListOptions{{LabelSelector: "pick=" + name}, {FieldSelector: "spec.color=" + name}} {
		got, err := res.List(ctx, opts)
		if err != nil {
			t.Fatalf("list %v: %v", opts, err)
		}
		if len(got.Items) != 1 || got.Items[0].GetName() != name {
			t.Fatalf("list %v: %d items, want only %s", opts, len(got.Items), name)
		}
	}
}

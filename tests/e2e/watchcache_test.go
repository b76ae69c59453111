package e2e

import (
	"context"
	"slices"
	"testing"

	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/harikube/harikube/tests/testserver"
)

// TestWatchCacheForOneCustomResource: --watch-cache-sizes=<resource>#100
// keeps upstream's watch cache for that one custom resource (its LISTs are
// answered from the cache, none pushed down), while another custom resource
// of the same server stays uncached and pushed down. Both answer exactly.
// harikube reads the flag's value from the storage factory's options, which
// upstream's CRD handler copies; a change there would fail this test.
func TestWatchCacheForOneCustomResource(t *testing.T) {
	cached := schema.GroupVersionResource{Group: "cached.harikube.io", Version: "v1", Resource: "things"}
	uncached := schema.GroupVersionResource{Group: "uncached.harikube.io", Version: "v1", Resource: "things"}
	s := testserver.Start(t, "--kube-apiserver-arg=watch-cache-sizes=things.cached.harikube.io#100")
	ext := apiextensionsclient.NewForConfigOrDie(s.Config)
	dyn := dynamic.NewForConfigOrDie(s.Config)
	ctx := context.Background()
	for _, gvr := range []schema.GroupVersionResource{cached, uncached} {
		createCacheCRD(t, ext, dyn, gvr, "Thing", nil)
		for _, name := range []string{"red-1", "blue-1", "red-2"} {
			obj := thing(gvr, "default", name, nil)
			obj.SetLabels(map[string]string{"color": name[:len(name)-2]})
			if _, err := dyn.Resource(gvr).Namespace("default").Create(ctx, obj, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}

	for _, gvr := range []schema.GroupVersionResource{cached, uncached} {
		// resourceVersion=0 is answered by the cache when there is one,
		// else by storage; the consistent LIST either way.
		for _, rv := range []string{"0", ""} {
			waitFor(t, gvr.Group+" LIST color=red at resourceVersion "+rv, func(ctx context.Context) bool {
				list, err := dyn.Resource(gvr).Namespace("default").List(ctx, metav1.ListOptions{LabelSelector: "color=red", ResourceVersion: rv})
				if err != nil {
					return false
				}
				var names []string
				for _, it := range list.Items {
					names = append(names, it.GetName())
				}
				slices.Sort(names)
				return slices.Equal(names, []string{"red-1", "red-2"})
			})
		}
	}

	// Upstream's own accounting: a watch cache started for the resource, and
	// the LISTs it answered.
	cacheLists := func(gvr schema.GroupVersionResource) float64 {
		return s.Metric(t, "apiserver_watch_cache_initializations_total", `group="`+gvr.Group+`"`) +
			s.Metric(t, "apiserver_storage_list_total", `group="`+gvr.Group+`"`, `storage="watchcache"`)
	}
	pushed := func(gvr schema.GroupVersionResource) float64 {
		return s.Metric(t, "harikube_apiserver_pushdown_requests_total", `resource="`+gvr.Resource+"."+gvr.Group+`"`)
	}
	if cacheLists(cached) < 2 || pushed(cached) != 0 {
		t.Errorf("%s (#100): watch cache started and LISTs it answered: %v, pushed down: %v; want the cache and no pushdown", cached.Group, cacheLists(cached), pushed(cached))
	}
	if cacheLists(uncached) != 0 || pushed(uncached) < 2 {
		t.Errorf("%s (default): watch cache started and LISTs it answered: %v, pushed down: %v; want no cache and both LISTs pushed down", uncached.Group, cacheLists(uncached), pushed(uncached))
	}
}

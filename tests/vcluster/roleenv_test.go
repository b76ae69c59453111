package vcluster

import (
	"context"
	"strconv"
	"strings"
	"testing"

	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/harikube/harikube/tests/testserver"
)

// TestRoleEnvironment: the kube-apiserver role's environment (set in vCluster
// through controlPlane.distro.k8s.env) brings back upstream's behaviour:
// HARIKUBE_SELECTOR_PUSHDOWN=false answers a selector LIST the same with
// nothing sent to kine, HARIKUBE_SHARED_ETCD_CLIENT=false opens an etcd
// client per resource store, and HARIKUBE_WATCH_CACHE_CUSTOM_RESOURCES=true
// gives a custom resource upstream's watch cache.
func TestRoleEnvironment(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	metricsAddr := "127.0.0.1:" + strconv.Itoa(testserver.FreePort(t))
	c.kineMetrics = "http://" + metricsAddr + "/metrics"
	c.env = []string{"HARIKUBE_SELECTOR_PUSHDOWN=false", "HARIKUBE_SHARED_ETCD_CLIENT=false", "HARIKUBE_WATCH_CACHE_CUSTOM_RESOURCES=true"}
	kine := c.start(t, "kine", mergeArgs(v036KineArgs(c.binaries, c.data), []string{"--metrics-bind-address=" + metricsAddr}))
	waitForEtcd(t, kineSocket(c.data), kine)
	api := c.start(t, "apiserver", mergeArgs(apiServerArgs(c.binaries, c.data, serviceCIDR), []string{"--secure-port=" + strconv.Itoa(c.port)}))
	waitForAPI(t, c.adminConf, c.procs...)
	admin := restConfig(t, c.adminConf)
	client := kubernetes.NewForConfigOrDie(admin)
	ctx := context.Background()

	createProbeEvents(t, client)
	list, err := client.CoreV1().Events("default").List(ctx, metav1.ListOptions{LabelSelector: "probe=1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 4 {
		t.Errorf("label selector probe=1: %d events, want 4", len(list.Items))
	}
	pushed := metricSum(t, scrapeAPIServer(t, client), "harikube_apiserver_pushdown_requests_total")
	selected := metricSum(t, scrape(t, c.kineMetrics), "harikube_datastore_selection_requests_total")
	if pushed != 0 || selected != 0 {
		t.Errorf("HARIKUBE_SELECTOR_PUSHDOWN=false: %v requests pushed down, %v selections at kine; want none", pushed, selected)
	}

	socket := strings.TrimPrefix(kineSocket(c.data), "unix://")
	if accepted := testserver.UnixSocketEnds(t, socket) - 1; accepted < 40 {
		t.Errorf("HARIKUBE_SHARED_ETCD_CLIENT=false: kine holds %d connections from the apiserver, want one per resource store (about 70)", accepted)
	}

	things := schema.GroupVersionResource{Group: "env.harikube.io", Version: "v1", Resource: "things"}
	createRoleCRD(t, apiextensionsclient.NewForConfigOrDie(admin), dynamic.NewForConfigOrDie(admin), things, "Thing", nil, c.procs...)
	if n := metricSum(t, scrapeAPIServer(t, client), "apiserver_watch_cache_initializations_total", `group="`+things.Group+`"`); n < 1 {
		t.Errorf("HARIKUBE_WATCH_CACHE_CUSTOM_RESOURCES=true: no watch cache started for %s", things.Group)
	}

	api.stop(t)
	kine.stop(t)
}

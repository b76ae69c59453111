package vcluster

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/harikube/harikube/tests/testserver"
)

// serviceCIDR is what the syncer would have detected (kubeadm's default).
const serviceCIDR = "10.96.0.0/12"

var serviceIP = net.ParseIP("10.96.0.1")

// cluster is one replayed vCluster control plane.
type cluster struct {
	data, binaries string
	port           int
	adminConf      string
	procs          []*process
	kineMetrics    string   // URL of kine's /metrics, when it serves one
	env            []string // added to every process's environment
	// host, when set, is the host cluster the processes reach as the
	// syncer's children do: from inside the pod (hostCluster.podArgs).
	host *hostCluster
}

// newCluster prepares /data (with the syncer's PKI in /data/pki) for the
// binaries copied from the image.
func newCluster(t *testing.T) *cluster {
	t.Helper()
	b := image(t)
	c := &cluster{data: t.TempDir(), binaries: b.Binaries, port: testserver.FreePort(t)}
	writePKI(t, filepath.Join(c.data, "pki"), strconv.Itoa(c.port), serviceIP)
	c.adminConf = filepath.Join(c.data, "pki", "admin.conf")
	return c
}

func (c *cluster) start(t *testing.T, name string, args []string) *process {
	t.Helper()
	env := c.env
	if c.host != nil {
		args, env = c.host.podArgs(args), append(c.host.podEnv(), c.env...)
	}
	p := startProcess(t, name, c.data, c.binaries, args, env)
	c.procs = append(c.procs, p)
	return p
}

// TestVCluster030 replays vCluster 0.30 (0.25 to 0.32) in embedded-database
// mode with the per-component contract: the syncer image's own kine (the
// stock k3s-io/kine v0.14.4, built from its module) on
// unix:///data/kine.sock, then /binaries/kube-apiserver and
// /binaries/kube-controller-manager with the syncer's default flags. That
// kine ignores the selection, so the apiserver's filtering is what answers.
func TestVCluster030(t *testing.T) {
	t.Parallel()
	kine := stockKine(t)
	c := newCluster(t)
	c.replayPerComponent(t, v030KineArgs(kine, c.data), signingAfterClusterName,
		checkStockKineSelectors, checkSkipGCAndQuota, checkSharedEtcdClient)
}

// TestVCluster036 replays vCluster 0.33+ (argument lists as of 0.36): kine
// is /binaries/kine from the distro image, started first and checked with an
// etcd MemberList on its socket; then the apiserver, then the controller
// manager. Kine's metrics (127.0.0.1:2381 since 0.35) move to a free port.
// It also checks that the CRD annotation harikube.io/skip-gc-and-quota works
// across the separate processes, and that the apiserver shares its etcd
// client.
func TestVCluster036(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	metricsAddr := "127.0.0.1:" + strconv.Itoa(testserver.FreePort(t))
	c.kineMetrics = "http://" + metricsAddr + "/metrics"
	c.replayPerComponent(t, mergeArgs(v036KineArgs(c.binaries, c.data), []string{"--metrics-bind-address=" + metricsAddr}), signingAfterLeaderElect,
		checkSkipGCAndQuota, checkSharedEtcdClient)
}

// replayPerComponent starts kine, the apiserver and the controller manager
// one after the other as the syncer does, checks the syncer's contract and
// then the further checks, and stops them in reverse order.
func (c *cluster) replayPerComponent(t *testing.T, kineArgs []string, order controllerManagerOrder, checks ...func(*testing.T, *cluster)) {
	t.Helper()
	kine := c.start(t, "kine", kineArgs)
	waitForEtcd(t, kineSocket(c.data), kine)
	api := c.start(t, "apiserver", mergeArgs(apiServerArgs(c.binaries, c.data, serviceCIDR), []string{"--secure-port=" + strconv.Itoa(c.port)}))
	waitForAPI(t, c.adminConf, c.procs...)
	cm := c.start(t, "controller-manager", mergeArgs(controllerManagerArgs(c.binaries, c.data, serviceCIDR, order),
		[]string{"--secure-port=" + strconv.Itoa(testserver.FreePort(t))}))
	waitForClientConfig(t, c.adminConf, c.procs...)

	checkSyncerContract(t, c)
	for _, check := range checks {
		check(t, c)
	}

	cm.stop(t)
	api.stop(t)
	kine.stop(t)
}

// values is the part of package/vcluster-values.yaml the tests read.
type values struct {
	ControlPlane struct {
		Distro struct {
			K8S struct {
				Enabled bool `json:"enabled"`
				Image   struct {
					Registry   string `json:"registry"`
					Repository string `json:"repository"`
					Tag        string `json:"tag"`
				} `json:"image"`
				APIServer struct {
					Enabled   bool     `json:"enabled"`
					Command   []string `json:"command"`
					ExtraArgs []string `json:"extraArgs"`
				} `json:"apiServer"`
				ControllerManager struct {
					Enabled bool `json:"enabled"`
				} `json:"controllerManager"`
			} `json:"k8s"`
		} `json:"distro"`
	} `json:"controlPlane"`
}

func readValues(t *testing.T, data []byte) values {
	t.Helper()
	var v values
	if err := yaml.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestAllInOne replays what package/vcluster-values.yaml makes vCluster do:
// the syncer's kine first (embedded database mode; the start gate), then the
// apiServer.command from the values file, `/binaries/harikube server ...`,
// with the default flags replaced and the port moved through extraArgs; no
// separate controller manager. Then a dry run of the packaged manifest
// against this harikube server.
func TestAllInOne(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "package", "vcluster-values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	v := readValues(t, data)
	k8s := v.ControlPlane.Distro.K8S
	if len(k8s.APIServer.Command) == 0 || k8s.ControllerManager.Enabled {
		t.Fatalf("the values must set apiServer.command and disable the controller manager: %+v", k8s)
	}

	c := newCluster(t)
	kine := c.start(t, "kine", v030KineArgs(c.binaries+"/kine", c.data))
	waitForEtcd(t, kineSocket(c.data), kine)
	// A k3s-like host: the values name no service CIDR, harikube takes the
	// one the syncer recorded on its host Service.
	c.host = newHostCluster(t, "10.43.0.0/16", "10.43.0.0/16")
	command := rebase(k8s.APIServer.Command, c.binaries, c.data)
	extra := append(append([]string{}, k8s.APIServer.ExtraArgs...), "--https-listen-port="+strconv.Itoa(c.port))
	api := c.start(t, "apiserver", mergeArgs(command, extra))
	waitForAPI(t, c.adminConf, c.procs...)
	waitForClientConfig(t, c.adminConf, c.procs...)

	checkSyncerContract(t, c)
	t.Run("HostServiceCIDR", func(t *testing.T) {
		checkServiceCIDR(t, kubernetes.NewForConfigOrDie(restConfig(t, c.adminConf)), "10.43.0.1", "10.43.12.34", "10.96.0.10")
	})

	// harikube keeps its own database and socket under --data-dir.
	for _, f := range []string{"harikube/db/state.db", "harikube/kine.sock", "harikube/kubeconfig.yaml"} {
		if _, err := os.Stat(filepath.Join(c.data, f)); err != nil {
			t.Errorf("all-in-one: %v", err)
		}
	}

	t.Run("DryRunManifest", func(t *testing.T) {
		// The namespace must exist for a server-side dry run of the
		// objects in it.
		client := kubernetes.NewForConfigOrDie(restConfig(t, c.adminConf))
		ctx := context.Background()
		if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kine"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		manifest := filepath.Join(repoRoot(t), "package", "vcluster-kine-sqlite.yaml")
		cmd := exec.Command(c.binaries+"/harikube", "kubectl", "--kubeconfig", filepath.Join(c.data, "harikube", "kubeconfig.yaml"),
			"apply", "--dry-run=server", "-f", manifest)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("harikube kubectl apply --dry-run=server -f %s: %v\n%s", manifest, err, out)
		}
		for _, want := range []string{"statefulset.apps/kine", "secret/vc-config-kine", "service/kine", "role.rbac.authorization.k8s.io/vc-kine"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("dry run output lacks %q:\n%s", want, out)
			}
		}
	})

	api.stop(t)
	kine.stop(t)
}

// checkSyncerContract makes the checks the syncer makes, and checks that
// selectors are pushed down.
func checkSyncerContract(t *testing.T, c *cluster) {
	t.Helper()
	admin := restConfig(t, c.adminConf)
	client := kubernetes.NewForConfigOrDie(admin)
	ctx := context.Background()
	base := "https://127.0.0.1:" + strconv.Itoa(c.port)

	t.Run("ReadyzWithAdminConf", func(t *testing.T) {
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil || string(body) != "ok" {
			t.Fatalf("/readyz with admin.conf: %q, %v", body, err)
		}
	})

	t.Run("AnonymousHealth", func(t *testing.T) {
		for _, path := range []string{"/readyz", "/healthz", "/livez"} {
			code, body, err := anonymousGet(base + path)
			if err != nil || code != http.StatusOK || body != "ok" {
				t.Errorf("anonymous GET %s: %d %q %v", path, code, body, err)
			}
		}
	})

	t.Run("Version", func(t *testing.T) {
		v, err := client.Discovery().ServerVersion()
		if err != nil {
			t.Fatal(err)
		}
		want := k8sVersion(t)
		parts := strings.SplitN(strings.TrimPrefix(want, "v"), ".", 3)
		if v.GitVersion != want || v.Major != parts[0] || v.Minor != parts[1] {
			t.Errorf("/version = %s major %q minor %q, want %s major %q minor %q", v.GitVersion, v.Major, v.Minor, want, parts[0], parts[1])
		}
	})

	t.Run("DefaultServiceAccount", func(t *testing.T) {
		if _, err := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("Impersonation", func(t *testing.T) {
		// The syncer's proxy forwards every request with admin.conf and
		// Impersonate-User/Group of the caller.
		as := func(user string, groups ...string) kubernetes.Interface {
			cfg := rest.CopyConfig(admin)
			cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
			return kubernetes.NewForConfigOrDie(cfg)
		}
		anon := as("system:anonymous", "system:unauthenticated")
		for _, path := range []string{"/readyz", "/healthz"} {
			if body, err := anon.Discovery().RESTClient().Get().AbsPath(path).DoRaw(ctx); err != nil || string(body) != "ok" {
				t.Errorf("kubelet probe %s as impersonated system:anonymous: %q, %v", path, body, err)
			}
		}
		if _, err := anon.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("list namespaces as impersonated system:anonymous: want Forbidden, got %v", err)
		}
		if _, err := as("jane").CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("list namespaces as impersonated jane: want Forbidden, got %v", err)
		}
		if _, err := as("jane", "system:masters", "system:authenticated").CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err != nil {
			t.Errorf("list namespaces as impersonated jane in system:masters: %v", err)
		}
	})

	t.Run("SelectorPushdown", func(t *testing.T) {
		// Events are not in the watch cache (upstream), so their LISTs
		// reach the storage decorator.
		createProbeEvents(t, client)
		before := metricSum(t, scrapeAPIServer(t, client), "harikube_apiserver_pushdown_requests_total", `resource="events"`, `verb="list"`)
		var kineBefore float64
		if c.kineMetrics != "" {
			// A separate kine process knows no resource: its keys count as "other".
			kineBefore = metricSum(t, scrape(t, c.kineMetrics), "harikube_datastore_selection_requests_total", `resource="other"`, `kind="list"`)
		}
		list, err := client.CoreV1().Events("default").List(ctx, metav1.ListOptions{LabelSelector: "probe=1"})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != 4 {
			t.Errorf("label selector probe=1: %d events, want 4", len(list.Items))
		}
		// A field the kine process does not index (separate process:
		// only labels, name and namespace) is filtered by the apiserver.
		list, err = client.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("involvedObject.name", "p1").String()})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != 2 {
			t.Errorf("field selector involvedObject.name=p1: %d events, want 2", len(list.Items))
		}
		after := metricSum(t, scrapeAPIServer(t, client), "harikube_apiserver_pushdown_requests_total", `resource="events"`, `verb="list"`)
		if after < before+2 {
			t.Errorf("harikube_apiserver_pushdown_requests_total{resource=events,verb=list}: %v before, %v after two selector LISTs", before, after)
		}
		if c.kineMetrics != "" {
			kineAfter := metricSum(t, scrape(t, c.kineMetrics), "harikube_datastore_selection_requests_total", `resource="other"`, `kind="list"`)
			if kineAfter <= kineBefore {
				t.Errorf("kine's harikube_datastore_selection_requests_total{resource=other,kind=list}: %v before, %v after; the selection did not reach the datastore", kineBefore, kineAfter)
			}
		}
	})
}

// createProbeEvents creates 8 Events in default: probe-i labelled
// probe=<i%2>, about Pod p<i%4>; so probe=1 selects 4 and
// involvedObject.name=p1 selects 2.
func createProbeEvents(t *testing.T, client kubernetes.Interface) {
	t.Helper()
	for i := range 8 {
		ev := &corev1.Event{
			ObjectMeta:     metav1.ObjectMeta{Name: fmt.Sprintf("probe-%d", i), Namespace: "default", Labels: map[string]string{"probe": strconv.Itoa(i % 2)}},
			InvolvedObject: corev1.ObjectReference{Kind: "Pod", Name: fmt.Sprintf("p%d", i%4), Namespace: "default"},
			Reason:         "Probe", Message: "m", Type: corev1.EventTypeNormal,
		}
		if _, err := client.CoreV1().Events("default").Create(context.Background(), ev, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

func scrapeAPIServer(t *testing.T, client kubernetes.Interface) string {
	t.Helper()
	body, err := client.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	return string(body)
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	res, err := http.Get(url) //nolint:noctx // test
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, res.Status)
	}
	return string(body)
}

// metricSum adds the samples of a Prometheus text metric whose labels
// contain every one of match.
func metricSum(t *testing.T, text, name string, match ...string) float64 {
	t.Helper()
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
lines:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		for _, m := range match {
			if !strings.Contains(line, m) {
				continue lines
			}
		}
		fs := strings.Fields(line)
		v, err := strconv.ParseFloat(fs[len(fs)-1], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

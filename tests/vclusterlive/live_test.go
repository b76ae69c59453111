//go:build vclusterlive

package vclusterlive

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/harikube/harikube/tests/testserver"
	"github.com/harikube/harikube/tests/vclusterimage"
)

// variant is one vCluster version under test and how it runs harikube.
type variant struct {
	version  string // of the syncer (scripts/build-vcluster-syncer)
	manifest string // in package/, applied unedited
	values   string // in package/, what manifest is rendered from
	// perComponent: only the image is set; the syncer starts /binaries/kine,
	// /binaries/kube-apiserver and /binaries/kube-controller-manager with
	// its own flags. Otherwise all-in-one: `harikube server --vcluster`.
	perComponent bool
}

var variants = []variant{
	{version: "v0.30.0", manifest: "vcluster-kine-sqlite.yaml", values: "vcluster-values.yaml"},
	{version: "v0.36.1", manifest: "vcluster-0.36-per-component.yaml", values: "vcluster-0.36-per-component-values.yaml", perComponent: true},
}

// kineMetricsURL is where vCluster 0.35+ has its kine serve metrics.
const kineMetricsURL = "http://127.0.0.1:2381/metrics"

const (
	// The release and namespace both manifests are rendered for.
	release   = "kine"
	namespace = "kine"
	// What the virtual pod tolerates, in seconds: upstream node lifecycle would
	// evict it this long after tainting its node (50 s grace), well within the
	// wait below.
	tolerationSeconds = 30
	evictionWait      = 150 * time.Second
)

// TestSyncer runs vCluster 0.30's syncer with package/vcluster-kine-sqlite.yaml
// (all-in-one) and 0.36's with package/vcluster-0.36-per-component.yaml,
// each unedited, on a k3s-like and a kind-like host. On the kind-like host
// 0.36 is installed as the README tells users of vCluster's snapshots to
// install it, with `vcluster create` (Helm) and the values file, and its
// snapshot is taken with `vcluster snapshot create`.
func TestSyncer(t *testing.T) {
	for _, v := range variants {
		t.Run(v.version, func(t *testing.T) {
			syncerDir := os.Getenv(syncerDirEnv(v.version))
			if syncerDir == "" {
				t.Fatalf("%s is not set (TestMain sets it from scripts/build-vcluster-syncer)", syncerDirEnv(v.version))
			}
			for _, h := range hosts {
				t.Run("host-"+strings.ReplaceAll(h.serviceCIDR, "/", "_"), func(t *testing.T) {
					started := time.Now()
					runLive(t, v, syncerDir, h)
					result := "passed"
					if t.Failed() {
						result = "failed"
					}
					t.Logf("vCluster %s, host service CIDR %s: %s in %s", v.version, h.serviceCIDR, result, time.Since(started).Round(time.Second))
				})
			}
		})
	}
}

// hostCluster is one host each variant runs on.
type hostCluster struct {
	serviceCIDR string
	// reapply: the README's removal and re-apply after the other checks.
	reapply bool
	// vclusterCreate: per-component variants are installed with `vcluster
	// create` (Helm) and snapshotted with `vcluster snapshot create`
	// instead of kubectl apply and the CLI's snapshot pod.
	vclusterCreate bool
}

var hosts = []hostCluster{
	{serviceCIDR: "10.43.0.0/16", reapply: true},        // k3s's
	{serviceCIDR: "10.96.0.0/12", vclusterCreate: true}, // kind's
}

func runLive(t *testing.T, v variant, syncerDir string, h hostCluster) {
	ctx := context.Background()
	host := testserver.Start(t, "--service-cidr="+h.serviceCIDR)
	hostCA := host.Config.TLSClientConfig.CAData
	if len(hostCA) == 0 {
		t.Fatal("the host kubeconfig has no certificate-authority-data")
	}
	logPath := filepath.Join(t.TempDir(), "syncer.log")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("syncer log (%s), last lines:\n%s", logPath, vclusterimage.Tail(logPath, 80))
			if dir := os.Getenv("HARIKUBE_TEST_LOGS"); dir != "" {
				if b, err := os.ReadFile(logPath); err == nil && os.MkdirAll(dir, 0o755) == nil {
					_ = os.WriteFile(filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+"-syncer.log"), b, 0o644)
				}
			}
		}
	})

	// The host side, as `kubectl apply -f package/vcluster-kine-sqlite.yaml`
	// (or `vcluster create`) on a cluster with one node.
	helmInstalled := v.perComponent && h.vclusterCreate
	if helmInstalled {
		vclusterCreate(t, v, host, syncerDir)
	} else {
		kubectl(t, host.Kubeconfig, "create", "namespace", namespace)
		kubectl(t, host.Kubeconfig, "apply", "-f", filepath.Join(repoRoot(), "package", v.manifest))
	}
	keepNodeReady(t, host.Client)
	kubelet := startKubeletAPI(t)
	poll(t, "the StatefulSet's pod "+release+"-0", time.Second, 2*time.Minute, func() (bool, error) {
		_, err := host.Client.CoreV1().Pods(namespace).Get(ctx, release+"-0", metav1.GetOptions{})
		return err == nil, err
	})
	pod := bindAndRun(t, host.Client, namespace, release+"-0", "127.0.0.1")
	if v.perComponent && !helmInstalled {
		checkSnapshotCLIWithoutRelease(t, host, syncerDir)
	}

	vols := &podVolumes{dirs: map[string]string{}}
	syncer := runSyncer(t, host.Client, host.Port, hostCA, pod, vols, image(t), syncerDir, logPath)
	virtual := waitReady(t, host, syncer)

	checkStarted(t, v, logPath, vols.dirs["data"])
	if v, err := virtual.client.Discovery().ServerVersion(); err != nil || v.GitVersion != "v1.37.2" {
		t.Errorf("virtual /version: %v, %v; want v1.37.2", v, err)
	}

	waitClusterIP(t, host, release, virtual, "kubernetes", syncer)

	// `vcluster connect kine -n kine -- kubectl get namespaces`, with the
	// version's CLI: it port-forwards to the pod's port 8443 through the
	// host apiserver and the node's kubelet, and runs the command with a
	// kubeconfig for that local port.
	kubelet.servePort(namespace, release+"-0", 8443, "127.0.0.1:8443")
	connected := vclusterctl(t, host, syncerDir, "connect", release, "--namespace", namespace, "--",
		testserver.Binary(t), "kubectl", "get", "namespaces", "-o", "name")
	if !strings.Contains(connected, "namespace/default\n") || !strings.Contains(connected, "namespace/kube-system\n") {
		t.Errorf("vcluster connect %s -- kubectl get namespaces: %q, want namespace/default and namespace/kube-system", release, connected)
	}

	// Objects created in the virtual cluster appear in the host namespace
	// under vCluster's names; the host Pod waits for a scheduler.
	createWorkload(t, virtual.client)
	hostName := func(name string) string { return name + "-x-default-x-" + release }
	poll(t, "the synced objects in the host namespace", time.Second, 2*time.Minute, func() (bool, error) {
		if _, err := host.Client.CoreV1().ConfigMaps(namespace).Get(ctx, hostName("live-config"), metav1.GetOptions{}); err != nil {
			return false, err
		}
		if _, err := host.Client.CoreV1().Secrets(namespace).Get(ctx, hostName("live-secret"), metav1.GetOptions{}); err != nil {
			return false, err
		}
		if _, err := host.Client.CoreV1().Services(namespace).Get(ctx, hostName("live-svc"), metav1.GetOptions{}); err != nil {
			return false, err
		}
		_, err := host.Client.CoreV1().Pods(namespace).Get(ctx, hostName("live-pod"), metav1.GetOptions{})
		return err == nil, err
	}, syncer)
	hostPod, err := host.Client.CoreV1().Pods(namespace).Get(ctx, hostName("live-pod"), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if hostPod.Status.Phase != corev1.PodPending || hostPod.Spec.NodeName != "" {
		t.Errorf("host pod: phase %s on node %q, want Pending and unscheduled", hostPod.Status.Phase, hostPod.Spec.NodeName)
	}
	// The synced Service keeps the host's ClusterIP in the virtual cluster too.
	waitClusterIP(t, host, hostName("live-svc"), virtual, "live-svc", syncer)

	// Scheduled on the host's Ready node: the virtual node the syncer creates
	// stays Ready and the virtual pod stays, past the time upstream node
	// lifecycle would need to evict it.
	bindAndRun(t, host.Client, namespace, hostName("live-pod"), "10.244.0.10")
	poll(t, "the virtual pod on "+nodeName, time.Second, 2*time.Minute, func() (bool, error) {
		p, err := virtual.client.CoreV1().Pods("default").Get(ctx, "live-pod", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return p.Spec.NodeName == nodeName && p.Status.Phase == corev1.PodRunning, fmt.Errorf("node %q, phase %s", p.Spec.NodeName, p.Status.Phase)
	}, syncer)
	// `kubectl logs` in the virtual cluster: the syncer sends it to the host
	// apiserver for the host pod, which reads it from the node's kubelet.
	const podLog = "live-pod: the log of the host pod's container app\n"
	podLogPath := filepath.Join(t.TempDir(), "live-pod.log")
	if err := os.WriteFile(podLogPath, []byte(podLog), 0o644); err != nil {
		t.Fatal(err)
	}
	kubelet.serveLog(namespace, hostName("live-pod"), "app", containerLog{path: podLogPath})
	if out := kubectl(t, virtual.kubeconfig, "logs", "live-pod"); out != podLog {
		t.Errorf("kubectl logs live-pod in the virtual cluster: %q, want %q", out, podLog)
	}
	// `kubectl exec` the same way, with stdin, stdout and the exit code
	// carried by the kubelet's streaming protocol. The container's files
	// are the harikube image's, a busybox like the pod's busybox:1.37.
	kubelet.serveExec(namespace, hostName("live-pod"), "app", image(t).RootFS)
	execOut, execCode := kubectlExit(t, virtual.kubeconfig, "hello through stdin\n", "exec", "-i", "live-pod", "-c", "app", "--", "sh", "-c", "cat; echo done; exit 3")
	if want := "hello through stdin\ndone\n"; execOut != want || execCode != 3 {
		t.Errorf("kubectl exec -i live-pod -- sh -c 'cat; echo done; exit 3' in the virtual cluster: %q, exit code %d; want %q, 3", execOut, execCode, want)
	}
	// And `kubectl port-forward`: a request to its local port reaches what
	// serves the host pod's port 8080 (a server on loopback here).
	const podAnswer = "live-pod: port 8080 of the host pod"
	podServer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, podAnswer) }))
	t.Cleanup(podServer.Close)
	kubelet.servePort(namespace, hostName("live-pod"), 8080, podServer.Listener.Addr().String())
	if got := getThroughPortForward(t, virtual.kubeconfig, "pod/live-pod", 8080); got != podAnswer {
		t.Errorf("GET through kubectl port-forward pod/live-pod :8080 in the virtual cluster: %q, want %q", got, podAnswer)
	}
	deadline := time.Now().Add(evictionWait)
	for time.Now().Before(deadline) {
		checkNotEvicted(t, virtual.client, host.Client, hostName("live-pod"))
		if err := syncer.exitedErr(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Second)
	}

	// A label-selector LIST in the virtual cluster is answered by harikube's
	// datastore.
	scrape, series := datastoreMetrics(v, virtual)
	checkPushdown(t, virtual, scrape, series...)

	// SIGKILL of the syncer and everything it started, then the same pod
	// again on the same /data: every object is still there.
	ports := []string{"127.0.0.1:6443", "127.0.0.1:8443"}
	if v.perComponent {
		ports = append(ports, strings.TrimSuffix(strings.TrimPrefix(kineMetricsURL, "http://"), "/metrics"))
	}
	syncer.kill(t)
	waitPortsClosed(t, ports...)
	pod, err = host.Client.CoreV1().Pods(namespace).Get(ctx, release+"-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	syncer = runSyncer(t, host.Client, host.Port, hostCA, pod, vols, image(t), syncerDir, logPath)
	virtual = waitReady(t, host, syncer)
	checkWorkload(t, virtual.client)
	checkNotEvicted(t, virtual.client, host.Client, hostName("live-pod"))
	widgets, err := dynamic.NewForConfigOrDie(virtual.config).Resource(schema.GroupVersionResource{Group: "live.harikube.io", Version: "v1", Resource: "widgets"}).Namespace("default").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Errorf("widgets after the restart: %v", err)
	} else if len(widgets.Items) != 3 {
		t.Errorf("widgets after the restart: %d, want 3", len(widgets.Items))
	}

	// A snapshot taken while the virtual cluster runs, a deletion, SIGKILL,
	// the snapshot restored into the stopped pod's /data and a restart bring
	// back what was deleted (and the syncer re-creates its host copy).
	snap := snapshotter(harikubeSnapshot{vols: vols, path: new(string)})
	if v.perComponent {
		snap = vclusterSnapshot{host: host, pod: pod, vols: vols, syncerDir: syncerDir, logPath: logPath, path: "/data/live-snapshot.tar.gz"}
	}
	if helmInstalled {
		snap = snapshotRequest{vclusterSnapshot{host: host, pod: pod, vols: vols, syncerDir: syncerDir, logPath: logPath, path: "/data/cli-snapshot.tar.gz"}, syncer}
	}
	snap.save(t)
	if err := virtual.client.CoreV1().ConfigMaps("default").Delete(ctx, "live-config", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, "the host copy of live-config deleted", time.Second, time.Minute, func() (bool, error) {
		_, err := host.Client.CoreV1().ConfigMaps(namespace).Get(ctx, hostName("live-config"), metav1.GetOptions{})
		return apierrors.IsNotFound(err), err
	}, syncer)
	if cli, ok := snap.(snapshotRequest); ok {
		pod, vols, syncer = cli.restoreWithCLI(t, kubelet, syncer, ports)
	} else {
		syncer.kill(t)
		waitPortsClosed(t, ports...)
		snap.restore(t)
		syncer = runSyncer(t, host.Client, host.Port, hostCA, pod, vols, image(t), syncerDir, logPath)
	}
	virtual = waitReady(t, host, syncer)
	checkWorkload(t, virtual.client)
	poll(t, "the host copy of live-config re-created", time.Second, 2*time.Minute, func() (bool, error) {
		_, err := host.Client.CoreV1().ConfigMaps(namespace).Get(ctx, hostName("live-config"), metav1.GetOptions{})
		return err == nil, err
	}, syncer)

	// The README's removal and re-apply, on one host of each version.
	if h.reapply {
		removeAndReapply(t, v, host, syncer, vols, syncerDir, logPath, ports, hostName)
	}
}

// removeAndReapply removes the virtual cluster the README's way: the
// StatefulSet scaled to 0 first, so that the syncer has stopped before the
// host's garbage collector deletes what it created (a running syncer takes
// those deletions for deletions on the host and deletes the virtual objects
// they copy), then `kubectl delete -f` of the manifest. The PVC is kept.
// Applying the manifest again runs a new pod on the same PVC: every object
// of the virtual cluster is back, and the syncer re-creates its host copies.
func removeAndReapply(t *testing.T, v variant, host *testserver.Server, syncer *containerRun, vols *podVolumes, syncerDir, logPath string, ports []string, hostName func(string) string) {
	t.Helper()
	ctx := context.Background()
	manifest := filepath.Join(repoRoot(), "package", v.manifest)
	old, err := host.Client.CoreV1().Pods(namespace).Get(ctx, release+"-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	claim := "data-" + release + "-0"
	pvc, err := host.Client.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, claim, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gone := []struct {
		what string
		get  func() error
	}{
		{"Secret vc-" + release, func() error {
			_, err := host.Client.CoreV1().Secrets(namespace).Get(ctx, "vc-"+release, metav1.GetOptions{})
			return err
		}},
		{"Secret " + release + "-certs", func() error {
			_, err := host.Client.CoreV1().Secrets(namespace).Get(ctx, release+"-certs", metav1.GetOptions{})
			return err
		}},
		{"the host copy of live-secret", func() error {
			_, err := host.Client.CoreV1().Secrets(namespace).Get(ctx, hostName("live-secret"), metav1.GetOptions{})
			return err
		}},
		{"the host copy of live-config", func() error {
			_, err := host.Client.CoreV1().ConfigMaps(namespace).Get(ctx, hostName("live-config"), metav1.GetOptions{})
			return err
		}},
		{"the host copy of live-svc", func() error {
			_, err := host.Client.CoreV1().Services(namespace).Get(ctx, hostName("live-svc"), metav1.GetOptions{})
			return err
		}},
	}
	for _, g := range gone {
		if err := g.get(); err != nil {
			t.Fatalf("%s before the removal: %v", g.what, err)
		}
	}
	kubectl(t, host.Kubeconfig, "scale", "-n", namespace, "statefulset", release, "--replicas=0")
	poll(t, "pod "+release+"-0 being deleted", time.Second, 2*time.Minute, func() (bool, error) {
		p, err := host.Client.CoreV1().Pods(namespace).Get(ctx, release+"-0", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return err == nil && p.DeletionTimestamp != nil, err
	}, syncer)
	// The kubelet stops the containers and then removes the pod.
	syncer.kill(t)
	waitPortsClosed(t, ports...)
	err = host.Client.CoreV1().Pods(namespace).Delete(ctx, release+"-0", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	kubectl(t, host.Kubeconfig, "delete", "-n", namespace, "-f", manifest)

	for _, g := range gone {
		poll(t, g.what+" garbage-collected", time.Second, 2*time.Minute, func() (bool, error) {
			err := g.get()
			return apierrors.IsNotFound(err), err
		})
	}
	// Kept means the same claim, owned by nothing that is going away.
	kept, err := host.Client.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, claim, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("PVC %s after the removal: %v; want it kept", claim, err)
	}
	if kept.UID != pvc.UID || kept.DeletionTimestamp != nil || len(kept.OwnerReferences) != 0 {
		t.Fatalf("PVC %s after the removal: uid %s (was %s), deletion %v, owners %v; want the same claim, not being deleted, with no owner",
			claim, kept.UID, pvc.UID, kept.DeletionTimestamp, kept.OwnerReferences)
	}

	kubectl(t, host.Kubeconfig, "apply", "-n", namespace, "-f", manifest)
	poll(t, "a new pod "+release+"-0", time.Second, 2*time.Minute, func() (bool, error) {
		p, err := host.Client.CoreV1().Pods(namespace).Get(ctx, release+"-0", metav1.GetOptions{})
		return err == nil && p.UID != old.UID, err
	})
	pod := bindAndRun(t, host.Client, namespace, release+"-0", "127.0.0.1")
	if again, err := host.Client.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, claim, metav1.GetOptions{}); err != nil || again.UID != pvc.UID {
		t.Fatalf("PVC %s after the re-apply: %v, %v; want the claim from before the removal (uid %s)", claim, again.GetUID(), err, pvc.UID)
	}
	newVols := vols.forNewPod(pod)
	// The syncer's first start can lose a race it has with the apiserver:
	// it replaces the virtual default/kubernetes, whose ClusterIP is the
	// old host Service's, with a delete and a create, while the apiserver,
	// just ready, creates the missing Service itself; the create then fails
	// ("already exists") and the syncer exits. The kubelet restarts it
	// (restartPolicy Always, 10 s back-off); so does this test, at most
	// twice and for that exit only.
	for restarts := 0; ; restarts++ {
		syncer = runSyncer(t, host.Client, host.Port, host.Config.TLSClientConfig.CAData, pod, newVols, image(t), syncerDir, logPath)
		if becomesReady(syncer, 5*time.Minute) {
			break
		}
		if syncer.running() {
			t.Fatalf("after the re-apply the syncer did not pass its readiness probe within 5 minutes; last lines of %s:\n%s", logPath, vclusterimage.Tail(logPath, 60))
		}
		if restarts == 2 || !lostKubernetesServiceRace(t, logPath) {
			t.Fatalf("after the re-apply: %v", syncer.exitedErr())
		}
		t.Logf("after the re-apply the syncer exited with code %d (last lines: %s); restarting it in 10 s, as the kubelet would",
			syncer.code, vclusterimage.Tail(logPath, 3))
		waitPortsClosed(t, ports...)
		time.Sleep(10 * time.Second)
	}
	virtual := waitReady(t, host, syncer)
	poll(t, "the host copies re-created after the re-apply", time.Second, 2*time.Minute, func() (bool, error) {
		if _, err := host.Client.CoreV1().ConfigMaps(namespace).Get(ctx, hostName("live-config"), metav1.GetOptions{}); err != nil {
			return false, err
		}
		if _, err := host.Client.CoreV1().Secrets(namespace).Get(ctx, hostName("live-secret"), metav1.GetOptions{}); err != nil {
			return false, err
		}
		_, err := host.Client.CoreV1().Services(namespace).Get(ctx, hostName("live-svc"), metav1.GetOptions{})
		return err == nil, err
	}, syncer)
	waitClusterIP(t, host, release, virtual, "kubernetes", syncer)
	// After the syncer's first reconciles, so that one deleting a virtual
	// object for its missing host copy would be seen.
	checkWorkload(t, virtual.client)
}

// waitClusterIP waits until the virtual Service default/virtualName has
// the ClusterIP of the host Service hostName, which the syncer gives it.
func waitClusterIP(t *testing.T, host *testserver.Server, hostName string, virtual virtualCluster, virtualName string, syncer *containerRun) {
	t.Helper()
	ctx := context.Background()
	hostSvc, err := host.Client.CoreV1().Services(namespace).Get(ctx, hostName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	poll(t, "virtual default/"+virtualName+" with the ClusterIP of host "+hostName+", "+hostSvc.Spec.ClusterIP, time.Second, time.Minute, func() (bool, error) {
		svc, err := virtual.client.CoreV1().Services("default").Get(ctx, virtualName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return svc.Spec.ClusterIP == hostSvc.Spec.ClusterIP, fmt.Errorf("ClusterIP %s", svc.Spec.ClusterIP)
	}, syncer)
}

// checkSnapshotCLIWithoutRelease runs the version's vcluster CLI as the
// README shows it, against the manifest applied with kubectl: `vcluster
// snapshot` reads the Helm release that `vcluster create` records and,
// without one, stops with the message the README quotes.
func checkSnapshotCLIWithoutRelease(t *testing.T, host *testserver.Server, syncerDir string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(syncerDir, "vclusterctl"), "snapshot", release,
		"container:///data/kine-snapshot.tar.gz", "--namespace", namespace)
	// HOME: the CLI keeps its own config there.
	cmd.Env = append(os.Environ(), "KUBECONFIG="+host.Kubeconfig, "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	const want = `failed to get vCluster release: secrets "` + release + `" not found`
	if err == nil || !strings.Contains(string(out), want) {
		t.Errorf("vcluster snapshot of the kubectl-applied manifest: %v, want it to stop with %q:\n%s", err, want, out)
	}
}

// lostKubernetesServiceRace reports whether the syncer's last run (the log
// after its last "=== " header) ended in the race described in
// removeAndReapply.
func lostKubernetesServiceRace(t *testing.T, logPath string) bool {
	t.Helper()
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	last := b[bytes.LastIndex(b, []byte("\n=== "))+1:]
	return bytes.Contains(last, []byte("sync kubernetes service")) && bytes.Contains(last, []byte("already exists"))
}

// checkStarted checks that the syncer started harikube the variant's way
// (its log names each command) and where the datastore is; /version is
// harikube's Kubernetes in both.
func checkStarted(t *testing.T, v variant, logPath, dataDir string) {
	t.Helper()
	log, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	starts := []string{`"args": "/binaries/harikube server `}
	db := filepath.Join(dataDir, "harikube", "db", "state.db")
	if v.perComponent {
		starts = []string{`"args": "/binaries/kine --endpoint=sqlite:///data/state.db`, `"args": "/binaries/kube-apiserver --`, `"args": "/binaries/kube-controller-manager --`}
		db = filepath.Join(dataDir, "state.db")
	}
	for _, s := range starts {
		if !strings.Contains(string(log), s) {
			t.Errorf("the syncer's log has no start with %s", s)
		}
	}
	if _, err := os.Stat(db); err != nil {
		t.Errorf("harikube's database: %v", err)
	}
}

// snapshotter is the user's backup path for a variant: save while the
// virtual cluster runs, restore into the stopped pod's /data.
type snapshotter interface {
	save(t *testing.T)
	restore(t *testing.T)
}

// harikubeSnapshot is harikube's own snapshot of the all-in-one datastore
// (/data/harikube); vCluster's snapshot would read only its mapping store.
type harikubeSnapshot struct {
	vols *podVolumes
	path *string // set by save
}

func (h harikubeSnapshot) binary() string  { return filepath.Join(h.vols.dirs["binaries"], "harikube") }
func (h harikubeSnapshot) dataDir() string { return filepath.Join(h.vols.dirs["data"], "harikube") }

func (h harikubeSnapshot) save(t *testing.T) {
	t.Helper()
	out := run(t, h.binary(), "snapshot", "save", "--data-dir", h.dataDir(), "--name", "live")
	for _, line := range strings.Split(out, "\n") {
		if p, ok := strings.CutPrefix(line, "Snapshot: "); ok {
			*h.path = strings.TrimSpace(p)
		}
	}
	if *h.path == "" {
		t.Fatalf("harikube snapshot save printed no path:\n%s", out)
	}
}

func (h harikubeSnapshot) restore(t *testing.T) {
	t.Helper()
	run(t, h.binary(), "snapshot", "restore", "--data-dir", h.dataDir(), *h.path)
}

// run runs a command and returns its stdout; a non-zero exit fails the test.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), errOut.String())
	}
	return out.String()
}

// virtualCluster is the virtual cluster as a user reaches it: the vc-kine
// Secret's kubeconfig, its server pointed at loopback.
type virtualCluster struct {
	kubeconfig string
	config     *rest.Config
	client     kubernetes.Interface
}

// becomesReady reports whether the syncer passes its readiness probe
// within timeout; false once it has exited.
func becomesReady(syncer *containerRun, timeout time.Duration) bool {
	probe := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline) && syncer.running(); time.Sleep(2 * time.Second) {
		if res, err := probe.Get("https://127.0.0.1:8443/readyz"); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return true
			}
		}
	}
	return false
}

// waitReady waits for the syncer's readiness probe (HTTPS /readyz on 8443,
// as the kubelet probes it) and the kubeconfig Secret, and checks that
// kubectl works with it.
func waitReady(t *testing.T, host *testserver.Server, syncer *containerRun) virtualCluster {
	t.Helper()
	ctx := context.Background()
	probe := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	poll(t, "the syncer's readiness probe (https://127.0.0.1:8443/readyz)", 2*time.Second, 8*time.Minute, func() (bool, error) {
		res, err := probe.Get("https://127.0.0.1:8443/readyz")
		if err != nil {
			return false, err
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK, fmt.Errorf("status %d", res.StatusCode)
	}, syncer)
	var raw []byte
	poll(t, "Secret vc-"+release, time.Second, time.Minute, func() (bool, error) {
		s, err := host.Client.CoreV1().Secrets(namespace).Get(ctx, "vc-"+release, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		raw = s.Data["config"]
		return len(raw) > 0, fmt.Errorf("no key config")
	}, syncer)
	cfg, err := clientcmd.Load(raw)
	if err != nil {
		t.Fatalf("vc-%s config: %v", release, err)
	}
	for _, cluster := range cfg.Clusters {
		if cluster.Server != "https://localhost:8443" {
			t.Errorf("vc-%s names server %s, want https://localhost:8443", release, cluster.Server)
		}
		cluster.Server = "https://127.0.0.1:8443"
	}
	path := filepath.Join(t.TempDir(), "vcluster.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	out := kubectl(t, path, "get", "namespaces", "-o", "name")
	if !strings.Contains(out, "namespace/default") {
		t.Fatalf("kubectl get namespaces with vc-%s: %q, want namespace/default", release, out)
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	restCfg.Timeout = 30 * time.Second
	return virtualCluster{kubeconfig: path, config: restCfg, client: kubernetes.NewForConfigOrDie(restCfg)}
}

// createWorkload creates a ConfigMap and a Secret used by a Pod, the Pod and
// a Service for it, in the virtual cluster's default namespace.
func createWorkload(t *testing.T, c kubernetes.Interface) {
	t.Helper()
	ctx := context.Background()
	labels := map[string]string{"app": "live"}
	if _, err := c.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "live-config", Labels: labels},
		Data:       map[string]string{"greeting": "hello"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "live-secret", Labels: labels},
		StringData: map[string]string{"password": "s3cret"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "live-svc", Labels: labels},
		Spec: corev1.ServiceSpec{
			Selector: labels,
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "live-pod", Labels: labels},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name:         "app",
				Image:        "busybox:1.37",
				Command:      []string{"sleep", "infinity"},
				EnvFrom:      []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "live-config"}}}},
				VolumeMounts: []corev1.VolumeMount{{Name: "secret", MountPath: "/secret"}},
			}},
			Volumes: []corev1.Volume{{Name: "secret", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "live-secret"}}}},
			Tolerations: []corev1.Toleration{
				{Key: corev1.TaintNodeNotReady, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](tolerationSeconds)},
				{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](tolerationSeconds)},
			},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// checkWorkload finds every object createWorkload made.
func checkWorkload(t *testing.T, c kubernetes.Interface) {
	t.Helper()
	ctx := context.Background()
	cm, err := c.CoreV1().ConfigMaps("default").Get(ctx, "live-config", metav1.GetOptions{})
	if err != nil || cm.Data["greeting"] != "hello" {
		t.Errorf("ConfigMap live-config: %v %v", cm.Data, err)
	}
	s, err := c.CoreV1().Secrets("default").Get(ctx, "live-secret", metav1.GetOptions{})
	if err != nil || string(s.Data["password"]) != "s3cret" {
		t.Errorf("Secret live-secret: %v", err)
	}
	if _, err := c.CoreV1().Services("default").Get(ctx, "live-svc", metav1.GetOptions{}); err != nil {
		t.Errorf("Service live-svc: %v", err)
	}
	if _, err := c.CoreV1().Pods("default").Get(ctx, "live-pod", metav1.GetOptions{}); err != nil {
		t.Errorf("Pod live-pod: %v", err)
	}
}

// checkNotEvicted fails when the virtual node is not Ready or tainted, or
// the virtual or host pod is gone or being deleted.
func checkNotEvicted(t *testing.T, virtual, host kubernetes.Interface, hostPodName string) {
	t.Helper()
	ctx := context.Background()
	node, err := virtual.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("virtual node %s: %v", nodeName, err)
	}
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status != corev1.ConditionTrue {
			t.Fatalf("virtual node %s: Ready is %s (%s: %s)", nodeName, c.Status, c.Reason, c.Message)
		}
	}
	for _, taint := range node.Spec.Taints {
		if taint.Effect == corev1.TaintEffectNoExecute {
			t.Fatalf("virtual node %s has the taint %s", nodeName, taint.ToString())
		}
	}
	p, err := virtual.CoreV1().Pods("default").Get(ctx, "live-pod", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("virtual pod live-pod: %v", err)
	}
	if p.DeletionTimestamp != nil {
		t.Fatalf("virtual pod live-pod is being deleted (evicted): %v", p.Status.Conditions)
	}
	hp, err := host.CoreV1().Pods(namespace).Get(ctx, hostPodName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("host pod %s: %v", hostPodName, err)
	}
	if hp.DeletionTimestamp != nil {
		t.Fatalf("host pod %s is being deleted", hostPodName)
	}
}

// datastoreMetrics scrapes the metrics of the process that runs harikube's
// datastore, and names the series of a Widget LIST: the all-in-one server's
// /metrics (through the syncer's proxy), or in per-component mode the kine
// role's own endpoint (a separate process knows no resource names).
func datastoreMetrics(v variant, virtual virtualCluster) (func(t *testing.T) string, []string) {
	if v.perComponent {
		return func(t *testing.T) string {
			t.Helper()
			res, err := http.Get(kineMetricsURL)
			if err != nil {
				t.Fatalf("kine's metrics: %v", err)
			}
			defer res.Body.Close()
			body, err := io.ReadAll(res.Body)
			if err != nil || res.StatusCode != http.StatusOK {
				t.Fatalf("kine's metrics: status %d, %v", res.StatusCode, err)
			}
			return string(body)
		}, []string{`kind="list"`}
	}
	return func(t *testing.T) string {
		t.Helper()
		body, err := virtual.client.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
		if err != nil {
			t.Fatalf("virtual /metrics: %v", err)
		}
		return string(body)
	}, []string{`resource="widgets.live.harikube.io"`, `kind="list"`}
}

// checkPushdown creates a custom resource type in the virtual cluster and
// lists its objects by label: custom resources are served uncached, so the
// selection reaches harikube's datastore, whose metrics count it.
func checkPushdown(t *testing.T, v virtualCluster, scrape func(t *testing.T) string, series ...string) {
	t.Helper()
	ctx := context.Background()
	crd := &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: "widgets.live.harikube.io"},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: "live.harikube.io",
			Names: apiextensionsv1.CustomResourceDefinitionNames{Plural: "widgets", Singular: "widget", Kind: "Widget", ListKind: "WidgetList"},
			Scope: apiextensionsv1.NamespaceScoped,
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{
				Name: "v1", Served: true, Storage: true,
				Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
					Type:                   "object",
					XPreserveUnknownFields: ptr.To(true),
				}},
			}},
		},
	}
	ext := apiextensionsclient.NewForConfigOrDie(v.config)
	if _, err := ext.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, crd, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create CRD in the virtual cluster: %v", err)
	}
	gvr := schema.GroupVersionResource{Group: "live.harikube.io", Version: "v1", Resource: "widgets"}
	widgets := dynamic.NewForConfigOrDie(v.config).Resource(gvr).Namespace("default")
	poll(t, "the Widget CRD served", time.Second, time.Minute, func() (bool, error) {
		for i, color := range []string{"red", "blue", "red"} {
			w := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "live.harikube.io/v1", "kind": "Widget",
				"metadata": map[string]any{"name": fmt.Sprintf("w%d", i), "labels": map[string]any{"color": color}},
			}}
			if _, err := widgets.Create(ctx, w, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return false, err
			}
		}
		return true, nil
	})
	before := metric(t, scrape(t), "harikube_datastore_selection_requests_total", series...)
	list, err := widgets.List(ctx, metav1.ListOptions{LabelSelector: "color=red"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 2 {
		t.Errorf("LIST widgets color=red: %d items, want 2", len(list.Items))
	}
	after := metric(t, scrape(t), "harikube_datastore_selection_requests_total", series...)
	if after <= before {
		t.Errorf("harikube_datastore_selection_requests_total{%s}: %v before the LIST, %v after; want an increase", strings.Join(series, ","), before, after)
	}
}

// metric sums the samples of a metric in a Prometheus text exposition
// whose lines contain every one of labels.
func metric(t *testing.T, body, name string, labels ...string) float64 {
	t.Helper()
	total, err := testserver.SumMetric([]byte(body), name, labels...)
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// waitPortsClosed waits until nothing listens on the addresses any more.
func waitPortsClosed(t *testing.T, addrs ...string) {
	t.Helper()
	poll(t, "nothing listening on "+strings.Join(addrs, ", "), 500*time.Millisecond, 30*time.Second, func() (bool, error) {
		for _, a := range addrs {
			if conn, err := net.DialTimeout("tcp", a, time.Second); err == nil {
				conn.Close()
				return false, fmt.Errorf("%s still accepts connections", a)
			}
		}
		return true, nil
	})
}

// kubectl runs upstream kubectl (harikube's embedded copy) and returns its
// stdout; a non-zero exit fails the test.
func kubectl(t *testing.T, kubeconfig string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testserver.Binary(t), append([]string{"kubectl", "--kubeconfig", kubeconfig}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, errOut.String())
	}
	return out.String()
}

// getThroughPortForward runs `kubectl port-forward target :port` and
// returns the body of a GET of its local port.
func getThroughPortForward(t *testing.T, kubeconfig, target string, port int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testserver.Binary(t), "kubectl", "--kubeconfig", kubeconfig, "port-forward", target, fmt.Sprintf(":%d", port))
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stop := func() { cancel(); _ = cmd.Wait() }
	defer stop()
	fail := func(format string, args ...any) {
		t.Helper()
		stop() // kubectl's stderr is complete once it has exited
		t.Fatalf("kubectl port-forward %s :%d: %s; kubectl's stderr: %s", target, port, fmt.Sprintf(format, args...), errOut.String())
	}
	forwarding := regexp.MustCompile(`^Forwarding from (127\.0\.0\.1:[0-9]+) -> ` + strconv.Itoa(port) + `$`)
	var local string
	for sc := bufio.NewScanner(stdout); local == "" && sc.Scan(); {
		if m := forwarding.FindStringSubmatch(sc.Text()); m != nil {
			local = m[1]
		}
	}
	if local == "" {
		fail("printed no local address")
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	client := &http.Client{Timeout: 30 * time.Second}
	res, err := client.Get("http://" + local + "/")
	if err != nil {
		fail("GET: %v", err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		fail("GET: status %d, %v", res.StatusCode, err)
	}
	return string(body)
}

// kubectlExit runs upstream kubectl with stdin and returns its stdout and
// exit code; it fails the test if kubectl cannot be run or times out.
func kubectlExit(t *testing.T, kubeconfig, stdin string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testserver.Binary(t), append([]string{"kubectl", "--kubeconfig", kubeconfig}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	if ctx.Err() != nil {
		t.Fatalf("kubectl %s: timed out (%v)\n%s", strings.Join(args, " "), err, errOut.String())
	}
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, errOut.String())
	}
	if errOut.Len() > 0 {
		t.Logf("kubectl %s: stderr: %s", strings.Join(args, " "), errOut.String())
	}
	return out.String(), cmd.ProcessState.ExitCode()
}

// vclusterSnapshot is vCluster's own snapshot and restore, as `vcluster
// snapshot kine container:///data/live-snapshot.tar.gz` and `vcluster restore
// kine ...` run them: a pod made from the syncer container's spec runs
// /vcluster snapshot (or restore) with the options in
// VCLUSTER_STORAGE_OPTIONS. In per-component mode the store it reads and
// rewrites (/data/kine.sock) is harikube's kine, so it holds every object.
type vclusterSnapshot struct {
	host      *testserver.Server
	pod       *corev1.Pod
	vols      *podVolumes
	syncerDir string
	logPath   string
	path      string // the snapshot's path in the pod, on the PVC (/data)
}

// file is the snapshot's file on this machine.
func (s vclusterSnapshot) file() string {
	return filepath.Join(s.vols.dirs["data"], strings.TrimPrefix(s.path, "/data/"))
}

func (s vclusterSnapshot) run(t *testing.T, command string) {
	t.Helper()
	opts, err := json.Marshal(map[string]any{"type": "container", "container": map[string]string{"path": s.path}})
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"VCLUSTER_STORAGE_OPTIONS=" + base64.StdEncoding.EncodeToString(opts)}
	p := runContainer(t, s.host.Client, s.host.Port, s.host.Config.TLSClientConfig.CAData, s.pod, "syncer", s.vols, image(t), s.syncerDir, s.logPath, env, "/vcluster", command)
	if code := p.wait(t, 5*time.Minute); code != 0 {
		t.Fatalf("/vcluster %s exited with code %d; last lines of %s:\n%s", command, code, s.logPath, vclusterimage.Tail(s.logPath, 60))
	}
	for _, line := range strings.Split(vclusterimage.Tail(s.logPath, 20), "\n") {
		// The syncer shares the log; its own lines mention neither.
		if strings.Contains(line, "Successfully") && (strings.Contains(line, "snapshot") || strings.Contains(line, "etcd keys")) {
			msg, _, _ := strings.Cut(line[strings.Index(line, "Successfully"):], "\t")
			t.Logf("/vcluster %s: %s", command, msg)
		}
	}
}

func (s vclusterSnapshot) save(t *testing.T) {
	t.Helper()
	s.run(t, "snapshot")
	if fi, err := os.Stat(s.file()); err != nil || fi.Size() == 0 {
		t.Fatalf("vCluster's snapshot %s: %v", s.path, err)
	}
}

// restore is what `vcluster restore` does with the virtual cluster paused:
// the host pods it synced are deleted (the kubelet finishes that at once,
// they run nothing here), then /vcluster restore runs in a pod.
func (s vclusterSnapshot) restore(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	pods, err := s.host.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "vcluster.loft.sh/managed-by=" + release})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if err := s.host.Client.CoreV1().Pods(namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	s.run(t, "restore")
}

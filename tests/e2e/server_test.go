package e2e

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/harikube/harikube/tests/testserver"
)

// kubernetesVersion is the k8s.io/kubernetes version in go.mod, which the
// binary reports.
const kubernetesVersion = "v1.37.2"

var widgetsGVR = schema.GroupVersionResource{Group: "e2e.harikube.io", Version: "v1", Resource: "widgets"}

// TestServer runs one server and checks, in subtests, what a user of
// `harikube server` relies on.
func TestServer(t *testing.T) {
	t.Parallel()
	start := time.Now()
	kubeconfig := filepath.Join(t.TempDir(), "admin.kubeconfig")
	s := testserver.Start(t, "-o", kubeconfig)
	t.Logf("ready in %.1fs", time.Since(start).Seconds())

	t.Run("StartupLogsNoBenignErrors", func(t *testing.T) {
		// Upstream logs this as an error at every start although nothing
		// is wrong; harikube logs it at debug level. (Other errors can
		// occur at a first start, such as the apiserver's lease
		// controller racing the creation of kube-system, and are
		// upstream's to report.)
		const benign = "The manifest file is empty"
		var log []byte
		err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
			var err error
			log, err = os.ReadFile(s.LogPath)
			return bytes.Contains(log, []byte("harikube is ready")), err
		})
		if err != nil {
			t.Fatalf("no \"harikube is ready\" line in %s: %v", s.LogPath, err)
		}
		for _, line := range strings.Split(string(log), "\n") {
			if strings.Contains(line, benign) {
				t.Errorf("logged at the default level: %s", line)
			}
		}
	})
	t.Run("KubeconfigWorks", func(t *testing.T) {
		list, err := s.Client.CoreV1().Namespaces().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatalf("list namespaces: %v", err)
		}
		got := map[string]bool{}
		for _, ns := range list.Items {
			got[ns.Name] = true
		}
		for _, want := range []string{"default", "kube-system"} {
			if !got[want] {
				t.Errorf("namespace %q missing from %v", want, got)
			}
		}
	})
	t.Run("WriteKubeconfig", func(t *testing.T) {
		// -o replaces <data-dir>/kubeconfig.yaml; the clients above read it.
		if st, err := os.Stat(kubeconfig); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("-o %s: %v, %v; want a file with mode 0600", kubeconfig, st, err)
		}
		if _, err := os.Stat(filepath.Join(s.DataDir, "kubeconfig.yaml")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("with -o, %s/kubeconfig.yaml: %v, want none", s.DataDir, err)
		}
	})
	t.Run("NamespaceAndConfigMap", func(t *testing.T) { testNamespaceAndConfigMap(t, s.Client) })
	t.Run("CustomResources", func(t *testing.T) { testCustomResources(t, s.Config) })
	t.Run("ControllerManager", func(t *testing.T) { testControllerManager(t, s.Client) })
	t.Run("ControllerManagerIdentity", func(t *testing.T) {
		// Per-controller credentials: the controller manager makes a
		// service account for each controller it runs with one.
		ctx := context.Background()
		if _, err := s.Client.CoreV1().ServiceAccounts("kube-system").Get(ctx, "replicaset-controller", metav1.GetOptions{}); err != nil {
			t.Errorf("ServiceAccount kube-system/replicaset-controller (per-controller credentials): %v", err)
		}
		// One instance, no leader election: no lease is taken (the
		// controllers above have already run).
		_, err := s.Client.CoordinationV1().Leases("kube-system").Get(ctx, "kube-controller-manager", metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			t.Errorf("Lease kube-system/kube-controller-manager: %v, want not found (no leader election)", err)
		}
	})
	t.Run("Authentication", func(t *testing.T) { testAuthentication(t, s.Config) })
	t.Run("Authorization", func(t *testing.T) { testAuthorization(t, s.Config) })
	t.Run("VersionEndpoint", func(t *testing.T) {
		v, err := s.Client.Discovery().ServerVersion()
		if err != nil {
			t.Fatalf("GET /version: %v", err)
		}
		if v.Major != "1" || v.Minor != "37" || v.GitVersion != kubernetesVersion {
			t.Errorf("GET /version: major %q minor %q gitVersion %q, want 1, 37, %s", v.Major, v.Minor, v.GitVersion, kubernetesVersion)
		}
	})
	t.Run("Kubectl", func(t *testing.T) {
		out, code := s.Run(t, "kubectl", "get", "ns")
		if code != 0 {
			t.Fatalf("harikube kubectl get ns: exit code %d, output:\n%s", code, out)
		}
		for _, want := range []string{"NAME", "default", "kube-system"} {
			if !strings.Contains(out, want) {
				t.Errorf("harikube kubectl get ns: output lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("KubectlDefaultKubeconfig", func(t *testing.T) {
		admin, err := os.ReadFile(kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		out, code := runWithDefaultDataDir(t, admin, "kubectl", "get", "ns", "default", "-o", "name")
		if code != 0 || strings.TrimSpace(out) != "namespace/default" {
			t.Errorf("harikube kubectl get ns default, without KUBECONFIG, with the default data dir's kubeconfig: exit code %d, output:\n%s", code, out)
		}
		// Without that file kubectl has nothing to talk to.
		// kubectl's own default, a server on localhost:8080, is not there.
		if out, code := runWithDefaultDataDir(t, nil, "kubectl", "get", "ns", "default", "-o", "name"); code == 0 || !strings.Contains(out, "localhost:8080") {
			t.Errorf("harikube kubectl without KUBECONFIG or a default kubeconfig: exit code %d, output:\n%s\nwant a failure to reach kubectl's default localhost:8080", code, out)
		}
	})
	t.Run("SecondServerRefused", func(t *testing.T) {
		out, code := runBinary(t, "server", "--data-dir", s.DataDir,
			"--https-listen-port", strconv.Itoa(testserver.FreePort(t)), "--bind-address", "127.0.0.1")
		if code == 0 || !strings.Contains(out, "in use") {
			t.Errorf("second server on the same data dir: exit code %d, output:\n%s\nwant a non-zero exit and a message saying the data dir is in use", code, out)
		}
		if _, err := s.Client.CoreV1().Namespaces().Get(context.Background(), "default", metav1.GetOptions{}); err != nil {
			t.Errorf("first server stopped serving after the second was refused: %v", err)
		}
	})
}

func testNamespaceAndConfigMap(t *testing.T, c kubernetes.Interface) {
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "e2e-core", Labels: map[string]string{"team": "e2e"}}}
	if _, err := c.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	got, err := c.CoreV1().Namespaces().Get(ctx, "e2e-core", metav1.GetOptions{})
	if err != nil || got.Labels["team"] != "e2e" || got.Status.Phase != corev1.NamespaceActive {
		t.Fatalf("get namespace: %+v, %v", got, err)
	}

	cms := c.CoreV1().ConfigMaps("e2e-core")
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "settings", Labels: map[string]string{"app": "demo"}},
		Data:       map[string]string{"color": "blue"},
	}
	created, err := cms.Create(ctx, cm, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create configmap: %v", err)
	}
	got2, err := cms.Get(ctx, "settings", metav1.GetOptions{})
	if err != nil || got2.Data["color"] != "blue" || got2.UID != created.UID {
		t.Fatalf("get configmap: %+v, %v", got2, err)
	}
	got2.Data["color"] = "green"
	updated, err := cms.Update(ctx, got2, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("update configmap: %v", err)
	}
	if updated.ResourceVersion == created.ResourceVersion {
		t.Errorf("update kept resourceVersion %s", created.ResourceVersion)
	}
	list, err := cms.List(ctx, metav1.ListOptions{LabelSelector: "app=demo"})
	if err != nil || len(list.Items) != 1 || list.Items[0].Data["color"] != "green" {
		t.Fatalf("list configmaps app=demo: %+v, %v", list, err)
	}
	if err := cms.Delete(ctx, "settings", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete configmap: %v", err)
	}
	if _, err := cms.Get(ctx, "settings", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("get deleted configmap: %v, want NotFound", err)
	}
	if err := c.CoreV1().Namespaces().Delete(ctx, "e2e-core", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete namespace: %v", err)
	}
	// The namespace controller finishes the deletion later; waiting for it
	// takes about ten seconds.
	gone, err := c.CoreV1().Namespaces().Get(ctx, "e2e-core", metav1.GetOptions{})
	switch {
	case err == nil && gone.Status.Phase != corev1.NamespaceTerminating:
		t.Errorf("namespace after delete: phase %q, want Terminating", gone.Status.Phase)
	case err != nil && !apierrors.IsNotFound(err):
		t.Errorf("get namespace after delete: %v", err)
	}
}

// createWidgetCRD installs Widgets: spec.color (selectable) and spec.size.
func createWidgetCRD(t *testing.T, cfg *rest.Config) dynamic.NamespaceableResourceInterface {
	return installColorCRD(t, cfg, widgetsGVR, "Widget", map[string]apiextensionsv1.JSONSchemaProps{
		"color": {Type: "string"}, "size": {Type: "integer"},
	})
}

func newWidget(name, color string, size int64) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "e2e.harikube.io/v1", "kind": "Widget",
		"metadata": map[string]any{"name": name, "labels": map[string]any{"color": color}},
		"spec":     map[string]any{"color": color, "size": size},
	}}
}

func widgetNames(list *unstructured.UnstructuredList) []string {
	var out []string
	for _, it := range list.Items {
		out = append(out, it.GetName())
	}
	return out
}

func testCustomResources(t *testing.T, cfg *rest.Config) {
	ctx := context.Background()
	widgets := createWidgetCRD(t, cfg).Namespace("default")
	for _, w := range []*unstructured.Unstructured{newWidget("w1", "red", 1), newWidget("w2", "blue", 2), newWidget("w3", "red", 3)} {
		if _, err := widgets.Create(ctx, w, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create widget %s: %v", w.GetName(), err)
		}
	}

	w2, err := widgets.Get(ctx, "w2", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get widget w2: %v", err)
	}
	if color, _, _ := unstructured.NestedString(w2.Object, "spec", "color"); color != "blue" {
		t.Errorf("w2 spec.color = %q, want blue", color)
	}

	all, err := widgets.List(ctx, metav1.ListOptions{})
	if err != nil || strings.Join(widgetNames(all), ",") != "w1,w2,w3" {
		t.Fatalf("list widgets: %v, %v; want w1,w2,w3", widgetNames(all), err)
	}
	byLabel, err := widgets.List(ctx, metav1.ListOptions{LabelSelector: "color=red"})
	if err != nil || strings.Join(widgetNames(byLabel), ",") != "w1,w3" {
		t.Errorf("list widgets color=red (label): %v, %v; want w1,w3", widgetNames(byLabel), err)
	}
	byField, err := widgets.List(ctx, metav1.ListOptions{FieldSelector: "spec.color=red"})
	if err != nil || strings.Join(widgetNames(byField), ",") != "w1,w3" {
		t.Errorf("list widgets spec.color=red (selectable field): %v, %v; want w1,w3", widgetNames(byField), err)
	}

	if err := unstructured.SetNestedField(w2.Object, "red", "spec", "color"); err != nil {
		t.Fatal(err)
	}
	if err := unstructured.SetNestedField(w2.Object, int64(20), "spec", "size"); err != nil {
		t.Fatal(err)
	}
	if _, err := widgets.Update(ctx, w2, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update widget w2: %v", err)
	}
	got, err := widgets.Get(ctx, "w2", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get updated widget w2: %v", err)
	}
	if size, _, _ := unstructured.NestedInt64(got.Object, "spec", "size"); size != 20 {
		t.Errorf("w2 spec.size after update = %d, want 20", size)
	}
	byField, err = widgets.List(ctx, metav1.ListOptions{FieldSelector: "spec.color=red"})
	if err != nil || strings.Join(widgetNames(byField), ",") != "w1,w2,w3" {
		t.Errorf("list widgets spec.color=red after update: %v, %v; want w1,w2,w3", widgetNames(byField), err)
	}

	if err := widgets.Delete(ctx, "w1", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete widget w1: %v", err)
	}
	if _, err := widgets.Get(ctx, "w1", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("get deleted widget w1: %v, want NotFound", err)
	}
	all, err = widgets.List(ctx, metav1.ListOptions{})
	if err != nil || strings.Join(widgetNames(all), ",") != "w2,w3" {
		t.Errorf("list widgets after delete: %v, %v; want w2,w3", widgetNames(all), err)
	}
}

// testControllerManager: controllers run, so a Deployment gets a ReplicaSet
// and a new namespace gets its default ServiceAccount.
func testControllerManager(t *testing.T, c kubernetes.Interface) {
	ctx := context.Background()
	ns := "e2e-controllers"
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	pollUntil(t, "default ServiceAccount in "+ns, func(ctx context.Context) bool {
		_, err := c.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil
	})

	replicas := int32(2)
	labels := map[string]string{"app": "web"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "registry.k8s.io/pause:3.10"}}},
			},
		},
	}
	created, err := c.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	pollUntil(t, "ReplicaSet owned by deployment web", func(ctx context.Context) bool {
		list, err := c.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return false
		}
		for _, rs := range list.Items {
			if ref := metav1.GetControllerOf(&rs); ref != nil && ref.UID == created.UID {
				return true
			}
		}
		return false
	})
	// The ReplicaSet controller creates the pods (no node runs them).
	pollUntil(t, "2 pods of deployment web", func(ctx context.Context) bool {
		list, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		return err == nil && len(list.Items) == 2
	})
}

// testAuthentication: without credentials the API is closed but the health
// endpoints are open.
func testAuthentication(t *testing.T, cfg *rest.Config) {
	hc, err := rest.HTTPClientFor(rest.AnonymousClientConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	hc.Timeout = 10 * time.Second
	get := func(path string) (int, string) {
		resp, err := hc.Get(cfg.Host + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get("/api/v1/namespaces"); code != http.StatusUnauthorized {
		t.Errorf("anonymous GET /api/v1/namespaces: %d %s, want 401", code, body)
	}
	for _, path := range []string{"/readyz", "/healthz", "/livez"} {
		if code, body := get(path); code != http.StatusOK || body != "ok" {
			t.Errorf("anonymous GET %s: %d %q, want 200 ok", path, code, body)
		}
	}
}

// testAuthorization: an authenticated user without RBAC rights is denied.
func testAuthorization(t *testing.T, cfg *rest.Config) {
	nobody := rest.CopyConfig(cfg)
	nobody.Impersonate = rest.ImpersonationConfig{UserName: "nobody"}
	c := kubernetes.NewForConfigOrDie(nobody)
	_, err := c.CoreV1().Namespaces().List(context.Background(), metav1.ListOptions{})
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), `User "nobody"`) {
		t.Errorf("list namespaces as nobody: %v, want 403 Forbidden for user nobody", err)
	}
	_, err = c.CoreV1().ConfigMaps("default").Create(context.Background(),
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "nope"}}, metav1.CreateOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("create configmap as nobody: %v, want 403 Forbidden", err)
	}
}

// TestRestartKeepsData stops a server with SIGINT (the other tests use
// SIGTERM) and starts it again on the same data dir.
func TestRestartKeepsData(t *testing.T) {
	t.Parallel()
	s := testserver.Start(t)
	ctx := context.Background()
	ns := "e2e-restart"
	if _, err := s.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	cm, err := s.Client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "kept"},
		Data:       map[string]string{"k": "v"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create configmap: %v", err)
	}
	widgets := createWidgetCRD(t, s.Config)
	w := newWidget("kept", "green", 7)
	w.SetNamespace(ns)
	cr, err := widgets.Namespace(ns).Create(ctx, w, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create widget: %v", err)
	}

	stopped := time.Now()
	if code := s.StopWith(t, os.Interrupt); code != 0 {
		t.Fatalf("stop: exit code %d, want 0", code)
	}
	t.Logf("stopped in %.1fs", time.Since(stopped).Seconds())
	log, err := os.ReadFile(s.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	// The datastore goes last, so that the apiserver's last requests reach it.
	if bytes.Contains(log, []byte("did not stop in time")) {
		t.Errorf("a component did not stop in time:\n%s", log[bytes.Index(log, []byte(`msg="Shutting down"`)):])
	}
	last := -1
	for _, line := range []string{`msg="Shutting down"`, `msg="kube-controller-manager stopped"`, `msg="kube-apiserver stopped"`, `msg="Datastore stopped"`, "msg=Stopped\n"} {
		i := bytes.Index(log, []byte(line))
		if i <= last {
			t.Errorf("the server's log has no %q after the line before it (at %d, the one before at %d); stop order: shutting down, controller manager, apiserver, datastore", line, i, last)
		}
		last = i
	}
	restarted := time.Now()
	s.Restart(t)
	t.Logf("ready again in %.1fs", time.Since(restarted).Seconds())

	if _, err := s.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
		t.Errorf("namespace after restart: %v", err)
	}
	gotCM, err := s.Client.CoreV1().ConfigMaps(ns).Get(ctx, "kept", metav1.GetOptions{})
	if err != nil || gotCM.UID != cm.UID || gotCM.Data["k"] != "v" {
		t.Errorf("configmap after restart: %+v, %v", gotCM, err)
	}
	widgets = dynamic.NewForConfigOrDie(s.Config).Resource(widgetsGVR)
	var gotCR *unstructured.Unstructured
	pollUntil(t, "widget after restart", func(ctx context.Context) bool {
		gotCR, err = widgets.Namespace(ns).Get(ctx, "kept", metav1.GetOptions{})
		return err == nil
	})
	if color, _, _ := unstructured.NestedString(gotCR.Object, "spec", "color"); gotCR.GetUID() != cr.GetUID() || color != "green" {
		t.Errorf("widget after restart: uid %s color %q, want uid %s color green", gotCR.GetUID(), color, cr.GetUID())
	}
}

func TestVersionCommand(t *testing.T) {
	t.Parallel()
	out, code := runBinary(t, "version")
	// The Go toolchain's record of what the binary was built from.
	info, err := buildinfo.ReadFile(testserver.Binary(t))
	if err != nil {
		t.Fatal(err)
	}
	dep := map[string]string{}
	for _, d := range info.Deps {
		dep[d.Path] = d.Version
		if d.Replace != nil {
			dep[d.Path] = d.Replace.Version
		}
	}
	want := []*regexp.Regexp{
		regexp.MustCompile(`^harikube \S+$`),
		regexp.MustCompile(`^Kubernetes ` + regexp.QuoteMeta(kubernetesVersion) + `$`),
		regexp.MustCompile(`^Kine ` + regexp.QuoteMeta(dep["github.com/k3s-io/kine"]) + `$`),
		regexp.MustCompile(`^SQLite 3\.\d+\.\d+ \(modernc\.org/sqlite ` + regexp.QuoteMeta(dep["modernc.org/sqlite"]) + `\)$`),
		regexp.MustCompile(`^Go ` + regexp.QuoteMeta(info.GoVersion) + `$`),
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != len(want) {
		t.Fatalf("harikube version: exit code %d, %d lines, want %d:\n%s", code, len(lines), len(want), out)
	}
	for i, re := range want {
		if !re.MatchString(lines[i]) {
			t.Errorf("harikube version line %d: %q, want %s", i+1, lines[i], re)
		}
	}
}

// TestStartupErrors: a server that cannot start says why in one line and
// exits non-zero.
func TestStartupErrors(t *testing.T) {
	t.Parallel()
	port := strconv.Itoa(testserver.FreePort(t))

	t.Run("UnwritableDataDir", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(file, "data")
		out, code := runBinary(t, "server", "--data-dir", dir, "--https-listen-port", port, "--bind-address", "127.0.0.1")
		msg := strings.TrimSpace(out)
		if code == 0 || !strings.Contains(msg, dir) || strings.Contains(msg, "\n") {
			t.Errorf("data dir under a file: exit code %d, output:\n%s\nwant a non-zero exit and one line naming %s", code, out, dir)
		}
	})
	t.Run("UnknownFlag", func(t *testing.T) {
		out, code := runBinary(t, "server", "--no-such-flag")
		if code == 0 || !strings.Contains(out, "--no-such-flag") {
			t.Errorf("unknown flag: exit code %d, output:\n%s\nwant a non-zero exit and a message naming --no-such-flag", code, out)
		}
	})
	t.Run("PortInUse", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		busy := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
		out, code := runBinary(t, "server", "--data-dir", t.TempDir(), "--https-listen-port", busy, "--bind-address", "127.0.0.1")
		if code == 0 || !strings.Contains(out, busy) {
			t.Errorf("port in use: exit code %d, output:\n%s\nwant a non-zero exit and a message naming port %s", code, out, busy)
		}
	})
}

// runBinary runs harikube with args, bounded to 60 s, and returns its
// combined output and exit code.
func runBinary(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return runBounded(t, ctx, exec.CommandContext(ctx, testserver.Binary(t), args...), args)
}

// runBounded runs cmd, made with ctx, and returns its combined output and
// exit code; it fails the test if ctx ends first or cmd cannot run.
func runBounded(t *testing.T, ctx context.Context, cmd *exec.Cmd, args []string) (string, int) {
	t.Helper()
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("harikube %s: still running after 60s; output:\n%s", strings.Join(args, " "), out)
	}
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("harikube %s: %v", strings.Join(args, " "), err)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// runWithDefaultDataDir runs the binary without KUBECONFIG and with admin
// (if not nil) as the kubeconfig of the default data directory: as root
// /var/lib/harikube, seen through a private mount namespace so that the
// machine's own is untouched; otherwise ~/.harikube under a temporary HOME.
func runWithDefaultDataDir(t *testing.T, admin []byte, args ...string) (string, int) {
	t.Helper()
	root, home := t.TempDir(), t.TempDir()
	dataDir := filepath.Join(home, ".harikube")
	if os.Geteuid() == 0 {
		dataDir = filepath.Join(root, "harikube")
	}
	if admin != nil {
		if err := os.MkdirAll(dataDir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dataDir, "kubeconfig.yaml"), admin, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testserver.Binary(t), args...)
	if os.Geteuid() == 0 {
		script := `mount --bind "$1" /var/lib && shift && exec "$@"`
		cmd = exec.CommandContext(ctx, "unshare", append([]string{"--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", root, testserver.Binary(t)}, args...)...)
	}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KUBECONFIG=") && !strings.HasPrefix(kv, "HOME=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "HOME="+home)
	return runBounded(t, ctx, cmd, args)
}

// pollUntil waits up to 60 s for cond.
func pollUntil(t *testing.T, what string, cond func(ctx context.Context) bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 60*time.Second, true,
		func(ctx context.Context) (bool, error) { return cond(ctx), nil })
	if err != nil {
		t.Fatalf("timed out waiting for %s", what)
	}
}

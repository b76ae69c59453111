//go:build vclusterlive

package vclusterlive

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/retry"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	remotecommandserver "k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
	"k8s.io/utils/ptr"

	"github.com/harikube/harikube/tests/vclusterimage"
)

// The node the test's kubelet stands for, and the addresses it reports for
// itself and its pods (everything is on loopback).
const (
	nodeName = "live-node"
	nodeIP   = "127.0.0.1"
)

// keepNodeReady registers a Node and, as a kubelet does, renews its Lease
// and its Ready condition every 10 s until the test ends.
func keepNodeReady(t *testing.T, host kubernetes.Interface) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	now := metav1.Now()
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: nodeName, Labels: map[string]string{"kubernetes.io/hostname": nodeName, "kubernetes.io/os": "linux"}},
		Status: corev1.NodeStatus{
			Capacity:        corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("8"), corev1.ResourceMemory: resource.MustParse("32Gi"), corev1.ResourcePods: resource.MustParse("110")},
			Allocatable:     corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("8"), corev1.ResourceMemory: resource.MustParse("32Gi"), corev1.ResourcePods: resource.MustParse("110")},
			Addresses:       []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeIP}, {Type: corev1.NodeHostName, Address: nodeName}},
			Conditions:      []corev1.NodeCondition{readyCondition(now)},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: 10250}},
			NodeInfo:        corev1.NodeSystemInfo{KubeletVersion: "v1.37.2", OperatingSystem: "linux", Architecture: "amd64"},
		},
	}
	created, err := host.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node %s: %v", nodeName, err)
	}
	created.Status = node.Status
	if _, err := host.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("node %s status: %v", nodeName, err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if err := heartbeat(ctx, host); err != nil && ctx.Err() == nil {
				t.Logf("node heartbeat: %v", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Second):
			}
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
}

func readyCondition(now metav1.Time) corev1.NodeCondition {
	return corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "kubelet is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now}
}

// heartbeat renews the node's Lease and Ready condition once.
func heartbeat(ctx context.Context, host kubernetes.Interface) error {
	now := metav1.NowMicro()
	leases := host.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	lease, err := leases.Get(ctx, nodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: nodeName},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To(nodeName), LeaseDurationSeconds: ptr.To[int32](40), RenewTime: &now},
		}, metav1.CreateOptions{})
	} else if err == nil {
		lease.Spec.RenewTime = &now
		_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := host.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		ready := readyCondition(metav1.Now())
		for i, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady {
				ready.LastTransitionTime = c.LastTransitionTime
				node.Status.Conditions[i] = ready
			}
		}
		_, err = host.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
		return err
	})
}

// bindAndRun binds a host pod to the node and reports it running, as the
// scheduler and then the kubelet would.
func bindAndRun(t *testing.T, host kubernetes.Interface, namespace, name, podIP string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	err := host.CoreV1().Pods(namespace).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Target:     corev1.ObjectReference{Kind: "Node", Name: nodeName},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("bind pod %s/%s to %s: %v", namespace, name, nodeName, err)
	}
	var pod *corev1.Pod
	poll(t, "status of pod "+name, time.Second, 30*time.Second, func() (bool, error) {
		p, err := host.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		now := metav1.Now()
		p.Status.Phase = corev1.PodRunning
		p.Status.HostIP, p.Status.PodIP = nodeIP, podIP
		p.Status.HostIPs, p.Status.PodIPs = []corev1.HostIP{{IP: nodeIP}}, []corev1.PodIP{{IP: podIP}}
		p.Status.StartTime = &now
		p.Status.Conditions = []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		}
		pod, err = host.CoreV1().Pods(namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		return err == nil, err
	})
	return pod
}

// containerRun is one run of a container of a host pod (the syncer, or
// vCluster's snapshot or restore): a private root with the pod's volumes
// bind-mounted where the container mounts them.
type containerRun struct {
	cmd  *exec.Cmd // unshare; the container's command is PID 1 of its PID namespace
	name string    // the container's
	log  string
	done chan struct{}
	code int
}

// podVolumes are the directories behind the pod's volumes, kept across
// container restarts (the PVC "data" also across pod runs).
type podVolumes struct {
	dirs map[string]string // volume name -> directory
	// initialized: the init containers ran.
	initialized bool
}

// forNewPod are the volumes of a new pod of the same StatefulSet: its
// claims' directories, as the PVCs keep them; everything else starts empty
// and the init containers run again.
func (v *podVolumes) forNewPod(pod *corev1.Pod) *podVolumes {
	next := &podVolumes{dirs: map[string]string{}}
	for _, vol := range pod.Spec.Volumes {
		if dir, ok := v.dirs[vol.Name]; ok && vol.PersistentVolumeClaim != nil {
			next.dirs[vol.Name] = dir
		}
	}
	return next
}

// runSyncer starts the pod's container "syncer" with image files from the
// syncer build (syncerDir: /vcluster, and /usr/local/bin/kine where the
// version's vcluster image has one) and the init container "kubernetes" run
// first from the harikube image.
func runSyncer(t *testing.T, host kubernetes.Interface, hostPort int, hostCA []byte, pod *corev1.Pod, vols *podVolumes, img vclusterimage.Image, syncerDir, logPath string) *containerRun {
	t.Helper()
	return runContainer(t, host, hostPort, hostCA, pod, "syncer", vols, img, syncerDir, logPath, nil, "/vcluster", "start")
}

// runContainer runs command in the pod's container containerName, with env
// added to its environment: the syncer itself, a snapshot or restore run in
// its container, or the pod vCluster's CLI makes from its spec for a
// restore. Each runs the syncer image.
func runContainer(t *testing.T, host kubernetes.Interface, hostPort int, hostCA []byte, pod *corev1.Pod, containerName string, vols *podVolumes, img vclusterimage.Image, syncerDir, logPath string, extraEnv []string, command ...string) *containerRun {
	t.Helper()
	ctx := context.Background()
	var container *corev1.Container
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == containerName {
			container = &pod.Spec.Containers[i]
		}
	}
	if container == nil {
		t.Fatalf("pod %s has no container %s", pod.Name, containerName)
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		volumes[v.Name] = v
	}

	// The service-account token the projected volume holds, bound to the pod.
	tr, err := host.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: ptr.To[int64](3600),
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for service account %s: %v", pod.Spec.ServiceAccountName, err)
	}
	projected := map[string][]byte{"token": []byte(tr.Status.Token), "ca.crt": hostCA, "namespace": []byte(pod.Namespace)}

	// Volumes, as the kubelet prepares them; a restarted container finds
	// them as they were, and init containers ran only before the first.
	firstRun := !vols.initialized
	vols.initialized = true
	for _, m := range container.VolumeMounts {
		dir, ok := vols.dirs[m.Name]
		if !ok {
			dir = filepath.Join(t.TempDir(), m.Name)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			vols.dirs[m.Name] = dir
		}
		v, isVolume := volumes[m.Name]
		if isVolume && v.Projected != nil {
			// kube-api-access-*: what the ServiceAccount admission adds.
			for name, data := range projected {
				if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		if isVolume && v.Secret != nil {
			secret, err := host.CoreV1().Secrets(pod.Namespace).Get(ctx, v.Secret.SecretName, metav1.GetOptions{})
			if err != nil {
				t.Fatalf("secret volume %s: %v", m.Name, err)
			}
			for k, data := range secret.Data {
				if err := os.WriteFile(filepath.Join(dir, k), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// The init container "kubernetes": the image's own cp into /binaries.
	for _, ic := range pod.Spec.InitContainers {
		if !firstRun {
			break
		}
		if strings.Join(append(ic.Command, ic.Args...), " ") != "cp -r /kubernetes/. /binaries/" {
			t.Fatalf("init container %s runs %q, want cp -r /kubernetes/. /binaries/", ic.Name, append(ic.Command, ic.Args...))
		}
		if err := img.InitCopy(vols.dirs["binaries"]); err != nil {
			t.Fatal(err)
		}
	}
	// The container's root: the syncer image's files, /etc, and mount points.
	root := filepath.Join(t.TempDir(), "root")
	for _, d := range []string{"dev", "proc", "etc", "root", "usr/local/bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"etc/hosts":       "127.0.0.1 localhost\n::1 localhost\n",
		"etc/passwd":      "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":       "root:x:0:\n",
		"etc/resolv.conf": "",
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	binds := [][2]string{{filepath.Join(syncerDir, "vcluster"), "/vcluster"}}
	if _, err := os.Stat(filepath.Join(syncerDir, "kine")); err == nil {
		binds = append(binds, [2]string{filepath.Join(syncerDir, "kine"), "/usr/local/bin/kine"})
	}
	for _, m := range container.VolumeMounts {
		binds = append(binds, [2]string{vols.dirs[m.Name], m.MountPath})
	}
	var script strings.Builder
	script.WriteString("set -e\nmount --rbind /dev \"$R/dev\"\nmount -t proc proc \"$R/proc\"\n")
	for _, b := range binds {
		target := filepath.Join(root, b[1])
		if fi, err := os.Stat(b[0]); err == nil && !fi.IsDir() {
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(target, nil, 0o755); err != nil {
				t.Fatal(err)
			}
		} else if err := os.MkdirAll(target, 0o755); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&script, "mount --bind %q %q\n", b[0], target)
	}
	script.WriteString("cd \"$R\"\nexec chroot \"$R\"")
	for _, arg := range command {
		fmt.Fprintf(&script, " %q", arg)
	}
	script.WriteString("\n")

	// The container's environment: the pod spec's, with field references
	// resolved from the pod, plus what the kubelet adds.
	env := []string{
		"R=" + root,
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root",
		"HOSTNAME=" + pod.Name,
		"KUBERNETES_SERVICE_HOST=127.0.0.1",
		"KUBERNETES_SERVICE_PORT=" + strconv.Itoa(hostPort),
		"KUBERNETES_SERVICE_PORT_HTTPS=" + strconv.Itoa(hostPort),
	}
	for _, e := range container.Env {
		value := e.Value
		if e.ValueFrom != nil {
			if e.ValueFrom.FieldRef == nil {
				t.Fatalf("env %s: only fieldRef is supported", e.Name)
			}
			switch e.ValueFrom.FieldRef.FieldPath {
			case "metadata.name":
				value = pod.Name
			case "metadata.namespace":
				value = pod.Namespace
			case "status.podIP":
				value = pod.Status.PodIP
			case "status.hostIP":
				value = pod.Status.HostIP
			case "spec.nodeName":
				value = pod.Spec.NodeName
			default:
				t.Fatalf("env %s: field %s", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
		}
		env = append(env, e.Name+"="+value)
	}
	env = append(env, extraEnv...)

	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== %s: %s in container %s of pod %s/%s\n", time.Now().Format(time.RFC3339), strings.Join(command, " "), containerName, pod.Namespace, pod.Name)
	p := &containerRun{name: containerName, log: logPath, done: make(chan struct{})}
	p.cmd = exec.Command("unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child=SIGKILL", "--", "/bin/sh", "-c", script.String())
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start container %s: %v", containerName, err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	t.Cleanup(func() { p.kill(t) })
	return p
}

// wait waits for the container to exit and returns its exit code.
func (p *containerRun) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(timeout):
		t.Fatalf("the container did not exit within %s; last lines of %s:\n%s", timeout, p.log, vclusterimage.Tail(p.log, 60))
		return -1
	}
}

func (p *containerRun) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// exitedErr is non-nil once the container has exited.
func (p *containerRun) exitedErr() error {
	if p.running() {
		return nil
	}
	return fmt.Errorf("container %s exited with code %d; last lines of %s:\n%s", p.name, p.code, p.log, vclusterimage.Tail(p.log, 60))
}

// kill is SIGKILL of the container's command and everything it started:
// unshare passes it to the namespace's PID 1, and the kernel then kills every
// other process of the PID namespace.
func (p *containerRun) kill(t *testing.T) {
	if !p.running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Errorf("container %s: its PID namespace did not exit within 30s of SIGKILL", p.name)
	}
}

// poll is vclusterimage.Poll, stopping early when one of pods exits.
func poll(t *testing.T, what string, interval, timeout time.Duration, cond func() (bool, error), pods ...*containerRun) {
	t.Helper()
	alive := make([]func() error, len(pods))
	for i, p := range pods {
		alive[i] = p.exitedErr
	}
	vclusterimage.Poll(t, what, interval, timeout, cond, alive...)
}

// kubeletAPI is the node's kubelet API as far as the host apiserver uses it
// here: container logs (`kubectl logs` in the virtual cluster, whose syncer
// sends it to the host apiserver; vCluster's CLI reading its restore pod)
// and exec and port forwarding (`kubectl exec`, `kubectl port-forward`),
// served by the kubelet's own streaming library.
// It serves HTTPS on the node's port 10250 with a self-signed certificate:
// the apiserver checks it only against --kubelet-certificate-authority,
// which harikube does not set.
type kubeletAPI struct {
	ctx   context.Context // ends with the test: exec'd commands stop with it
	mu    sync.Mutex
	logs  map[string]containerLog // namespace/pod/container
	roots map[string]string       // namespace/pod/container -> its root for exec
	ports map[string]string       // namespace/pod/port -> where this machine serves it
}

// containerLog is a container's log file from offset from; done is closed
// when the container has exited (nil: it never ends).
type containerLog struct {
	path string
	from int64
	done <-chan struct{}
}

func startKubeletAPI(t *testing.T) *kubeletAPI {
	t.Helper()
	certPEM, keyPEM, err := certutil.GenerateSelfSignedCertKey(nodeName, []net.IP{net.ParseIP(nodeIP)}, []string{nodeName})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	k := &kubeletAPI{ctx: ctx, logs: map[string]containerLog{}, roots: map[string]string{}, ports: map[string]string{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", k.containerLogs)
	mux.HandleFunc("/exec/{namespace}/{pod}/{container}", k.exec)
	mux.HandleFunc("/portForward/{namespace}/{pod}", k.portForward)
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{pair}}, ReadHeaderTimeout: 10 * time.Second}
	ln, err := net.Listen("tcp", net.JoinHostPort(nodeIP, "10250"))
	if err != nil {
		t.Fatalf("the kubelet API's port: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() {
		cancel()
		_ = srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("the kubelet API: %v", err)
		}
	})
	return k
}

// containerKey names the request's container in kubeletAPI's maps.
func containerKey(r *http.Request) string {
	return r.PathValue("namespace") + "/" + r.PathValue("pod") + "/" + r.PathValue("container")
}

// lookup reads one of kubeletAPI's maps.
func lookup[V any](k *kubeletAPI, m map[string]V, key string) (V, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	v, ok := m[key]
	return v, ok
}

// serveLog makes the container's log readable through the apiserver.
func (k *kubeletAPI) serveLog(namespace, pod, container string, log containerLog) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.logs[namespace+"/"+pod+"/"+container] = log
}

// serveExec lets commands run in the container, chrooted to root.
func (k *kubeletAPI) serveExec(namespace, pod, container, root string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.roots[namespace+"/"+pod+"/"+container] = root
}

// exec runs the request's command in the container with its streams
// (stdin, stdout, stderr) and exit code carried as the kubelet carries them.
func (k *kubeletAPI) exec(w http.ResponseWriter, r *http.Request) {
	root, ok := lookup(k, k.roots, containerKey(r))
	if !ok {
		http.Error(w, "container not found", http.StatusNotFound)
		return
	}
	opts, err := remotecommandserver.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	remotecommandserver.ServeExec(w, r, chrootExecutor{ctx: k.ctx, root: root}, r.PathValue("pod"), "", r.PathValue("container"),
		r.URL.Query()["command"], opts, 5*time.Minute, 30*time.Second, remotecommandserver.SupportedStreamingProtocols)
}

// chrootExecutor runs a command chrooted to an image's files, as root,
// with a fixed PATH and HOME: enough to carry streams and an exit code, not
// a container (no namespaces, the pod's environment not set, the files
// shared and writable).
type chrootExecutor struct {
	ctx  context.Context
	root string
}

// ExecInContainer ignores the request's context: a hijacked connection's
// does not end when the client leaves.
func (e chrootExecutor) ExecInContainer(_ context.Context, _, _, _ string, cmd []string, in io.Reader, out, errOut io.WriteCloser, _ bool, _ <-chan remotecommandserver.TerminalSize, _ time.Duration) error {
	c := exec.CommandContext(e.ctx, "chroot", append([]string{e.root}, cmd...)...)
	c.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"}
	// The command may end before the client closes stdin.
	c.WaitDelay = 5 * time.Second
	if in != nil {
		c.Stdin = in
	}
	if out != nil {
		c.Stdout = out
	}
	if errOut != nil {
		c.Stderr = errOut
	}
	err := c.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code := exit.ExitCode()
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal()) // as a shell and the kubelet report it
		}
		return utilexec.CodeExitError{Err: err, Code: code}
	}
	return err
}

// servePort forwards connections to the pod's port to addr on this machine.
func (k *kubeletAPI) servePort(namespace, pod string, port int32, addr string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.ports[fmt.Sprintf("%s/%s/%d", namespace, pod, port)] = addr
}

// portForward carries connections to the pod's ports as the kubelet does.
func (k *kubeletAPI) portForward(w http.ResponseWriter, r *http.Request) {
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	portforward.ServePortForward(w, r, podPorts{k: k, namespace: r.PathValue("namespace")}, r.PathValue("pod"), "", opts,
		5*time.Minute, 30*time.Second, portforward.SupportedProtocols)
}

// podPorts connects a forwarded stream to where servePort says the pod's
// port is.
type podPorts struct {
	k         *kubeletAPI
	namespace string
}

func (p podPorts) PortForward(ctx context.Context, pod, _ string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	addr, ok := lookup(p.k, p.k.ports, fmt.Sprintf("%s/%s/%d", p.namespace, pod, port))
	if !ok {
		return fmt.Errorf("pod %s/%s serves nothing on port %d", p.namespace, pod, port)
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	// Ends with the connection, closed once the pod's side has answered.
	go func() { _, _ = io.Copy(conn, stream) }()
	if _, err := io.Copy(stream, conn); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		return err // not the client going away first
	}
	return nil
}

// containerLogs answers as the kubelet does: the log so far, or with
// follow=true everything until the container exits. The options that
// select part of a log are refused, so that no check passes without them
// being served.
func (k *kubeletAPI) containerLogs(w http.ResponseWriter, r *http.Request) {
	for _, option := range []string{"tailLines", "limitBytes", "sinceSeconds", "sinceTime", "timestamps", "previous"} {
		if r.URL.Query().Has(option) {
			http.Error(w, "the test's kubelet does not serve "+option, http.StatusBadRequest)
			return
		}
	}
	log, ok := lookup(k, k.logs, containerKey(r))
	if !ok {
		http.Error(w, "container not found", http.StatusNotFound)
		return
	}
	f, err := os.Open(log.path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer f.Close()
	if _, err := f.Seek(log.from, io.SeekStart); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	follow := r.URL.Query().Get("follow") == "true"
	for {
		exited := false
		if follow {
			select {
			case <-log.done:
				exited = true
			default:
			}
		}
		if _, err := io.Copy(w, f); err != nil {
			return
		}
		if !follow || exited {
			return
		}
		if fl, ok := w.(http.Flusher); ok {
			fl.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-log.done:
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// finishDeletions removes the node's pods that are being deleted, as the
// kubelet does once their containers have stopped: nothing runs in them
// here, or the caller has stopped it.
func finishDeletions(ctx context.Context, host kubernetes.Interface) error {
	list, err := host.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + nodeName})
	if err != nil {
		return err
	}
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			continue
		}
		err := host.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0), Preconditions: &metav1.Preconditions{UID: &p.UID}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("remove pod %s/%s: %w", p.Namespace, p.Name, err)
		}
	}
	return nil
}

// reportRunning reports the pod's one container running and ready, and its
// init containers completed, as the kubelet does once it has started them
// (bindAndRun reported the pod's phase and conditions).
func reportRunning(t *testing.T, host kubernetes.Interface, namespace, name string) {
	t.Helper()
	updateContainerStatus(t, host, namespace, name, "running", func(p *corev1.Pod, started metav1.Time) {
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{
			Name: p.Spec.Containers[0].Name, Image: p.Spec.Containers[0].Image, Ready: true, Started: ptr.To(true),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: started}},
		}}
	})
}

// reportExited reports the pod's one container exited with code, as the
// kubelet does for restartPolicy Never.
func reportExited(t *testing.T, host kubernetes.Interface, namespace, name string, code int) {
	t.Helper()
	updateContainerStatus(t, host, namespace, name, "exited", func(p *corev1.Pod, started metav1.Time) {
		now := metav1.Now()
		phase, reason := corev1.PodSucceeded, "Completed"
		if code != 0 {
			phase, reason = corev1.PodFailed, "Error"
		}
		p.Status.Phase = phase
		for i, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady || c.Type == corev1.ContainersReady {
				p.Status.Conditions[i] = corev1.PodCondition{Type: c.Type, Status: corev1.ConditionFalse, Reason: "PodCompleted", LastTransitionTime: now}
			}
		}
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{
			Name: p.Spec.Containers[0].Name, Image: p.Spec.Containers[0].Image, Started: ptr.To(false),
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: int32(code), Reason: reason, StartedAt: started, FinishedAt: now}},
		}}
	})
}

// updateContainerStatus sets the pod's container statuses with set; its
// init containers are reported completed.
func updateContainerStatus(t *testing.T, host kubernetes.Interface, namespace, name, what string, set func(p *corev1.Pod, started metav1.Time)) {
	t.Helper()
	ctx := context.Background()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		p, err := host.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(p.Spec.Containers) != 1 || p.Status.StartTime == nil {
			return fmt.Errorf("want a pod with one container, reported started (bindAndRun); it has %d containers, start time %v", len(p.Spec.Containers), p.Status.StartTime)
		}
		started := *p.Status.StartTime
		p.Status.InitContainerStatuses = nil
		for _, c := range p.Spec.InitContainers {
			p.Status.InitContainerStatuses = append(p.Status.InitContainerStatuses, corev1.ContainerStatus{
				Name: c.Name, Image: c.Image,
				State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", StartedAt: started, FinishedAt: started}},
			})
		}
		set(p, started)
		_, err = host.CoreV1().Pods(namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("report pod %s/%s %s: %v", namespace, name, what, err)
	}
}

package vcluster

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/harikube/harikube/pkg/vcluster"
	"github.com/harikube/harikube/tests/testserver"
	"github.com/harikube/harikube/tests/vclusterimage"
)

// startInPod runs `harikube server --vcluster` (plus args) as the syncer
// runs the values' command, inside the pod of host, and returns the process
// and its admin kubeconfig.
func startInPod(t *testing.T, host *hostCluster, args ...string) (*process, string) {
	t.Helper()
	data := t.TempDir()
	port := testserver.FreePort(t)
	argv := append([]string{testserver.Binary(t), "server", "--vcluster", "--data-dir", data,
		"--bind-address", "127.0.0.1", "--https-listen-port", strconv.Itoa(port)}, args...)
	p := startProcess(t, "harikube", data, filepath.Dir(testserver.Binary(t)), host.podArgs(argv), host.podEnv())
	return p, filepath.Join(data, "kubeconfig.yaml")
}

// TestServiceCIDRFromHost: with --vcluster and no --service-cidr, harikube
// serves the host cluster's service CIDR, read from the annotation the
// syncer puts on its host Service, through the pod's service account; a
// dual-stack value passes through. Without the annotation, or without the
// Service, it exits with a message naming what to set.
func TestServiceCIDRFromHost(t *testing.T) {
	t.Parallel()
	t.Run("DualStack", func(t *testing.T) {
		t.Parallel()
		host := newHostCluster(t, "10.96.0.0/12", "10.96.0.0/12,fd00:10:96::/112")
		p, kubeconfig := startInPod(t, host)
		waitForAPI(t, waitForFile(t, kubeconfig, p), p)
		client := kubernetes.NewForConfigOrDie(restConfig(t, kubeconfig))
		checkServiceCIDR(t, client, "10.96.0.1", "10.100.7.7", "10.43.0.10")

		// The second family's range is served too.
		policy := corev1.IPFamilyPolicyRequireDualStack
		svc, err := client.CoreV1().Services("default").Create(context.Background(), &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "dual"},
			Spec:       corev1.ServiceSpec{IPFamilyPolicy: &policy, Ports: []corev1.ServicePort{{Port: 80}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create a RequireDualStack Service: %v", err)
		}
		if len(svc.Spec.ClusterIPs) != 2 || !strings.HasPrefix(svc.Spec.ClusterIPs[1], "fd00:10:96::") {
			t.Errorf("dual-stack Service got ClusterIPs %v, want a second one in fd00:10:96::/112", svc.Spec.ClusterIPs)
		}
		p.stop(t)
	})
	t.Run("NoAnnotation", func(t *testing.T) {
		t.Parallel()
		host := newHostCluster(t, "10.43.0.0/16", "")
		p, _ := startInPod(t, host)
		expectRefusal(t, p, "without a service CIDR to use", vcluster.ServiceCIDRAnnotation, "Service kine/kine", "pass --service-cidr")
	})
	t.Run("AnnotationLate", func(t *testing.T) {
		// The syncer annotates its Service before it starts harikube; a
		// slow host API may show it late, which harikube waits for.
		t.Parallel()
		host := newHostCluster(t, "10.96.0.0/12", "")
		p, kubeconfig := startInPod(t, host)
		poll(t, "harikube waiting for the annotation", 200*time.Millisecond, time.Minute, func() (bool, error) {
			out, err := os.ReadFile(p.log)
			return strings.Contains(string(out), "Waiting up to 30s for the annotation "+vcluster.ServiceCIDRAnnotation), err
		})
		ctx := context.Background()
		svc, err := host.srv.Client.CoreV1().Services(vclusterName).Get(ctx, vclusterName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		svc.Annotations = map[string]string{vcluster.ServiceCIDRAnnotation: "10.96.0.0/12"}
		if _, err := host.srv.Client.CoreV1().Services(vclusterName).Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitForAPI(t, waitForFile(t, kubeconfig, p), p)
		checkServiceCIDR(t, kubernetes.NewForConfigOrDie(restConfig(t, kubeconfig)), "10.96.0.1", "10.100.7.7", "10.43.0.10")
		p.stop(t)
	})
	t.Run("NoService", func(t *testing.T) {
		t.Parallel()
		host := newHostCluster(t, "10.43.0.0/16", "10.43.0.0/16")
		if err := host.srv.Client.CoreV1().Services(vclusterName).Delete(context.Background(), vclusterName, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		p, _ := startInPod(t, host)
		expectRefusal(t, p, "without the vCluster's host Service", "Service kine/kine does not exist on the host cluster", "pass --service-cidr")
	})
	t.Run("ExplicitWins", func(t *testing.T) {
		t.Parallel()
		host := newHostCluster(t, "10.43.0.0/16", "10.43.0.0/16")
		p, kubeconfig := startInPod(t, host, "--service-cidr=172.30.0.0/16")
		waitForAPI(t, waitForFile(t, kubeconfig, p), p)
		checkServiceCIDR(t, kubernetes.NewForConfigOrDie(restConfig(t, kubeconfig)), "172.30.0.1", "172.30.9.9", "10.43.0.10")
		p.stop(t)
	})
}

// expectRefusal: p (harikube server --vcluster, started in a situation
// described by why) exits non-zero within three minutes and its output holds
// every one of wants.
func expectRefusal(t *testing.T, p *process, why string, wants ...string) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(3 * time.Minute):
		t.Fatalf("harikube server --vcluster still runs %s", why)
	}
	out, _ := os.ReadFile(p.log)
	if p.code == 0 {
		t.Errorf("exit code 0 %s", why)
	}
	for _, want := range wants {
		if !strings.Contains(string(out), want) {
			t.Errorf("error output lacks %q:\n%s", want, vclusterimage.Tail(p.log, 10))
		}
	}
}

// checkServiceCIDR: the kubernetes Service has the range's first IP, a
// Service may take an IP in the range (as the syncer re-creates virtual
// Services with the host's IPs) and one outside is refused.
func checkServiceCIDR(t *testing.T, client kubernetes.Interface, kubernetesIP, inRange, outOfRange string) {
	t.Helper()
	ctx := context.Background()
	var svc *corev1.Service
	poll(t, "Service default/kubernetes", 500*time.Millisecond, time.Minute, func() (bool, error) {
		var err error
		svc, err = client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
		return err == nil, err
	})
	if svc.Spec.ClusterIP != kubernetesIP {
		t.Errorf("default/kubernetes ClusterIP %s, want %s", svc.Spec.ClusterIP, kubernetesIP)
	}
	mk := func(name, ip string) error {
		_, err := client.CoreV1().Services("default").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       corev1.ServiceSpec{ClusterIP: ip, Ports: []corev1.ServicePort{{Port: 80}}},
		}, metav1.CreateOptions{})
		return err
	}
	if err := mk("in-range", inRange); err != nil {
		t.Errorf("Service with ClusterIP %s: %v", inRange, err)
	}
	if err := mk("out-of-range", outOfRange); !apierrors.IsInvalid(err) {
		t.Errorf("Service with ClusterIP %s outside the range: want Invalid, got %v", outOfRange, err)
	}
}

// waitForFile waits until path exists (harikube writes its kubeconfig
// before the apiserver starts) and returns it.
func waitForFile(t *testing.T, path string, procs ...*process) string {
	t.Helper()
	poll(t, path, 200*time.Millisecond, 2*time.Minute, func() (bool, error) {
		_, err := os.Stat(path)
		return err == nil, err
	}, procs...)
	return path
}

// TestVClusterControllers compares a server with --vcluster against one
// without, both with a 20s node-monitor grace period (under --vcluster a
// --kube-controller-manager-arg overrides only its own flag): a Node whose
// heartbeat stops, and a PVC with a matching PV. Upstream's controllers
// mark the Node's Ready condition Unknown, annotate it (ttl) and bind the
// claim; under --vcluster, as vCluster runs its own controller manager,
// node lifecycle, ttl and the volume binder do not run, so after the same
// time none of that has happened.
func TestVClusterControllers(t *testing.T) {
	t.Parallel()
	grace := "--kube-controller-manager-arg=node-monitor-grace-period=20s"
	upstream := testserver.Start(t, grace)
	vc := testserver.Start(t, "--vcluster", "--service-cidr=10.96.0.0/12", grace)
	ctx := context.Background()
	for _, s := range []*testserver.Server{upstream, vc} {
		seedNodeAndClaim(t, s.Client)
	}

	ready := func(c kubernetes.Interface) (corev1.ConditionStatus, *corev1.Node) {
		n, err := c.CoreV1().Nodes().Get(ctx, "virtual-node", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				return cond.Status, n
			}
		}
		return "", n
	}
	claimPhase := func(c kubernetes.Interface) corev1.PersistentVolumeClaimPhase {
		pvc, err := c.CoreV1().PersistentVolumeClaims("default").Get(ctx, "claim", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return pvc.Status.Phase
	}
	start := time.Now()
	poll(t, "upstream's node lifecycle, ttl and volume binder to act", 2*time.Second, 3*time.Minute, func() (bool, error) {
		status, n := ready(upstream.Client)
		_, ttl := n.Annotations["node.alpha.kubernetes.io/ttl"]
		return status == corev1.ConditionUnknown && ttl && claimPhase(upstream.Client) == corev1.ClaimBound, nil
	})
	// At least as long again, past the grace period, for the vCluster one.
	if d := 40*time.Second - time.Since(start); d > 0 {
		time.Sleep(d)
	}
	status, n := ready(vc.Client)
	if status != corev1.ConditionTrue {
		t.Errorf("--vcluster: node Ready condition %q after %s without heartbeats, want True (node lifecycle must not run)", status, time.Since(start).Round(time.Second))
	}
	if v, ok := n.Annotations["node.alpha.kubernetes.io/ttl"]; ok {
		t.Errorf("--vcluster: node has the ttl controller's annotation (%q); the ttl controller must not run", v)
	}
	if phase := claimPhase(vc.Client); phase != corev1.ClaimPending {
		t.Errorf("--vcluster: claim is %s, want Pending (the persistentvolume-binder must not run)", phase)
	}
}

// seedNodeAndClaim creates a Ready Node with one heartbeat, as vCluster's
// fake node syncer does, and a PVC with a PV that would bind to it.
func seedNodeAndClaim(t *testing.T, c kubernetes.Interface) {
	t.Helper()
	ctx := context.Background()
	poll(t, "namespace default", 500*time.Millisecond, time.Minute, func() (bool, error) {
		_, err := c.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	})
	if _, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "virtual-node"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The controller manager's controllers may write the new Node first.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := c.CoreV1().Nodes().Get(ctx, "virtual-node", metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: now, LastTransitionTime: now}}
		_, err = c.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("Node virtual-node Ready: %v", err)
	}
	size := corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}
	if _, err := c.CoreV1().PersistentVolumes().Create(ctx, &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "volume"},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      size,
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName:              "manual",
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/nonexistent"}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	class := "manual"
	if _, err := c.CoreV1().PersistentVolumeClaims("default").Create(ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "claim", Namespace: "default"},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &class,
			Resources:        corev1.VolumeResourceRequirements{Requests: size},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

//go:build vclusterlive

package vclusterlive

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/harikube/harikube/tests/testserver"
	"github.com/harikube/harikube/tests/vclusterimage"
)

// vclusterctl runs the version's vcluster CLI (scripts/build-vcluster-syncer
// builds it, and the Helm it runs, into syncerDir) against the host.
func vclusterctl(t *testing.T, host *testserver.Server, syncerDir string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := vclusterctlCmd(ctx, t, host, syncerDir, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("vcluster %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// vclusterctlCmd is the CLI's command, killed when ctx ends.
func vclusterctlCmd(ctx context.Context, t *testing.T, host *testserver.Server, syncerDir string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(syncerDir, "vclusterctl"), args...)
	// Helm, which the CLI runs, may hold its output open after it is killed.
	cmd.WaitDelay = 10 * time.Second
	// The CLI keeps its config in HOME, Helm its own in the HELM_* homes;
	// PATH: the CLI runs `helm`.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "KUBECONFIG="+host.Kubeconfig, "HOME="+home,
		"HELM_CACHE_HOME="+filepath.Join(home, "helm-cache"), "HELM_CONFIG_HOME="+filepath.Join(home, "helm-config"),
		"HELM_DATA_HOME="+filepath.Join(home, "helm-data"),
		"PATH="+syncerDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return cmd
}

// vclusterCreate installs the virtual cluster as the README tells users of
// vCluster's snapshots to: `vcluster create kine --namespace kine --values
// package/<values>`, which installs the vCluster chart with Helm and records
// the release. The chart is the version's own, packaged as vCluster
// publishes it.
func vclusterCreate(t *testing.T, v variant, host *testserver.Server, syncerDir string) {
	t.Helper()
	chart := filepath.Join(syncerDir, "vcluster-"+strings.TrimPrefix(v.version, "v")+".tgz")
	out := vclusterctl(t, host, syncerDir, "create", release, "--namespace", namespace,
		"--values", filepath.Join(repoRoot(), "package", v.values), "--local-chart-dir", chart,
		"--connect=false", "--add=false", "--expose-local=false", "--driver", "helm")
	t.Logf("vcluster create: %s", line(out, "Successfully"))
	secrets, err := host.Client.CoreV1().Secrets(namespace).List(context.Background(), metav1.ListOptions{LabelSelector: "owner=helm,name=" + release})
	if err != nil {
		t.Fatalf("Helm's release Secrets: %v", err)
	}
	if len(secrets.Items) != 1 || secrets.Items[0].Labels["status"] != "deployed" {
		var found []string
		for _, s := range secrets.Items {
			found = append(found, s.Name+" ("+s.Labels["status"]+")")
		}
		t.Fatalf("Helm releases of %s after vcluster create: %v, want one deployed", release, found)
	}
}

// snapshotRequest is `vcluster snapshot create kine container://<path>`: the
// CLI reads the Helm release and leaves a request (a ConfigMap and a
// Secret) in the host namespace, which the running syncer's snapshot
// controller carries out, writing the snapshot in its own container. It is
// restored with `vcluster restore` (restoreWithCLI).
type snapshotRequest struct {
	vclusterSnapshot
	syncer *containerRun
}

func (s snapshotRequest) save(t *testing.T) {
	t.Helper()
	url := "container://" + s.path
	out := vclusterctl(t, s.host, s.syncerDir, "snapshot", "create", release, url, "--namespace", namespace)
	t.Logf("vcluster snapshot create: %s", line(out, "snapshot creation"))

	var failed string
	poll(t, "the snapshot request carried out by the syncer", time.Second, 3*time.Minute, func() (bool, error) {
		requests, err := s.host.Client.CoreV1().ConfigMaps(namespace).List(context.Background(), metav1.ListOptions{LabelSelector: "vcluster.loft.sh/snapshot-request"})
		if err != nil {
			return false, err
		}
		if len(requests.Items) != 1 {
			return false, fmt.Errorf("%d snapshot requests, want 1", len(requests.Items))
		}
		var request struct {
			Spec struct {
				URL string `json:"url"`
			} `json:"spec"`
			Status struct {
				Phase string `json:"phase"`
				Error struct {
					Message string `json:"message"`
				} `json:"error"`
			} `json:"status"`
		}
		cm := requests.Items[0]
		if err := json.Unmarshal([]byte(cm.Data["snapshotRequest"]), &request); err != nil {
			return false, fmt.Errorf("request %s: %w", cm.Name, err)
		}
		switch {
		case request.Spec.URL != url:
			failed = fmt.Sprintf("request %s is for %q, want %q", cm.Name, request.Spec.URL, url)
		case request.Status.Phase == "Completed":
		case request.Status.Phase == "Failed" || request.Status.Phase == "PartiallyFailed" || request.Status.Phase == "Canceled":
			failed = fmt.Sprintf("request %s: %s: %s", cm.Name, request.Status.Phase, request.Status.Error.Message)
		default:
			return false, fmt.Errorf("request %s: phase %q", cm.Name, request.Status.Phase)
		}
		return true, nil
	}, s.syncer)
	if failed != "" {
		t.Fatalf("vcluster snapshot create: %s", failed)
	}
	fi, err := os.Stat(s.file())
	if err != nil || fi.Size() == 0 {
		t.Fatalf("the syncer's snapshot %s: %v", s.path, err)
	}
	t.Logf("vcluster snapshot create: the syncer wrote %s, %d bytes", s.path, fi.Size())
}

// ansiEscape matches the CLI's terminal colours.
var ansiEscape = regexp.MustCompile("\x1b\\[[0-9;]*m")

// line is the CLI output's first line that mentions what, without colours.
func line(out, what string) string {
	for _, l := range strings.Split(ansiEscape.ReplaceAllString(out, ""), "\n") {
		if strings.Contains(l, what) {
			return strings.TrimSpace(l)
		}
	}
	return strings.TrimSpace(out)
}

// restoreWithCLI is `vcluster restore kine container://<path>`, with this
// test as the node's kubelet. The CLI pauses the virtual cluster (the
// StatefulSet scaled to 0, the pods it synced deleted), runs /vcluster
// restore in a pod of its own made from the syncer container's spec,
// prints that pod's log (read through the host apiserver from the kubelet
// API while the pod runs), deletes the pod and scales the StatefulSet up
// again. syncer is the running one; restoreWithCLI returns the new pod of
// the StatefulSet, its volumes and its running syncer.
func (s snapshotRequest) restoreWithCLI(t *testing.T, kubelet *kubeletAPI, syncer *containerRun, ports []string) (*corev1.Pod, *podVolumes, *containerRun) {
	t.Helper()
	ctx := context.Background()
	pods := s.host.Client.CoreV1().Pods(namespace)
	old, err := pods.Get(ctx, release+"-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	synced, err := pods.List(ctx, metav1.ListOptions{LabelSelector: "vcluster.loft.sh/managed-by=" + release})
	if err != nil {
		t.Fatal(err)
	}
	if len(synced.Items) == 0 {
		t.Fatal("no host pods synced by the virtual cluster before vcluster restore")
	}
	cliCtx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	var out bytes.Buffer // read only once the CLI has exited
	cli := vclusterctlCmd(cliCtx, t, s.host, s.syncerDir, "restore", release, "container://"+s.path, "--namespace", namespace)
	cli.Stdout, cli.Stderr = &out, &out
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	cliDone := make(chan struct{})
	var cliErr error
	go func() { cliErr = cli.Wait(); close(cliDone) }()
	defer func() { cancel(); <-cliDone }()
	cliExited := func() error {
		select {
		case <-cliDone:
			return fmt.Errorf("vcluster restore exited (%v):\n%s", cliErr, out.String())
		default:
			return nil
		}
	}

	// Paused: the StatefulSet's pod is being deleted; the kubelet stops
	// the syncer and then removes the pod.
	vclusterimage.Poll(t, "pod "+release+"-0 being deleted by vcluster restore", time.Second, 3*time.Minute, func() (bool, error) {
		p, err := pods.Get(ctx, release+"-0", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return err == nil && p.DeletionTimestamp != nil, err
	}, cliExited)
	syncer.kill(t)
	waitPortsClosed(t, ports...)

	var restorePod *corev1.Pod
	vclusterimage.Poll(t, "the pod vcluster restore runs", time.Second, 3*time.Minute, func() (bool, error) {
		if err := finishDeletions(ctx, s.host.Client); err != nil {
			return false, err
		}
		list, err := pods.List(ctx, metav1.ListOptions{LabelSelector: "app=vcluster-snapshot"})
		if err != nil {
			return false, err
		}
		if len(list.Items) != 1 {
			return false, fmt.Errorf("%d pods labelled app=vcluster-snapshot", len(list.Items))
		}
		restorePod = &list.Items[0]
		return true, nil
	}, cliExited)
	for _, p := range synced.Items {
		again, err := pods.Get(ctx, p.Name, metav1.GetOptions{})
		if err == nil && again.UID == p.UID && again.DeletionTimestamp == nil {
			t.Errorf("host pod %s, synced by the virtual cluster, was not deleted when vcluster restore paused it", p.Name)
		}
	}
	var command []string
	for _, c := range restorePod.Spec.Containers {
		if c.Name == "snapshot" {
			command = append(c.Command, c.Args...)
		}
	}
	if strings.Join(command, " ") != "/vcluster restore" {
		t.Fatalf("pod %s runs %q, want /vcluster restore in its container snapshot", restorePod.Name, command)
	}
	restorePod = bindAndRun(t, s.host.Client, namespace, restorePod.Name, "10.244.0.20")
	restoreLog := filepath.Join(t.TempDir(), "restore.log")
	restorer := runContainer(t, s.host.Client, s.host.Port, s.host.Config.TLSClientConfig.CAData, restorePod, "snapshot",
		s.vols.forNewPod(restorePod), image(t), s.syncerDir, restoreLog, nil, command...)
	// runContainer's first line is its own header, not the container's.
	header, err := os.ReadFile(restoreLog)
	if err != nil {
		t.Fatal(err)
	}
	kubelet.serveLog(namespace, restorePod.Name, "snapshot", containerLog{path: restoreLog, from: int64(bytes.IndexByte(header, '\n') + 1), done: restorer.done})
	reportRunning(t, s.host.Client, namespace, restorePod.Name)
	select {
	case <-restorer.done:
	case <-cliDone:
		t.Fatalf("vcluster restore exited while its pod ran (%v):\n%s", cliErr, out.String())
	case <-time.After(5 * time.Minute):
		t.Fatalf("/vcluster restore did not exit within 5 minutes; last lines of its log:\n%s", vclusterimage.Tail(restoreLog, 40))
	}
	reportExited(t, s.host.Client, namespace, restorePod.Name, restorer.code)

	// The CLI reads the rest of the pod's log, deletes the pod and resumes.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var lastErr string
wait:
	for {
		select {
		case <-cliDone:
			break wait
		case <-tick.C:
			if err := finishDeletions(ctx, s.host.Client); err != nil && err.Error() != lastErr {
				t.Logf("the kubelet removing deleted pods: %v", err)
				lastErr = err.Error()
			}
		}
	}
	if cliErr != nil {
		t.Fatalf("vcluster restore: %v\n%s\nthe restore pod's log:\n%s", cliErr, out.String(), vclusterimage.Tail(restoreLog, 40))
	}
	// The pod's own line, so it came through the apiserver's pods/log.
	restored := restoredKeys.FindString(ansiEscape.ReplaceAllString(out.String(), ""))
	if restored == "" {
		t.Fatalf("vcluster restore printed no %q line of its pod's log:\n%s", restoredKeys, out.String())
	}
	t.Logf("vcluster restore (its pod exited with code %d): %s", restorer.code, restored)
	if left, err := pods.List(ctx, metav1.ListOptions{LabelSelector: "app=vcluster-snapshot"}); err != nil {
		t.Fatal(err)
	} else {
		for _, p := range left.Items {
			if p.DeletionTimestamp == nil {
				t.Errorf("vcluster restore left its pod %s", p.Name)
			}
		}
	}

	vclusterimage.Poll(t, "a new pod "+release+"-0 after vcluster restore", time.Second, 2*time.Minute, func() (bool, error) {
		if err := finishDeletions(ctx, s.host.Client); err != nil {
			return false, err
		}
		p, err := pods.Get(ctx, release+"-0", metav1.GetOptions{})
		return err == nil && p.UID != old.UID, err
	})
	pod := bindAndRun(t, s.host.Client, namespace, release+"-0", "127.0.0.1")
	vols := s.vols.forNewPod(pod)
	return pod, vols, runSyncer(t, s.host.Client, s.host.Port, s.host.Config.TLSClientConfig.CAData, pod, vols, image(t), s.syncerDir, s.logPath)
}

// restoredKeys is the line /vcluster restore logs when it has written the
// snapshot's keys back.
var restoredKeys = regexp.MustCompile(`Successfully restored [0-9]+ etcd keys from snapshot`)

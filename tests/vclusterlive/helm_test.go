//go:build vclusterlive

package vclusterlive

import (
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

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/harikube/harikube/tests/testserver"
)

// vclusterctl runs the version's vcluster CLI (scripts/build-vcluster-syncer
// builds it, and the Helm it runs, into syncerDir) against the host.
func vclusterctl(t *testing.T, host *testserver.Server, syncerDir string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(syncerDir, "vclusterctl"), args...)
	// The CLI keeps its config in HOME, Helm its own in the HELM_* homes;
	// PATH: the CLI runs `helm`.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "KUBECONFIG="+host.Kubeconfig, "HOME="+home,
		"HELM_CACHE_HOME="+filepath.Join(home, "helm-cache"), "HELM_CONFIG_HOME="+filepath.Join(home, "helm-config"),
		"HELM_DATA_HOME="+filepath.Join(home, "helm-data"),
		"PATH="+syncerDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("vcluster %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
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
// restored as vclusterSnapshot is (the CLI's restore still runs a pod).
type snapshotRequest struct {
	vclusterSnapshot
	syncer *syncerPod
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

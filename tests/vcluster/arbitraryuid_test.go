package vcluster

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/harikube/harikube/tests/testserver"
)

// OpenShift's restricted SCC runs a pod's containers as a UID from its
// namespace's range, in the root group, with the range's first ID as the
// pod's fsGroup (the group of its volumes).
const (
	arbitraryUID = 1000680000
	podFSGroup   = 1000680000
)

// TestVClusterModeAsArbitraryUser: `harikube server --vcluster` runs as a
// UID that has no passwd entry, in group 0 with the pod's fsGroup, on a
// volume owned by root and that fsGroup (as a kubelet prepares a PVC), and
// keeps its data directory and files to that UID.
func TestVClusterModeAsArbitraryUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the server as another user")
	}
	t.Parallel()
	host := newHostCluster(t, "10.96.0.0/12", "10.96.0.0/12")
	// The pod's service account files, as a kubelet projects them.
	for _, d := range []string{host.run, filepath.Join(host.run, "secrets"), filepath.Join(host.run, "secrets", "kubernetes.io"), filepath.Join(host.run, "secrets", "kubernetes.io", "serviceaccount")} {
		must(t, os.Chmod(d, 0o755))
	}
	must(t, os.Chmod(filepath.Join(host.run, "secrets", "kubernetes.io", "serviceaccount", "token"), 0o644))

	// Outside the test's temporary directories, whose parents only root can
	// enter: the executable (the image's), and the volume.
	root, err := os.MkdirTemp("", "harikube-arbitrary-uid-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(root) })
	must(t, os.Chmod(root, 0o755))
	bin := filepath.Join(root, "harikube")
	exe, err := os.ReadFile(testserver.Binary(t))
	must(t, err)
	must(t, os.WriteFile(bin, exe, 0o755))
	volume := filepath.Join(root, "data")
	must(t, os.Mkdir(volume, 0o755))
	must(t, os.Chown(volume, 0, podFSGroup))
	must(t, os.Chmod(volume, 0o2775))

	data := filepath.Join(volume, "harikube")
	port := testserver.FreePort(t)
	argv := []string{"setpriv", "--reuid=" + strconv.Itoa(arbitraryUID), "--regid=0", "--groups=" + strconv.Itoa(podFSGroup), "--",
		bin, "server", "--vcluster", "--data-dir", data, "--bind-address", "127.0.0.1", "--https-listen-port", strconv.Itoa(port)}
	p := startProcess(t, "harikube", volume, root, host.podArgs(argv), append(host.podEnv(), "HOME=/"))
	kubeconfig := filepath.Join(data, "kubeconfig.yaml")
	waitForAPI(t, waitForFile(t, kubeconfig, p), p)
	client := kubernetes.NewForConfigOrDie(restConfig(t, kubeconfig))
	ctx := context.Background()
	if _, err := client.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "as-arbitrary-uid", Labels: map[string]string{"uid": "arbitrary"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create a ConfigMap: %v", err)
	}
	list, err := client.CoreV1().ConfigMaps("default").List(ctx, metav1.ListOptions{LabelSelector: "uid=arbitrary"})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("LIST uid=arbitrary: %v, %v", list, err)
	}
	p.stop(t)

	// Everything the server made is its user's, and the data directory and
	// secrets are that user's only.
	err = filepath.WalkDir(data, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		if st.Uid != arbitraryUID {
			t.Errorf("%s: owner %d, want %d", path, st.Uid, arbitraryUID)
		}
		return nil
	})
	must(t, err)
	for path, want := range map[string]os.FileMode{data: 0o700, kubeconfig: 0o600, filepath.Join(data, "db", "state.db"): 0o600} {
		if info, err := os.Stat(path); err != nil {
			t.Errorf("%s: %v", path, err)
		} else if info.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, info.Mode().Perm(), want)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

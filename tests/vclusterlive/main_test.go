//go:build vclusterlive

// Package vclusterlive runs the real vCluster syncer (built from its Go
// module by scripts/build-vcluster-syncer) with harikube as its control
// plane, against a second `harikube server` as the host cluster. The
// syncer's pod is run the way a kubelet runs it: the StatefulSet's pod
// object on the host, its volumes and service-account token as directories
// bind-mounted into a private root (mount and PID namespaces, chroot), and
// the whole test in a private network namespace where only loopback exists.
//
// It needs root (unshare, mount, chroot) and is built only with the
// vclusterlive tag: scripts/vcluster-e2e runs it (make test does).
package vclusterlive

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/harikube/harikube/tests/vclusterimage"
)

// netnsEnv marks the test process re-executed inside its network namespace.
const netnsEnv = "HARIKUBE_VCLUSTER_LIVE_NETNS"

// syncerDirEnv names the variable holding the directory
// scripts/build-vcluster-syncer printed for version (v0.36.1:
// HARIKUBE_VCLUSTER_SYNCER_DIR_V0_36_1).
func syncerDirEnv(version string) string {
	return "HARIKUBE_VCLUSTER_SYNCER_DIR_" + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(version))
}

// imageEnv names the directory the harikube image was built into.
const imageEnv = "HARIKUBE_VCLUSTER_LIVE_IMAGE_DIR"

// imageRef is what the image is tagged as.
const imageRef = "ghcr.io/harikube/harikube:live"

func TestMain(m *testing.M) {
	if os.Getuid() != 0 {
		fmt.Fprintln(os.Stderr, "vclusterlive: must run as root (it uses unshare, mount and chroot to run the syncer's pod); run scripts/vcluster-e2e as root")
		os.Exit(1)
	}
	if os.Getenv(netnsEnv) == "" {
		os.Exit(reexecInNetns())
	}
	os.Exit(m.Run())
}

// image is the harikube image the parent process built.
func image(t *testing.T) vclusterimage.Image {
	t.Helper()
	dir := os.Getenv(imageEnv)
	if dir == "" {
		t.Fatalf("%s is not set (TestMain builds the image)", imageEnv)
	}
	return vclusterimage.InDir(imageRef, dir)
}

// reexecInNetns builds the syncers and the image (they need the module proxy
// and Debian's busybox, so outside the namespace) and runs this test binary
// again in a new network namespace with only loopback up, so the syncer's
// 0.0.0.0:8443 and everything else is reachable from nowhere else, and a
// new mount namespace whose /etc/hosts also names the node.
func reexecInNetns() int {
	env := append(os.Environ(), netnsEnv+"=1")
	for _, v := range variants {
		if os.Getenv(syncerDirEnv(v.version)) != "" {
			continue
		}
		out, err := exec.Command(filepath.Join(repoRoot(), "scripts", "build-vcluster-syncer"), v.version).Output()
		if err != nil {
			fmt.Fprintf(os.Stderr, "vclusterlive: scripts/build-vcluster-syncer %s: %v\n", v.version, err)
			return 1
		}
		env = append(env, syncerDirEnv(v.version)+"="+strings.TrimSpace(string(out)))
	}
	bin := os.Getenv("HARIKUBE_BINARY")
	if bin == "" {
		fmt.Fprintln(os.Stderr, "vclusterlive: set HARIKUBE_BINARY to the harikube binary to test (scripts/vcluster-e2e does)")
		return 1
	}
	dir, err := os.MkdirTemp("", "harikube-vclusterlive-image-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "vclusterlive:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if _, err := vclusterimage.Build(repoRoot(), bin, imageRef, dir); err != nil {
		fmt.Fprintln(os.Stderr, "vclusterlive: build the image:", err)
		return 1
	}
	env = append(env, imageEnv+"="+dir)
	// The node's name resolves to its address, as a cluster's DNS would
	// make it: the apiserver reaches the kubelet at the node's Hostname
	// address, the first of upstream's --kubelet-preferred-address-types
	// the node reports.
	hosts, err := os.ReadFile("/etc/hosts")
	if err != nil {
		fmt.Fprintln(os.Stderr, "vclusterlive:", err)
		return 1
	}
	hostsFile := filepath.Join(dir, "hosts")
	if err := os.WriteFile(hostsFile, fmt.Appendf(hosts, "\n%s %s\n", nodeIP, nodeName), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "vclusterlive:", err)
		return 1
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "vclusterlive:", err)
		return 1
	}
	// --mount: the bind mount over /etc/hosts is private to the namespace.
	cmd := exec.Command("unshare", append([]string{"--net", "--mount", "--", "/bin/sh", "-c",
		`ip link set lo up && mount --bind "$0" /etc/hosts && exec "$@"`, hostsFile, self}, os.Args[1:]...)...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		if exit, ok := err.(*exec.ExitError); ok {
			return exit.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "vclusterlive: unshare --net --mount:", err)
		return 1
	}
	return 0
}

// repoRoot is two levels up from this package.
func repoRoot() string {
	root, err := filepath.Abs("../..")
	if err != nil {
		panic(err)
	}
	return root
}

package vcluster

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestUnknownFlags: each component role rejects a flag its upstream does not
// know, exiting non-zero with a message naming it; by argv[0] and as a
// harikube subcommand.
func TestUnknownFlags(t *testing.T) {
	t.Parallel()
	b := image(t)
	for _, role := range []string{"kube-apiserver", "kube-controller-manager", "kine"} {
		for _, argv := range [][]string{
			{filepath.Join(b.Binaries, role), "--no-such-flag=1"},
			{filepath.Join(b.Binaries, "harikube"), role, "--no-such-flag=1"},
		} {
			out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
			if err == nil {
				t.Errorf("%s: exit 0, want an error", strings.Join(argv, " "))
				continue
			}
			if !strings.Contains(string(out), "no-such-flag") {
				t.Errorf("%s: error does not name the flag:\n%s", strings.Join(argv, " "), out)
			}
		}
	}
}

// TestHelp: each role prints its upstream flags for --help and exits 0.
func TestHelp(t *testing.T) {
	t.Parallel()
	b := image(t)
	for role, flag := range map[string]string{"kube-apiserver": "--etcd-servers", "kube-controller-manager": "--controllers", "kine": "--listen-address"} {
		out, err := exec.Command(filepath.Join(b.Binaries, role), "--help").CombinedOutput()
		if err != nil || !strings.Contains(string(out), flag) {
			t.Errorf("%s --help: %v, want %s in:\n%s", role, err, flag, out)
		}
	}
}

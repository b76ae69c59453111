package vcluster

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestUnknownFlags: each component role rejects a flag its upstream does not
// know, exiting 1 with a message naming it; by argv[0] and as a
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
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Errorf("%s: %v, want exit status 1", strings.Join(argv, " "), err)
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

// TestOtherVClusterFlags: the flags vCluster adds in its other modes parse
// (private nodes, the virtual scheduler's controller list, v0.35+ split CA
// signing). Parsing stops at --help, so nothing is started.
func TestOtherVClusterFlags(t *testing.T) {
	t.Parallel()
	b := image(t)
	data := t.TempDir()
	api := append(apiServerArgs(b.Binaries, data, serviceCIDR),
		"--kubelet-client-certificate="+data+"/pki/apiserver-kubelet-client.crt",
		"--kubelet-client-key="+data+"/pki/apiserver-kubelet-client.key",
		"--enable-admission-plugins=NodeRestriction",
		"--endpoint-reconciler-type=none",
		"--kubelet-preferred-address-types=InternalDNS,InternalIP,Hostname,ExternalDNS,ExternalIP",
		"--egress-selector-config-file="+data+"/konnectivity-egress.yaml",
		"--etcd-cafile="+data+"/pki/etcd/ca.crt", "--etcd-certfile="+data+"/pki/apiserver-etcd-client.crt", "--etcd-keyfile="+data+"/pki/apiserver-etcd-client.key",
		"--watch-cache=false")
	pki := data + "/pki/"
	cm := append(controllerManagerArgs(b.Binaries, data, serviceCIDR, signingAfterLeaderElect),
		"--controllers=*,bootstrapsigner,tokencleaner,-resourceclaim-controller",
		"--allocate-node-cidrs=true", "--cluster-cidr=10.244.0.0/16", "--cloud-provider=external",
		"--node-monitor-grace-period=1h", "--node-monitor-period=1h",
		"--cluster-signing-kube-apiserver-client-cert-file="+pki+"client-ca.crt",
		"--cluster-signing-kube-apiserver-client-key-file="+pki+"client-ca.key",
		"--cluster-signing-kubelet-client-cert-file="+pki+"client-ca.crt",
		"--cluster-signing-kubelet-client-key-file="+pki+"client-ca.key",
		"--cluster-signing-kubelet-serving-cert-file="+pki+"server-ca.crt",
		"--cluster-signing-kubelet-serving-key-file="+pki+"server-ca.key",
		"--cluster-signing-legacy-unknown-cert-file="+pki+"server-ca.crt",
		"--cluster-signing-legacy-unknown-key-file="+pki+"server-ca.key")
	kine := append(v036KineArgs(b.Binaries, data), "--ca-file=/x/ca.crt", "--cert-file=/x/tls.crt", "--key-file=/x/tls.key")
	for _, args := range [][]string{api, cm, kine} {
		out, err := exec.Command(args[0], append(args[1:], "--help")...).CombinedOutput()
		if err != nil {
			t.Errorf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

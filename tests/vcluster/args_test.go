package vcluster

import "strings"

// The command lines vCluster's syncer builds (pkg/k8s/k8s.go StartK8S and
// StartKineWithDone, constants in pkg/constants), with its fixed paths
// re-rooted: /data → data, /binaries → binaries. Nothing else differs; the
// ports are changed through extraArgs, as a user would (mergeArgs).

// Kine's SQLite DSN and socket in embedded-database mode.
func kineEndpoint(data string) string {
	return "sqlite://" + data + "/state.db?_journal=WAL&cache=shared&_busy_timeout=30000&_txlock=immediate"
}

func kineSocket(data string) string { return "unix://" + data + "/kine.sock" }

// v030KineArgs: v0.25 to v0.32 run /usr/local/bin/kine from the syncer image
// (rancher/kine); kineBin stands in for it.
func v030KineArgs(kineBin, data string) []string {
	return []string{kineBin,
		"--endpoint=" + kineEndpoint(data),
		"--metrics-bind-address=0",
		"--listen-address=" + kineSocket(data),
	}
}

// v036KineArgs: since v0.33 the syncer runs /binaries/kine from the distro
// image; since v0.35 it serves metrics on 127.0.0.1:2381.
func v036KineArgs(binaries, data string) []string {
	return []string{binaries + "/kine",
		"--endpoint=" + kineEndpoint(data),
		"--metrics-bind-address=127.0.0.1:2381",
		"--listen-address=" + kineSocket(data),
	}
}

// apiServerArgs is the default kube-apiserver command line of v0.30 to
// v0.36 without private nodes (they did not change), for the embedded
// database.
func apiServerArgs(binaries, data, serviceCIDR string) []string {
	pki := data + "/pki/"
	return []string{binaries + "/kube-apiserver",
		"--service-cluster-ip-range=" + serviceCIDR,
		"--bind-address=127.0.0.1",
		"--allow-privileged=true",
		"--authorization-mode=Node,RBAC",
		"--client-ca-file=" + pki + "client-ca.crt",
		"--enable-bootstrap-token-auth=true",
		"--etcd-servers=" + kineSocket(data),
		"--proxy-client-cert-file=" + pki + "front-proxy-client.crt",
		"--proxy-client-key-file=" + pki + "front-proxy-client.key",
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-client-ca-file=" + pki + "front-proxy-ca.crt",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-username-headers=X-Remote-User",
		"--secure-port=6443",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki + "sa.pub",
		"--service-account-signing-key-file=" + pki + "sa.key",
		"--tls-cert-file=" + pki + "apiserver.crt",
		"--tls-private-key-file=" + pki + "apiserver.key",
		"--profiling=false",
		"--advertise-address=127.0.0.1",
		"--endpoint-reconciler-type=none",
	}
}

// controllerManagerTail is the default mode (no virtual scheduler, no
// private nodes).
var controllerManagerTail = []string{
	"--controllers=*,-nodeipam,-nodelifecycle,-persistentvolume-binder,-attachdetach,-persistentvolume-expander,-cloud-node-lifecycle,-ttl",
	"--node-monitor-grace-period=180s",
	"--node-monitor-period=30s",
	"--pvclaimbinder-sync-period=60s",
	"--horizontal-pod-autoscaler-sync-period=60s",
}

// controllerManagerOrder is where a vCluster version puts the signing flags
// in the kube-controller-manager command line.
type controllerManagerOrder int

const (
	// signingAfterClusterName is v0.30's order (v0.25 to v0.32).
	signingAfterClusterName controllerManagerOrder = iota
	// signingAfterLeaderElect is the v0.35+ order (server-ca and client-ca
	// are the same CA here, so the combined pair is used).
	signingAfterLeaderElect
)

// controllerManagerArgs is the syncer's kube-controller-manager command line
// in the given version's order.
func controllerManagerArgs(binaries, data, serviceCIDR string, order controllerManagerOrder) []string {
	pki := data + "/pki/"
	signing := []string{
		"--cluster-signing-cert-file=" + pki + "server-ca.crt",
		"--cluster-signing-key-file=" + pki + "server-ca.key",
	}
	args := []string{binaries + "/kube-controller-manager",
		"--service-cluster-ip-range=" + serviceCIDR,
		"--authentication-kubeconfig=" + pki + "controller-manager.conf",
		"--authorization-kubeconfig=" + pki + "controller-manager.conf",
		"--bind-address=127.0.0.1",
		"--client-ca-file=" + pki + "client-ca.crt",
		"--cluster-name=kubernetes",
	}
	if order == signingAfterClusterName {
		args = append(args, signing...)
	}
	args = append(args,
		"--kubeconfig="+pki+"controller-manager.conf",
		"--requestheader-client-ca-file="+pki+"front-proxy-ca.crt",
		"--root-ca-file="+pki+"server-ca.crt",
		"--service-account-private-key-file="+pki+"sa.key",
		"--use-service-account-credentials=true",
		"--leader-elect=true",
	)
	if order == signingAfterLeaderElect {
		args = append(args, signing...)
	}
	return append(args, controllerManagerTail...)
}

// mergeArgs is vCluster's command.MergeArgs (v0.26+): a base "--flag" is
// dropped when extra has the same flag name, then extra is appended.
func mergeArgs(base, extra []string) []string {
	var out []string
	for _, arg := range base {
		if !containsFlag(extra, arg) {
			out = append(out, arg)
		}
	}
	return append(out, extra...)
}

func containsFlag(args []string, flag string) bool {
	for _, arg := range args {
		if !strings.HasPrefix(arg, "--") || !strings.HasPrefix(flag, "--") {
			continue
		}
		a, _, _ := strings.Cut(arg, "=")
		f, _, _ := strings.Cut(flag, "=")
		if a == f {
			return true
		}
	}
	return false
}

// rebase replaces vCluster's /data and /binaries prefixes in a command
// taken from the values file.
func rebase(args []string, binaries, data string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		a = strings.ReplaceAll(a, "/binaries/", binaries+"/")
		a = strings.ReplaceAll(a, "=/data/", "="+data+"/")
		if strings.HasPrefix(a, "/data/") {
			a = data + a[len("/data"):]
		}
		out[i] = a
	}
	return out
}

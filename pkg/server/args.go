package server

import (
	"net"
	"strconv"
	"strings"

	"github.com/harikube/harikube/pkg/pki"
)

// apiServerArgs are the kube-apiserver flags harikube sets; user flags
// (--kube-apiserver-arg) replace those of the same name (withUserArgs).
func apiServerArgs(cfg Config, b *pki.Bundle, etcd string, serviceIP net.IP) []string {
	args := []string{
		"--etcd-servers=" + etcd,
		"--bind-address=" + cfg.BindAddress,
		"--secure-port=" + strconv.Itoa(cfg.HTTPSPort),
		"--tls-cert-file=" + b.ServingCert,
		"--tls-private-key-file=" + b.ServingKey,
		"--client-ca-file=" + b.ClientCA,
		"--authorization-mode=Node,RBAC",
		"--enable-bootstrap-token-auth=true",
		"--allow-privileged=true",
		"--profiling=false",
		"--service-cluster-ip-range=" + cfg.ServiceCIDR,
		"--service-account-issuer=https://kubernetes.default.svc." + cfg.ClusterDomain,
		"--service-account-key-file=" + b.ServiceAccountPub,
		"--service-account-signing-key-file=" + b.ServiceAccountKey,
		"--api-audiences=https://kubernetes.default.svc." + cfg.ClusterDomain,
		"--requestheader-client-ca-file=" + b.RequestHeaderCA,
		"--requestheader-allowed-names=" + pki.ProxyClientCN,
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + b.ProxyClientCert,
		"--proxy-client-key-file=" + b.ProxyClientKey,
		"--storage-backend=etcd3",
	}
	if addr, reconcile := advertiseAddress(cfg.BindAddress); reconcile {
		args = append(args, "--advertise-address="+addr)
	} else {
		args = append(args, "--advertise-address="+addr, "--endpoint-reconciler-type=none")
	}
	return args
}

// controllerManagerArgs run one controller manager without leader election
// (losing a lease would exit the whole process) and without its own serving
// port, with per-controller service-account credentials.
func controllerManagerArgs(cfg Config, b *pki.Bundle, kubeconfig string) []string {
	return []string{
		"--kubeconfig=" + kubeconfig,
		"--leader-elect=false",
		"--secure-port=0",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + b.ServiceAccountKey,
		"--root-ca-file=" + b.ServerCA,
		"--cluster-signing-cert-file=" + b.ClientCA,
		"--cluster-signing-key-file=" + b.ClientCAKey,
		"--service-cluster-ip-range=" + cfg.ServiceCIDR,
		"--cluster-name=harikube",
	}
}

// vclusterControllerManagerArgs are the settings vCluster gives its own
// controller manager (v0.30 pkg/k8s/k8s.go, no virtual scheduler): the
// syncer owns nodes, volumes and attachments, so node lifecycle and the
// volume controllers must not act on its objects. cloud-node-lifecycle,
// also in vCluster's list, no longer exists in Kubernetes 1.37.
var vclusterControllerManagerArgs = []string{
	"--controllers=*,-nodeipam,-nodelifecycle,-persistentvolume-binder,-attachdetach,-persistentvolume-expander,-ttl",
	"--node-monitor-grace-period=180s",
	"--node-monitor-period=30s",
	"--pvclaimbinder-sync-period=60s",
	"--horizontal-pod-autoscaler-sync-period=60s",
}

// withUserArgs appends the user's flags to harikube's own, first dropping
// each of harikube's flags that the user sets: list flags such as
// --etcd-servers would otherwise append to harikube's value instead of
// replacing it.
func withUserArgs(own, user []string) []string {
	set := map[string]bool{}
	for _, a := range user {
		set[flagName(a)] = true
	}
	out := make([]string, 0, len(own)+len(user))
	for _, a := range own {
		if !set[flagName(a)] {
			out = append(out, a)
		}
	}
	return append(out, user...)
}

// flagName is the name of a "--name=value" argument.
func flagName(arg string) string {
	name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
	return name
}

package cli

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/harikube/harikube/pkg/server"
	"github.com/harikube/harikube/pkg/vcluster"
)

func newServerCommand() *cobra.Command {
	cfg := server.Config{ReadyTimeout: 3 * time.Minute}
	var apiArgs, cmArgs []string
	var debug bool
	c := &cobra.Command{
		Use:   "server",
		Short: "Run the control plane: datastore, kube-apiserver and kube-controller-manager in one process",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			setupLogging(debug)
			ctx, cancel := signalContext()
			defer cancel()
			server.TuneGarbageCollector(ctx)
			cfg.APIServerArgs = componentArgs(apiArgs)
			cfg.ControllerManagerArgs = componentArgs(cmArgs)
			if cfg.VCluster && !c.Flags().Changed("service-cidr") {
				cfg.ServiceCIDR = "" // the host cluster's, as vCluster detected it
			}
			return server.Run(ctx, cfg)
		},
	}
	f := c.Flags()
	f.StringVarP(&cfg.DataDir, "data-dir", "d", defaultDataDir(), "directory for the database, socket, certificates and kubeconfig")
	f.StringVar(&cfg.PKIDir, "pki-dir", "", "use this existing PKI directory in vCluster's /data/pki layout (client-ca, server-ca, front-proxy, apiserver, sa keys, admin.conf, controller-manager.conf) instead of generating one")
	f.StringVar(&cfg.BindAddress, "bind-address", "0.0.0.0", "address the kube-apiserver listens on")
	f.IntVar(&cfg.HTTPSPort, "https-listen-port", 6443, "HTTPS port of the kube-apiserver")
	f.StringVar(&cfg.DatastoreEndpoint, "datastore-endpoint", "", "Kine datastore DSN (default: SQLite file <data-dir>/db/state.db)")
	f.Var(overridesFlag{&cfg.DatastoreOverrides}, "datastore-override", overridesUsage)
	f.StringVar(&cfg.DatastoreTLS.CAFile, "datastore-cafile", "", "CA certificate that signed the PostgreSQL server's certificate (sslrootcert; sets sslmode=verify-full unless the endpoint sets sslmode)")
	f.StringVar(&cfg.DatastoreTLS.CertFile, "datastore-certfile", "", "client certificate for PostgreSQL (sslcert)")
	f.StringVar(&cfg.DatastoreTLS.KeyFile, "datastore-keyfile", "", "key of the client certificate for PostgreSQL (sslkey)")
	f.StringVarP(&cfg.WriteKubeconfig, "write-kubeconfig", "o", "", "write the admin kubeconfig to this path (default <data-dir>/kubeconfig.yaml)")
	f.StringVar(&cfg.ServiceCIDR, "service-cidr", "10.43.0.0/16", "IP range for service cluster IPs (\"v4,v6\" for dual-stack); with --vcluster the default is the host cluster's, as vCluster detected it")
	f.BoolVar(&cfg.VCluster, "vcluster", false, "run as the control plane of a vCluster: the host cluster's service CIDR (annotation "+vcluster.ServiceCIDRAnnotation+" on the Service $"+vcluster.NameEnv+", read with the pod's service account) and vCluster's controller set for kube-controller-manager")
	f.StringVar(&cfg.ClusterDomain, "cluster-domain", "cluster.local", "cluster domain")
	f.BoolVar(&cfg.SelectorPushdown, "selector-pushdown", true, "answer label and field selectors in the datastore; false gives upstream behaviour with everything else unchanged")
	f.BoolVar(&cfg.CacheCustomResources, "watch-cache-custom-resources", false, "keep the apiserver watch cache for custom resources (upstream default); by default they are served from the datastore with pushdown")
	f.BoolVar(&cfg.SharedEtcdClient, "shared-etcd-client", true, "one etcd client (one gRPC connection) per datastore for all of the kube-apiserver's resources; false opens one per resource storage, as upstream does")
	f.StringArrayVar(&apiArgs, "kube-apiserver-arg", nil, "extra flag for kube-apiserver, as name=value (repeatable)")
	f.StringArrayVar(&cmArgs, "kube-controller-manager-arg", nil, "extra flag for kube-controller-manager, as name=value (repeatable)")
	f.BoolVar(&cfg.SecretsEncryption, "secrets-encryption", false, "encrypt Secrets at rest (key kept in <data-dir>/cred); selector lists on Secrets stay correct, their values are just not indexed")
	f.Var(cronFlag{&cfg.Snapshots.Cron}, "snapshot-schedule", "take snapshots of the SQLite datastore on this cron schedule, e.g. '0 */12 * * *' or @every 6h (k3s: --etcd-snapshot-schedule-cron)")
	f.IntVar(&cfg.Snapshots.Retention, "snapshot-retention", 5, "scheduled snapshots to keep, 0 keeps all (k3s: --etcd-snapshot-retention)")
	f.StringVar(&cfg.Snapshots.Dir, "snapshot-dir", "", "directory of scheduled snapshots (default <data-dir>/snapshots; k3s: --etcd-snapshot-dir)")
	f.BoolVar(&debug, "debug", false, "debug logging")
	f.BoolVar(&cfg.UnindexedDatastore, "unindexed-datastore", false, "use Kine's stock SQLite driver without indexes (benchmark baseline)")
	_ = f.MarkHidden("unindexed-datastore")
	return c
}

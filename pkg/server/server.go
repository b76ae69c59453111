// Package server runs a whole harikube control plane in one process: Kine
// with the indexing driver on a unix socket, the upstream kube-apiserver with
// selector pushdown, and the upstream kube-controller-manager.
package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/component-base/metrics/legacyregistry"

	"github.com/harikube/harikube/pkg/apiserver"
	"github.com/harikube/harikube/pkg/controllermanager"
	"github.com/harikube/harikube/pkg/datastore"
	"github.com/harikube/harikube/pkg/pki"
	"github.com/harikube/harikube/pkg/pushdown"
	"github.com/harikube/harikube/pkg/sharedetcd"
	"github.com/harikube/harikube/pkg/vcluster"
)

// Config is what `harikube server` is asked to run.
type Config struct {
	DataDir           string
	BindAddress       string
	HTTPSPort         int
	DatastoreEndpoint string
	DatastoreTLS      DatastoreTLS
	// DatastoreOverrides put resources in datastores of their own.
	DatastoreOverrides   []DatastoreOverride
	WriteKubeconfig      string
	ServiceCIDR          string
	ClusterDomain        string
	SelectorPushdown     bool
	CacheCustomResources bool
	// SharedEtcdClient builds every resource's store over one etcd client
	// per datastore instead of upstream's one per store.
	SharedEtcdClient bool
	// UnindexedDatastore runs Kine's stock SQLite driver (benchmark baseline).
	UnindexedDatastore bool
	// SecretsEncryption encrypts Secrets at rest with a key kept in the
	// data directory.
	SecretsEncryption     bool
	APIServerArgs         []string
	ControllerManagerArgs []string
	// ReadyTimeout bounds the wait for the apiserver's /readyz.
	ReadyTimeout time.Duration
	// PKIDir, when set, is an existing PKI directory in vCluster's /data/pki
	// layout (pkg/vcluster), used instead of generating one under DataDir.
	PKIDir string
	// Snapshots are taken on a schedule when Snapshots.Cron is set.
	Snapshots SnapshotSchedule
	// VCluster runs harikube as a vCluster's control plane: the controller
	// manager runs vCluster's controller set, and an empty ServiceCIDR is
	// the one vCluster detected for the host cluster.
	VCluster bool
}

// hostServiceCIDRWait bounds the wait for the host Service's annotation;
// the syncer writes it before it starts harikube.
const hostServiceCIDRWait = 30 * time.Second

// skipGCSyncWait bounds the wait for the first list of CRDs before the
// controller manager starts.
const skipGCSyncWait = 30 * time.Second

// Run starts everything, reports readiness, and blocks until ctx ends; then
// it stops the controller manager, the apiserver and the datastore in that
// order. A nil error means a clean stop.
func Run(ctx context.Context, cfg Config) error {
	start := time.Now()
	if cfg.ServiceCIDR == "" {
		if !cfg.VCluster {
			return errors.New("no service CIDR: pass --service-cidr")
		}
		host, err := vcluster.PodHost()
		if err != nil {
			return err
		}
		if cfg.ServiceCIDR, err = host.ServiceCIDR(ctx, hostServiceCIDRWait); err != nil {
			return err
		}
		logrus.Infof("Service CIDR: %s (the host cluster's, from Service %s/%s)", cfg.ServiceCIDR, host.Namespace, host.Service)
	}
	stores, err := planDatastores(cfg)
	if err != nil {
		return err
	}
	if err := prepareDataDir(cfg.DataDir); err != nil {
		return err
	}
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	defer lock.release()

	if err := checkPortFree(cfg.BindAddress, cfg.HTTPSPort); err != nil {
		return err
	}

	serviceIP, err := firstServiceIP(cfg.ServiceCIDR)
	if err != nil {
		return err
	}
	apiURL := "https://" + net.JoinHostPort(clientHost(cfg.BindAddress), strconv.Itoa(cfg.HTTPSPort))
	kubeconfig := cfg.WriteKubeconfig
	if kubeconfig == "" {
		kubeconfig = filepath.Join(cfg.DataDir, "kubeconfig.yaml")
	}
	controllerKubeconfig := filepath.Join(cfg.DataDir, "cred", "controller-manager.kubeconfig")
	if err := os.MkdirAll(filepath.Dir(controllerKubeconfig), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(controllerKubeconfig), err)
	}
	var bundle *pki.Bundle
	var pkiArgs []string
	if cfg.PKIDir != "" {
		// vCluster's PKI: its certificates, and its kubeconfigs pointed at
		// the address harikube listens on.
		existing, err := vcluster.LoadPKI(cfg.PKIDir)
		if err != nil {
			return err
		}
		bundle, pkiArgs = existing.Bundle, existing.APIServerArgs()
		if err := vcluster.RewriteKubeconfig(existing.AdminKubeconfig, kubeconfig, apiURL); err != nil {
			return fmt.Errorf("write admin kubeconfig: %w", err)
		}
		if err := vcluster.RewriteKubeconfig(existing.ControllerManagerKubeconfig, controllerKubeconfig, apiURL); err != nil {
			return fmt.Errorf("write controller-manager kubeconfig: %w", err)
		}
	} else {
		hostname, _ := os.Hostname()
		bundle, err = pki.Ensure(pki.Options{
			Dir:           filepath.Join(cfg.DataDir, "tls"),
			Hostnames:     nonEmpty(hostname),
			IPs:           bindIPs(cfg.BindAddress),
			ServiceIP:     serviceIP,
			ClusterDomain: cfg.ClusterDomain,
		})
		if err != nil {
			return fmt.Errorf("prepare TLS certificates: %w", err)
		}
		if err := pki.WriteKubeconfig(kubeconfig, apiURL, bundle.ServerCA, bundle.AdminCert, bundle.AdminKey, "admin"); err != nil {
			return fmt.Errorf("write admin kubeconfig: %w", err)
		}
		if err := pki.WriteKubeconfig(controllerKubeconfig, apiURL, bundle.ServerCA, bundle.ControllerManagerCert, bundle.ControllerManagerKey, "controller-manager"); err != nil {
			return fmt.Errorf("write controller-manager kubeconfig: %w", err)
		}
	}

	dsCtx, stopDatastore := context.WithCancel(context.Background())
	defer stopDatastore()
	err = stores.start(dsCtx, cfg, legacyregistry.Registerer())
	defer stores.Wait()
	defer stopDatastore()
	if err != nil {
		return err
	}
	ds := stores.primary().ds
	stores.describe(cfg)
	if !cfg.UnindexedDatastore {
		if err := stores.checkRoutes(ctx, cfg); err != nil {
			return err
		}
	}
	if err := startSnapshots(ctx, cfg, ds); err != nil {
		return err
	}

	apiCtx, stopAPI := context.WithCancel(context.Background())
	defer stopAPI()
	storeOpts := pushdown.Options{CacheCustomResources: cfg.CacheCustomResources}
	if cfg.SharedEtcdClient {
		storeOpts.NewRawStorage = sharedetcd.New().NewStorage
	}
	if !cfg.UnindexedDatastore {
		storeOpts.Pushdown, storeOpts.Route, storeOpts.ReuseDecodes = cfg.SelectorPushdown, stores.route, true
	}
	wrap := pushdown.Wrapper(storeOpts)
	own := apiServerArgs(cfg, bundle, ds.Endpoint, serviceIP)
	if overrides := stores.etcdServersOverrides(); len(overrides) > 0 {
		own = append(own, "--etcd-servers-overrides="+strings.Join(overrides, ","))
	}
	authArgs, err := authenticationArgs(cfg.DataDir, cfg.APIServerArgs)
	if err != nil {
		return err
	}
	own = append(own, authArgs...)
	if cfg.SecretsEncryption {
		path, err := encryptionConfig(cfg.DataDir)
		if err != nil {
			return err
		}
		own = append(own, "--encryption-provider-config="+path)
	}
	args := withUserArgs(withUserArgs(own, pkiArgs), cfg.APIServerArgs)
	var paths map[string]http.Handler
	if !cfg.UnindexedDatastore {
		paths = map[string]http.Handler{CheckPath: checkHandler(stores.byName)}
	}
	skipGC, err := skipGCAndQuota(kubeconfig)
	if err != nil {
		return err
	}
	api, err := apiserver.New(apiCtx, args, wrap, paths, apiserver.WithHandler(skipGC.Wrap))
	if err != nil {
		return err
	}
	apiDone := make(chan error, 1)
	go func() { apiDone <- api.Run(apiCtx) }()
	stopAPIAndWait := func() error {
		stopAPI()
		return <-apiDone
	}

	client, err := adminClient(kubeconfig)
	if err != nil {
		_ = stopAPIAndWait()
		return err
	}
	if err := waitReady(ctx, client, cfg.ReadyTimeout, apiDone); err != nil {
		apiErr := stopAPIAndWait()
		if ctx.Err() != nil {
			// Asked to stop while starting: a clean stop.
			logrus.Info("Stopped before becoming ready")
			return nil
		}
		if apiErr != nil {
			logrus.Debugf("kube-apiserver shutdown: %v", apiErr)
		}
		return err
	}
	if err := stores.checkOverridesApplied(ctx, kubeconfig); err != nil {
		_ = stopAPIAndWait()
		return err
	}
	logrus.Infof("API server: %s", apiURL)
	logrus.Infof("Admin kubeconfig: %s", kubeconfig)
	go skipGC.Run(apiCtx)
	// The controllers' discovery waits for the CRD list (and retries every
	// 30 s until it is there); the controller manager starts either way.
	syncCtx, cancelSync := context.WithTimeout(ctx, skipGCSyncWait)
	synced := skipGC.WaitForSync(syncCtx)
	cancelSync()
	if ctx.Err() != nil {
		_ = stopAPIAndWait()
		logrus.Info("Stopped before becoming ready")
		return nil
	}
	if !synced {
		logrus.Warnf("CustomResourceDefinitions not listed after %s: the garbage collector and quota controller wait for them to know which resources skip them (%s)", skipGCSyncWait, controllermanager.SkipGCAndQuotaAnnotation)
	}
	go skipGC.RunDeletionGuard(apiCtx, client)

	cmCtx, stopCM := context.WithCancel(context.Background())
	defer stopCM()
	cmArgs := controllerManagerArgs(cfg, bundle, controllerKubeconfig)
	if cfg.VCluster {
		cmArgs = withUserArgs(cmArgs, vclusterControllerManagerArgs)
	}
	cm, err := controllermanager.New(cmCtx, withUserArgs(cmArgs, cfg.ControllerManagerArgs))
	if err != nil {
		_ = stopAPIAndWait()
		return err
	}
	var cmWG sync.WaitGroup
	cmDone := make(chan error, 1)
	cmWG.Add(1)
	go func() {
		defer cmWG.Done()
		cmDone <- cm.Run(cmCtx)
	}()
	logrus.Infof("harikube is ready in %.1fs (kubectl: harikube kubectl --kubeconfig %s get ns)", time.Since(start).Seconds(), kubeconfig)

	var runErr error
	select {
	case <-ctx.Done():
		logrus.Info("Shutting down")
	case err := <-apiDone:
		runErr = fmt.Errorf("kube-apiserver stopped: %w", errOrUnexpected(err))
		apiDone <- nil
	case err := <-cmDone:
		runErr = fmt.Errorf("kube-controller-manager stopped: %w", errOrUnexpected(err))
	case err := <-stores.failed(dsCtx):
		runErr = err
	}
	// Clients first, the datastore last: the apiserver finishes its
	// requests against a datastore that is still there.
	stopCM()
	if waitTimeout(&cmWG, 10*time.Second) {
		logrus.Info("kube-controller-manager stopped")
	} else {
		logrus.Warn("kube-controller-manager did not stop in time; continuing shutdown")
	}
	if err := stopAPIAndWait(); err != nil {
		if runErr == nil {
			runErr = fmt.Errorf("kube-apiserver shutdown: %w", err)
		}
	} else {
		logrus.Info("kube-apiserver stopped")
	}
	stopDatastore()
	stores.Wait()
	logrus.Info("Datastore stopped")
	if runErr == nil {
		logrus.Info("Stopped")
	}
	return runErr
}

func errOrUnexpected(err error) error {
	if err == nil {
		return errors.New("exited unexpectedly")
	}
	return err
}

// waitTimeout reports whether wg is done within d.
func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// DatastoreTLS are the TLS files for a postgres:// datastore endpoint.
type DatastoreTLS struct {
	CAFile, CertFile, KeyFile string
}

// kineArgs passes the files to Kine as its own flags, which its drivers
// turn into the endpoint's sslrootcert, sslcert and sslkey.
func (t DatastoreTLS) kineArgs() []string {
	var args []string
	for flag, file := range map[string]string{"ca-file": t.CAFile, "cert-file": t.CertFile, "key-file": t.KeyFile} {
		if file != "" {
			args = append(args, "--"+flag+"="+file)
		}
	}
	return args
}

func describeDatastore(cfg Config, ds *datastore.Datastore) {
	kind := "indexed, selector pushdown on"
	switch {
	case cfg.UnindexedDatastore:
		kind = "stock Kine driver, no index"
	case !cfg.SelectorPushdown:
		kind = "indexed, selector pushdown off"
	}
	if ds.DatabasePath != "" {
		logrus.Infof("Datastore: SQLite %s (%s)", ds.DatabasePath, kind)
	} else {
		logrus.Infof("Datastore: %s (%s)", redactEndpoint(cfg.DatastoreEndpoint), kind)
	}
	logrus.Infof("etcd API: %s", ds.Endpoint)
}

// skipGCAndQuota follows the CRDs, as the admin, for the discovery filter
// that keeps opted-out custom resources out of the controller manager.
func skipGCAndQuota(kubeconfig string) (*controllermanager.SkipGCAndQuota, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load admin kubeconfig %s: %w", kubeconfig, err)
	}
	return controllermanager.NewSkipGCAndQuota(rc)
}

func adminClient(kubeconfig string) (kubernetes.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load admin kubeconfig %s: %w", kubeconfig, err)
	}
	rc.Timeout = 5 * time.Second
	return kubernetes.NewForConfig(rc)
}

// waitReady polls /readyz until it answers ok, the apiserver fails, or the
// timeout passes.
func waitReady(ctx context.Context, client kubernetes.Interface, timeout time.Duration, apiDone chan error) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		select {
		case err := <-apiDone:
			apiDone <- err
			return false, fmt.Errorf("kube-apiserver stopped while starting: %w", errOrUnexpected(err))
		default:
		}
		var status int
		res := client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&status)
		last = res.Error()
		return last == nil && status == http.StatusOK, nil
	})
	if err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("kube-apiserver not ready after %s (last check: %v)", timeout, last)
	}
	return nil
}

func nonEmpty(s ...string) []string {
	var out []string
	for _, v := range s {
		if v != "" {
			out = append(out, v)
		}
	}
	return out
}

func bindIPs(bind string) []net.IP {
	ip := net.ParseIP(bind)
	if ip == nil || ip.IsUnspecified() {
		return nil
	}
	return []net.IP{ip}
}

// clientHost is where local clients reach the apiserver.
func clientHost(bind string) string {
	ip := net.ParseIP(bind)
	if ip == nil || ip.IsUnspecified() {
		return "127.0.0.1"
	}
	return ip.String()
}

// firstServiceIP is the kubernetes Service's IP: the first of the primary
// range (the first of a dual-stack "v4,v6" pair, as upstream).
func firstServiceIP(cidrs string) (net.IP, error) {
	if err := vcluster.ValidateServiceCIDR(cidrs); err != nil {
		return nil, err
	}
	primary, _, _ := strings.Cut(cidrs, ",")
	_, n, err := net.ParseCIDR(strings.TrimSpace(primary))
	if err != nil {
		return nil, fmt.Errorf("service CIDR %q: %w", cidrs, err)
	}
	ip := make(net.IP, len(n.IP))
	copy(ip, n.IP)
	ip[len(ip)-1]++
	return ip, nil
}

// checkPortFree turns "address already in use" into an early, readable error.
func checkPortFree(bind string, port int) error {
	addr := net.JoinHostPort(bind, strconv.Itoa(port))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %w; stop what uses the port or pick another with --https-listen-port", addr, err)
	}
	return l.Close()
}

// advertiseAddress picks the address published in the kubernetes service
// endpoints, as upstream would; a host without a usable interface gets the
// loopback address, which upstream only accepts without endpoint reconciling.
func advertiseAddress(bind string) (string, bool) {
	ip, err := utilnet.ResolveBindAddress(net.ParseIP(bind))
	if err != nil || ip.IsLoopback() {
		return "127.0.0.1", false
	}
	return ip.String(), true
}

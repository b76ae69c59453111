package cli

// The upstream component roles of the multi-call binary: called as
// kube-apiserver, kube-controller-manager or kine (by the basename of argv[0],
// e.g. through a symlink, or as `harikube kube-apiserver ...`), harikube
// accepts exactly that component's command line. This is what vCluster's
// "k8s" distro runs from /binaries.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/k3s-io/kine/pkg/app"
	"github.com/k3s-io/kine/pkg/endpoint"
	kinemetrics "github.com/k3s-io/kine/pkg/metrics"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/urfave/cli/v2"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/component-base/version/verflag"
	cmfeatures "k8s.io/controller-manager/pkg/features"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"

	"github.com/harikube/harikube/pkg/apiserver"
	"github.com/harikube/harikube/pkg/controllermanager"
	"github.com/harikube/harikube/pkg/datastore"
	"github.com/harikube/harikube/pkg/index"
	"github.com/harikube/harikube/pkg/logging"
	"github.com/harikube/harikube/pkg/pushdown"
	"github.com/harikube/harikube/pkg/sharedetcd"
	"github.com/harikube/harikube/pkg/version"
)

// Component names, as argv[0] basenames and as subcommands.
const (
	roleAPIServer         = "kube-apiserver"
	roleControllerManager = "kube-controller-manager"
	roleKine              = "kine"
)

// Environment variables that tune the kube-apiserver role, whose command line
// is upstream's and so has no room for harikube's own options. vCluster passes
// controlPlane.distro.k8s.env to the processes it starts.
const (
	envSelectorPushdown          = "HARIKUBE_SELECTOR_PUSHDOWN"
	envWatchCacheCustomResources = "HARIKUBE_WATCH_CACHE_CUSTOM_RESOURCES"
	envSharedEtcdClient          = "HARIKUBE_SHARED_ETCD_CLIENT"
)

// indexedSchemes are the Kine endpoint schemes datastore.Start serves with
// harikube's indexing drivers.
var indexedSchemes = map[string]bool{"sqlite": true, "postgres": true, "postgresql": true}

// stopGrace bounds how long a role waits for its component to finish after
// SIGINT or SIGTERM before exiting anyway.
const stopGrace = 60 * time.Second

func newComponentCommands() []*cobra.Command {
	cmd := func(name, short string, run func([]string) error) *cobra.Command {
		return &cobra.Command{
			Use:                name + " [upstream flags]",
			Short:              short,
			DisableFlagParsing: true,
			RunE:               func(_ *cobra.Command, args []string) error { return run(args) },
		}
	}
	return []*cobra.Command{
		cmd(roleAPIServer, "Run the upstream kube-apiserver with selector pushdown (also when called as kube-apiserver)", runAPIServer),
		cmd(roleControllerManager, "Run the upstream kube-controller-manager (also when called as kube-controller-manager)", runControllerManager),
		cmd(roleKine, "Run Kine with harikube's indexing drivers (also when called as kine)", runKine),
	}
}

// parseUpstream parses args with an upstream flag set, for --help and
// --version, which the component constructors do not handle. done reports
// that the command has been answered.
func parseUpstream(name string, fs *pflag.FlagSet, args []string) (done bool, err error) {
	usage := func() (bool, error) {
		fs.SetOutput(os.Stdout)
		fmt.Fprintf(os.Stdout, "Usage of %s (harikube):\n", name)
		fs.PrintDefaults()
		return true, nil
	}
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return usage()
		}
		return true, fmt.Errorf("%s: %w", name, err)
	}
	// The upstream global flags define --help themselves.
	if help := fs.Lookup("help"); help != nil && help.Value.String() == "true" {
		return usage()
	}
	if rest := fs.Args(); len(rest) > 0 {
		return true, fmt.Errorf("%s: takes no arguments, got %q", name, rest)
	}
	// Prints the Kubernetes version and exits 0 when --version is set.
	verflag.PrintAndExitIfRequested()
	return false, nil
}

// klogVerbosity is the -v the command line asks for.
func klogVerbosity(fs *pflag.FlagSet) int {
	if f := fs.Lookup("v"); f != nil {
		if v, err := strconv.Atoi(f.Value.String()); err == nil {
			return v
		}
	}
	return 0
}

func envBool(name string, def bool) (bool, error) {
	v, ok := os.LookupEnv(name)
	if !ok || v == "" {
		return def, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return def, fmt.Errorf("%s=%q: want true or false", name, v)
	}
	return b, nil
}

// runUntilSignal runs a component until it returns or SIGINT/SIGTERM
// arrives; after a signal it waits up to stopGrace for a graceful stop, which
// counts as success.
func runUntilSignal(name string, run func(ctx context.Context) error) error {
	ctx, cancel := signalContext()
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	select {
	case err := <-done:
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			return fmt.Errorf("%s exited unexpectedly", name)
		}
		return err
	case <-ctx.Done():
	}
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, context.Canceled) {
			logrus.Warnf("%s stopped with: %v", name, err)
		}
	case <-time.After(stopGrace):
		logrus.Warnf("%s did not stop within %s; exiting", name, stopGrace)
	}
	logrus.Infof("%s stopped", name)
	return nil
}

// runAPIServer is the kube-apiserver role: the upstream server with
// harikube's storage decorator. Selectors are attached to the etcd requests as
// in `harikube server`. When the datastore is harikube's kine role in another
// process, it indexes labels, metadata.name and metadata.namespace of every
// object generically (it has no access to this process's per-resource field
// extractors), so those selectors are answered in SQL and any other field
// selector is filtered here, by the apiserver, exactly as upstream. Against a
// stock etcd or Kine the metadata is ignored and the apiserver filters
// everything, so results are the same either way.
func runAPIServer(args []string) error {
	_, fs := apiserver.FlagSet()
	if done, err := parseUpstream(roleAPIServer, fs, args); done {
		return err
	}
	logging.Setup(klogVerbosity(fs) >= logging.DebugVerbosity)
	pushdownOn, err := envBool(envSelectorPushdown, true)
	if err != nil {
		return err
	}
	cacheCRs, err := envBool(envWatchCacheCustomResources, false)
	if err != nil {
		return err
	}
	sharedClient, err := envBool(envSharedEtcdClient, true)
	if err != nil {
		return err
	}
	storeOpts := pushdown.Options{Pushdown: pushdownOn, CacheCustomResources: cacheCRs, Registry: index.NewRegistry()}
	if sharedClient {
		storeOpts.NewRawStorage = sharedetcd.New().NewStorage
	}
	wrap := pushdown.Wrapper(storeOpts)
	return runUntilSignal(roleAPIServer, func(ctx context.Context) error {
		srv, err := apiserver.New(ctx, args, wrap, nil, apiserver.WithLoopback(skipGCAndQuota))
		if err != nil {
			return err
		}
		// The upstream options apply their own logging configuration.
		logging.Reapply()
		return srv.Run(ctx)
	})
}

// skipGCAndQuotaSyncWait bounds how long the apiserver's readiness waits for
// the first list of CRDs, which tells the discovery filter which resources
// opted out; until then the two controllers' discovery fails and is retried.
const skipGCAndQuotaSyncWait = 30 * time.Second

// skipGCAndQuota honours harikube.io/skip-gc-and-quota in the kube-apiserver
// role as `harikube server` does: the discovery filter, and the deletion
// guard, following the CRDs with the apiserver's own loopback client.
func skipGCAndQuota(loopback *rest.Config) ([]apiserver.Option, error) {
	skip, err := controllermanager.NewSkipGCAndQuota(loopback)
	if err != nil {
		return nil, err
	}
	start := func(ctx context.Context, loopback *rest.Config) error {
		client, err := kubernetes.NewForConfig(loopback)
		if err != nil {
			return fmt.Errorf("client for the %s deletion guard: %w", controllermanager.SkipGCAndQuotaAnnotation, err)
		}
		go skip.Run(ctx)
		syncCtx, cancel := context.WithTimeout(ctx, skipGCAndQuotaSyncWait)
		defer cancel()
		if !skip.WaitForSync(syncCtx) && ctx.Err() == nil {
			logrus.Warnf("CustomResourceDefinitions not listed after %s: the garbage collector and quota controller wait for them to know which resources skip them (%s)", skipGCAndQuotaSyncWait, controllermanager.SkipGCAndQuotaAnnotation)
		}
		go skip.RunDeletionGuard(ctx, client)
		return nil
	}
	return []apiserver.Option{
		apiserver.WithHandler(skip.Wrap),
		apiserver.WithPostStartHook("harikube-skip-gc-and-quota", start),
	}, nil
}

// runControllerManager is the kube-controller-manager role.
func runControllerManager(args []string) error {
	_, fs, err := controllermanager.FlagSet()
	if err != nil {
		return err
	}
	if done, err := parseUpstream(roleControllerManager, fs, args); done {
		return err
	}
	logging.Setup(klogVerbosity(fs) >= logging.DebugVerbosity)
	args = dropRemovedControllers(args)
	leaderElect := true
	if f := fs.Lookup("leader-elect"); f != nil {
		leaderElect = f.Value.String() == "true"
	}
	return runUntilSignal(roleControllerManager, func(ctx context.Context) error {
		// The controllers stop on ctx; building the config needs a
		// context of its own only for its connection attempts.
		cm, err := controllermanager.New(ctx, args)
		if err != nil {
			return err
		}
		logging.Reapply()
		runCtx := ctx
		if leaderElect && !utilfeature.DefaultFeatureGate.Enabled(cmfeatures.ControllerManagerReleaseLeaderElectionLockOnExit) {
			// Upstream then exits 1 as soon as leader election stops, and
			// cancelling its context stops it; upstream itself has no
			// signal handler and dies by the signal. Here a signal is an
			// orderly stop with nothing to release: exit 0 without
			// cancelling the controllers' context.
			runCtx = context.WithoutCancel(ctx)
			go func() {
				<-ctx.Done()
				logrus.Infof("%s stopped", roleControllerManager)
				os.Exit(0)
			}()
		}
		return cm.Run(runCtx)
	})
}

// removedControllers are cloud controllers kube-controller-manager once had
// (by name and alias) and no longer has.
var removedControllers = map[string]bool{
	"cloud-node-lifecycle": true, "cloud-node-lifecycle-controller": true,
	"service": true, "service-lb-controller": true,
	"route": true, "node-route-controller": true,
}

// dropRemovedControllers removes, from --controllers, the disabling of
// controllers this Kubernetes version no longer has. vCluster (0.30 to at
// least 0.36) passes --controllers=*,...,-cloud-node-lifecycle,..., and
// cloud-node-lifecycle left kube-controller-manager in 1.37, whose upstream
// binary therefore refuses vCluster's default flags. A controller that does
// not exist is off already, so dropping "-name" changes nothing else; any
// other unknown name is still an error, as upstream.
func dropRemovedControllers(args []string) []string {
	known := map[string]bool{}
	for _, c := range kcmapp.KnownControllers() {
		known[c] = true
	}
	for alias := range kcmapp.ControllerAliases() {
		known[alias] = true
	}
	filter := func(list string) string {
		var kept []string
		for _, c := range strings.Split(list, ",") {
			if name, disabled := strings.CutPrefix(strings.TrimSpace(c), "-"); disabled && removedControllers[name] && !known[name] {
				logrus.Warnf("%s: ignoring --controllers entry %q: Kubernetes %s has no controller %q", roleControllerManager, c, version.Get().Kubernetes, name)
				continue
			}
			kept = append(kept, c)
		}
		return strings.Join(kept, ",")
	}
	out := make([]string, len(args))
	copy(out, args)
	for i := 0; i < len(out); i++ {
		switch {
		case strings.HasPrefix(out[i], "--controllers="):
			out[i] = "--controllers=" + filter(strings.TrimPrefix(out[i], "--controllers="))
		case out[i] == "--controllers" && i+1 < len(out):
			out[i+1] = filter(out[i+1])
			i++
		}
	}
	return out
}

// runKine is the kine role: Kine's own command line (every flag of
// github.com/k3s-io/kine/pkg/app, unknown flags rejected as upstream does),
// served with harikube's indexing drivers for sqlite:// (and the default
// ./db/state.db) and postgres:// endpoints. Other endpoints (mysql://,
// nats://, ...) run Kine's stock drivers without an index; selectors are then
// filtered by the apiserver.
func runKine(args []string) error {
	a := app.New()
	a.Version = version.Get().Kine + " (harikube " + version.Version + ", indexing driver)"
	ran := false
	a.Action = func(c *cli.Context) error {
		ran = true
		if c.Args().Len() != 0 {
			return fmt.Errorf("%s does not accept positional arguments, only flags", roleKine)
		}
		return serveKine(c, args)
	}
	// Keep errors as return values.
	a.ExitErrHandler = func(*cli.Context, error) {}
	if err := a.Run(append([]string{roleKine}, args...)); err != nil {
		if ran {
			return err
		}
		return fmt.Errorf("%s: %w", roleKine, err)
	}
	return nil
}

func serveKine(c *cli.Context, args []string) error {
	logging.Setup(c.Bool("debug"))
	switch f := c.String("log-format"); f {
	case "plain":
	case "json":
		logrus.SetFormatter(&logrus.JSONFormatter{TimestampFormat: time.RFC3339Nano,
			FieldMap: logrus.FieldMap{logrus.FieldKeyLevel: "severity", logrus.FieldKeyMsg: "message"}})
	default:
		return fmt.Errorf("invalid log format: %s", f)
	}

	ctx, cancel := signalContext()
	defer cancel()
	kinemetrics.RegisterCoreCollectors()

	ep := c.String("endpoint")
	var wait func()
	var failed <-chan error // nil: the stock driver reports nothing
	scheme, _, _ := strings.Cut(ep, "://")
	if ep == "" || indexedSchemes[scheme] {
		ds, err := datastore.Start(ctx, datastore.Options{
			// Kine's default database is ./db/state.db, which is also the
			// datastore's default for data directory ".".
			DataDir:           ".",
			Endpoint:          ep,
			Listener:          c.String("listen-address"),
			MetricsRegisterer: kinemetrics.Registry,
			KineArgs:          args,
		})
		if err != nil {
			return err
		}
		wait, failed = ds.Wait, ds.Failed()
		logrus.Infof("Kine (harikube indexing driver) serving %s", ds.Endpoint)
	} else {
		cfg := app.Config(args)
		cfg.MetricsRegisterer = kinemetrics.Registry
		wg := &sync.WaitGroup{}
		cfg.WaitGroup = wg
		if _, err := endpoint.Listen(ctx, cfg); err != nil {
			return err
		}
		wait = wg.Wait
		logrus.Warnf("Kine endpoint scheme %q has no harikube index: selectors are filtered by the apiserver", scheme)
	}

	mc := kinemetrics.Config{ServerAddress: c.String("metrics-bind-address"), EnableProfiling: c.Bool("metrics-enable-profiling")}
	if !c.Bool("metrics-ignore-tls-config") {
		// As upstream: the metrics server uses the etcd listener's TLS.
		mc.ServerTLSConfig = app.Config(args).ServerTLSConfig
	}
	go kinemetrics.Serve(ctx, mc)

	var err error
	select {
	case <-ctx.Done():
	case err = <-failed:
		cancel()
	}
	wait()
	if err != nil {
		return fmt.Errorf("%s: %w", roleKine, err)
	}
	logrus.Infof("%s stopped", roleKine)
	return nil
}

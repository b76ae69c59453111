// Package apiserver runs the upstream kube-apiserver in-process, from its
// public option and config types, without its cobra command (whose signal
// handling and logging setup may only happen once per process).
package apiserver

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/spf13/pflag"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/apiserver/pkg/registry/generic"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/component-base/cli/globalflag"
	"k8s.io/component-base/logs"
	"k8s.io/component-base/version/verflag"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

// StorageWrapper replaces a REST options getter; harikube uses it to put its
// selector-pushdown storage below the watch cache. customResources is true
// for the getter of custom resources, whose requests carry no example object
// to tell them apart; crds reads a CustomResourceDefinition through the
// server's loopback client (usable once the server serves, which is when
// custom resource storage is built).
type StorageWrapper func(getter generic.RESTOptionsGetter, customResources bool, crds func(ctx context.Context, name string) (*apiextensionsv1.CustomResourceDefinition, error)) generic.RESTOptionsGetter

// Server is a kube-apiserver that is built and listening but not serving yet.
type Server struct {
	run func(context.Context) error
}

// FlagSet returns the upstream kube-apiserver flags bound to a fresh options
// value, for parsing and for help output.
func FlagSet() (*options.ServerRunOptions, *pflag.FlagSet) {
	s := options.NewServerRunOptions()
	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	nfs := s.Flags()
	verflag.AddFlags(nfs.FlagSet("global"))
	globalflag.AddGlobalFlags(nfs.FlagSet("global"), "kube-apiserver", logs.SkipLoggingConfigurationFlags())
	for _, f := range nfs.FlagSets {
		fs.AddFlagSet(f)
	}
	return s, fs
}

// New parses upstream kube-apiserver flags and builds the server chain
// (apiextensions, core, aggregator). wrap, when not nil, is applied to the
// storage of all of them: built-in resources, CRDs, custom resources and
// APIServices. paths are served beside the API, behind its authentication
// and authorization (as non-resource URLs).
func New(ctx context.Context, args []string, wrap StorageWrapper, paths map[string]http.Handler, opts ...Option) (*Server, error) {
	s, fs := FlagSet()
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("kube-apiserver: %w", err)
	}
	if rest := fs.Args(); len(rest) > 0 {
		return nil, fmt.Errorf("kube-apiserver: takes no arguments, got %q", rest)
	}
	// What the upstream command does before running.
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, fmt.Errorf("kube-apiserver: %w", err)
	}
	rest.SetDefaultWarningHandler(rest.NoWarnings{})

	completed, err := s.Complete(ctx)
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver: %w", err)
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return nil, fmt.Errorf("kube-apiserver: %w", utilerrors.NewAggregate(errs))
	}
	if completed.InformerName, err = cache.NewInformerName("kube-apiserver"); err != nil {
		return nil, fmt.Errorf("kube-apiserver: %w", err)
	}
	cfg, err := app.NewConfig(completed)
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver: %w", err)
	}
	for _, opt := range opts {
		if err := opt(cfg); err != nil {
			return nil, fmt.Errorf("kube-apiserver: %w", err)
		}
	}
	if wrap != nil {
		crds := crdGetter(cfg.ApiExtensions.GenericConfig.LoopbackClientConfig)
		// Nothing reads these getters before CreateServerChain, so replacing
		// them here reaches every store the chain builds.
		cfg.KubeAPIs.ControlPlane.Generic.RESTOptionsGetter = wrap(cfg.KubeAPIs.ControlPlane.Generic.RESTOptionsGetter, false, crds)
		cfg.ApiExtensions.GenericConfig.RESTOptionsGetter = wrap(cfg.ApiExtensions.GenericConfig.RESTOptionsGetter, false, crds)
		cfg.ApiExtensions.ExtraConfig.CRDRESTOptionsGetter = wrap(cfg.ApiExtensions.ExtraConfig.CRDRESTOptionsGetter, true, crds)
		cfg.Aggregator.GenericConfig.RESTOptionsGetter = wrap(cfg.Aggregator.GenericConfig.RESTOptionsGetter, false, crds)
	}
	if cfg.ApiExtensions.ExtraConfig.CRDRESTOptionsGetter, err = customResourceServers(cfg.ApiExtensions.ExtraConfig.CRDRESTOptionsGetter, completed.Etcd.EtcdServersOverrides); err != nil {
		return nil, err
	}
	cc, err := cfg.Complete()
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver: %w", err)
	}
	chain, err := app.CreateServerChain(cc)
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver: %w", err)
	}
	for path, h := range paths {
		chain.GenericAPIServer.Handler.NonGoRestfulMux.Handle(path, h)
	}
	prepared, err := chain.PrepareRun()
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver: %w", err)
	}
	return &Server{run: prepared.Run}, nil
}

// Option changes the server New builds.
type Option func(*app.Config) error

// WithHandler puts wrap around the API's handler inside the filter chain,
// so that it sees every request with its authenticated user.
func WithHandler(wrap func(http.Handler) http.Handler) Option {
	return func(cfg *app.Config) error {
		build := cfg.Aggregator.GenericConfig.BuildHandlerChainFunc
		cfg.Aggregator.GenericConfig.BuildHandlerChainFunc = func(api http.Handler, c *genericapiserver.Config) http.Handler {
			return build(wrap(api), c)
		}
		return nil
	}
}

// WithLoopback builds options from the server's loopback client
// configuration: its own privileged client, for parts that follow the API
// from inside the server.
func WithLoopback(build func(loopback *rest.Config) ([]Option, error)) Option {
	return func(cfg *app.Config) error {
		loopback := cfg.Aggregator.GenericConfig.LoopbackClientConfig
		if loopback == nil {
			return fmt.Errorf("no loopback client configuration")
		}
		opts, err := build(loopback)
		if err != nil {
			return err
		}
		for _, opt := range opts {
			if err := opt(cfg); err != nil {
				return err
			}
		}
		return nil
	}
}

// WithPostStartHook runs hook once the server serves; ctx ends when the
// server stops, and /readyz fails until hook has returned.
func WithPostStartHook(name string, hook func(ctx context.Context, loopback *rest.Config) error) Option {
	return func(cfg *app.Config) error {
		return cfg.Aggregator.GenericConfig.AddPostStartHook(name, func(hc genericapiserver.PostStartHookContext) error {
			return hook(hc.Context, hc.LoopbackClientConfig)
		})
	}
}

// crdGetter reads CustomResourceDefinitions with the loopback client.
func crdGetter(loopback *rest.Config) func(ctx context.Context, name string) (*apiextensionsv1.CustomResourceDefinition, error) {
	client := sync.OnceValues(func() (apiextensionsclient.Interface, error) {
		if loopback == nil {
			return nil, fmt.Errorf("no loopback client configuration")
		}
		return apiextensionsclient.NewForConfig(loopback)
	})
	return func(ctx context.Context, name string) (*apiextensionsv1.CustomResourceDefinition, error) {
		c, err := client()
		if err != nil {
			return nil, fmt.Errorf("read CustomResourceDefinition %s: %w", name, err)
		}
		ctx, cancel := context.WithTimeout(ctx, crdReadTimeout)
		defer cancel()
		return c.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, name, metav1.GetOptions{})
	}
}

// crdReadTimeout bounds the read of a definition while a custom resource's
// storage is built (its requests wait for it).
const crdReadTimeout = 10 * time.Second

// Run serves until ctx is done, then shuts down gracefully.
func (s *Server) Run(ctx context.Context) error { return s.run(ctx) }

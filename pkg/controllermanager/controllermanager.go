// Package controllermanager runs the upstream kube-controller-manager
// in-process, without its cobra command.
package controllermanager

import (
	"context"
	"fmt"

	"github.com/spf13/pflag"
	restclient "k8s.io/client-go/rest"
	"k8s.io/component-base/cli/globalflag"
	"k8s.io/component-base/logs"
	"k8s.io/component-base/version/verflag"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app/config"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
)

// ControllerManager is a configured kube-controller-manager, not yet running.
type ControllerManager struct {
	config *config.CompletedConfig
}

// FlagSet returns the upstream flags bound to fresh options.
func FlagSet() (*options.KubeControllerManagerOptions, *pflag.FlagSet, error) {
	s, err := options.NewKubeControllerManagerOptions()
	if err != nil {
		return nil, nil, fmt.Errorf("kube-controller-manager: %w", err)
	}
	nfs := s.Flags(app.KnownControllers(), app.ControllersDisabledByDefault(), app.ControllerAliases())
	s.ParsedFlags = &nfs
	verflag.AddFlags(nfs.FlagSet("global"))
	globalflag.AddGlobalFlags(nfs.FlagSet("global"), "kube-controller-manager", logs.SkipLoggingConfigurationFlags())
	fs := pflag.NewFlagSet("kube-controller-manager", pflag.ContinueOnError)
	for _, f := range nfs.FlagSets {
		fs.AddFlagSet(f)
	}
	return s, fs, nil
}

// New parses upstream kube-controller-manager flags and builds its config,
// which includes connecting to the apiserver named by --kubeconfig.
func New(ctx context.Context, args []string) (*ControllerManager, error) {
	s, fs, err := FlagSet()
	if err != nil {
		return nil, err
	}
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("kube-controller-manager: %w", err)
	}
	if rest := fs.Args(); len(rest) > 0 {
		return nil, fmt.Errorf("kube-controller-manager: takes no arguments, got %q", rest)
	}
	restclient.SetDefaultWarningHandler(restclient.NoWarnings{})
	if err := s.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, fmt.Errorf("kube-controller-manager: %w", err)
	}
	c, err := s.Config(ctx, app.KnownControllers(), app.ControllersDisabledByDefault(), app.ControllerAliases())
	if err != nil {
		return nil, fmt.Errorf("kube-controller-manager: %w", err)
	}
	return &ControllerManager{config: c.Complete()}, nil
}

// Run runs the controllers until ctx is done.
func (c *ControllerManager) Run(ctx context.Context) error {
	return app.Run(ctx, c.config)
}

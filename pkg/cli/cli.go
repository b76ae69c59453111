// Package cli is harikube's command line. One binary serves several roles:
// `harikube server`, `harikube kubectl`, and, by the name it is called with,
// the upstream components' command lines.
package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/harikube/harikube/pkg/logging"
)

// Execute runs the command line and returns the process exit code.
func Execute(args []string) int {
	root := newRootCommand()
	switch filepath.Base(args[0]) {
	case "kubectl", roleAPIServer, roleControllerManager, roleKine:
		// Called through a symlink: the name is the subcommand.
		root.SetArgs(append([]string{filepath.Base(args[0])}, args[1:]...))
	default:
		root.SetArgs(args[1:])
	}
	if err := root.Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "harikube: %v\n", err)
		return 1
	}
	return 0
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "harikube",
		Short:         "A single-binary Kubernetes control plane with storage-side selector filtering",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())
	})
	root.AddCommand(newServerCommand(), newKubectlCommand(), newVersionCommand(), newDatastoreCommand(), newSnapshotCommand(), newBenchCommand())
	root.AddCommand(newComponentCommands()...)
	return root
}

// signalContext is cancelled by the first SIGINT or SIGTERM; a second one
// exits at once, for a shutdown that hangs.
func signalContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-ch
		logrus.Infof("Received %s, stopping (send it again to exit immediately)", sig)
		cancel()
		<-ch
		os.Exit(1)
	}()
	return ctx, cancel
}

// defaultDataDir follows k3s: a system path for root, the home directory
// otherwise.
func defaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/harikube"
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".harikube")
	}
	return ".harikube"
}

// componentArgs accepts k3s-style "name=value" as well as "--name=value".
func componentArgs(in []string) []string {
	out := make([]string, 0, len(in))
	for _, a := range in {
		if !strings.HasPrefix(a, "-") {
			a = "--" + a
		}
		out = append(out, a)
	}
	return out
}

func setupLogging(debug bool) { logging.Setup(debug) }

package cli

import (
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
)

func newKubectlCommand() *cobra.Command {
	return &cobra.Command{
		Use:                "kubectl",
		Short:              "Run kubectl against this machine's harikube server",
		DisableFlagParsing: true,
		RunE: func(_ *cobra.Command, args []string) error {
			// Like `k3s kubectl`: without a kubeconfig of its own, talk to
			// the local server as admin.
			if os.Getenv("KUBECONFIG") == "" {
				if path := filepath.Join(defaultDataDir(), "kubeconfig.yaml"); fileExists(path) {
					os.Setenv("KUBECONFIG", path)
				}
			}
			setupLogging(false)
			kubectl := kubectlcmd.NewDefaultKubectlCommand()
			kubectl.SetArgs(args)
			return kubectl.Execute()
		},
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

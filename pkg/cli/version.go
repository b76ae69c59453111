package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/harikube/harikube/pkg/version"
)

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the versions of harikube and its components",
		Args:  cobra.NoArgs,
		Run: func(c *cobra.Command, _ []string) {
			v := version.Get()
			fmt.Fprintf(c.OutOrStdout(), "harikube %s\nKubernetes %s\nKine %s\nSQLite %s\nGo %s\n", v.Harikube, v.Kubernetes, v.Kine, v.SQLite, v.Go)
		},
	}
}

package cli

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/harikube/harikube/pkg/datastore"
	"github.com/harikube/harikube/pkg/server"
)

func newDatastoreCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "datastore",
		Short: "Inspect a harikube datastore",
	}
	var dataDir string
	check := &cobra.Command{
		Use:   "check",
		Short: "Verify offline that the label and field index agrees with the stored objects",
		Long: "Verify offline that every stored object has its index entry, that no index entry " +
			"outlives its object, and that indexed labels, names and namespaces are those of the " +
			"stored value. The server must be stopped. Exits non-zero when a problem is found.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			path := datastore.DatabasePath(dataDir)
			if _, err := os.Stat(path); err != nil {
				return fmt.Errorf("no database at %s: %w; pass the server's --data-dir", path, err)
			}
			unlock, err := server.LockDataDir(dataDir)
			if err != nil {
				return fmt.Errorf("%w (the check needs the server stopped)", err)
			}
			defer unlock()
			report, err := datastore.CheckSQLite(context.Background(), path)
			if err != nil {
				return err
			}
			report.Write(c.OutOrStdout())
			if len(report.Problems) > 0 {
				return errors.New("index and data disagree")
			}
			return nil
		},
	}
	check.Flags().StringVarP(&dataDir, "data-dir", "d", defaultDataDir(), "the server's data directory")
	c.AddCommand(check)
	return c
}

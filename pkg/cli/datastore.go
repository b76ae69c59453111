package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/k3s-io/kine/pkg/tls"
	"github.com/spf13/cobra"

	"github.com/harikube/harikube/pkg/datastore"
	"github.com/harikube/harikube/pkg/server"
)

func newDatastoreCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "datastore",
		Short: "Inspect a harikube datastore",
	}
	var dataDir, endpoint string
	var tlsFiles server.DatastoreTLS
	check := &cobra.Command{
		Use:   "check",
		Short: "Verify offline that the label and field index agrees with the stored objects",
		Long: "Verify offline that every stored object has its index entry, that no index entry " +
			"outlives its object, and that indexed labels, names and namespaces are those of the " +
			"stored value. The server must be stopped. Exits non-zero when a problem is found. " +
			"Checks the data directory's SQLite database, or the database of --datastore-endpoint.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			report, err := runCheck(dataDir, endpoint, tlsFiles)
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
	check.Flags().StringVar(&endpoint, "datastore-endpoint", "", "the server's --datastore-endpoint, when not SQLite in the data directory")
	check.Flags().StringVar(&tlsFiles.CAFile, "datastore-cafile", "", "the server's --datastore-cafile")
	check.Flags().StringVar(&tlsFiles.CertFile, "datastore-certfile", "", "the server's --datastore-certfile")
	check.Flags().StringVar(&tlsFiles.KeyFile, "datastore-keyfile", "", "the server's --datastore-keyfile")
	c.AddCommand(check)
	return c
}

// runCheck checks the database of a stopped server: SQLite in dataDir (or
// at a sqlite:// endpoint), or PostgreSQL.
func runCheck(dataDir, endpoint string, t server.DatastoreTLS) (*datastore.CheckReport, error) {
	ctx := context.Background()
	scheme, dsn, _ := strings.Cut(endpoint, "://")
	path := datastore.DatabasePath(dataDir)
	switch scheme {
	case "postgres", "postgresql":
		// The database's writer lock keeps the server out while it runs.
		return datastore.CheckPostgres(ctx, dsn, tls.Config{CAFile: t.CAFile, CertFile: t.CertFile, KeyFile: t.KeyFile})
	case "sqlite":
		path, _, _ = strings.Cut(strings.TrimPrefix(dsn, "file:"), "?")
	case "":
	default:
		return nil, fmt.Errorf("datastore endpoint scheme %q is not supported: use sqlite://<path> or postgres://<user>:<password>@<host>/<database>", scheme)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("no database at %s: %w; pass the server's --data-dir (and --datastore-endpoint)", path, err)
	}
	unlock, err := server.LockDataDir(dataDir)
	if err != nil {
		return nil, fmt.Errorf("%w (the check needs the server stopped)", err)
	}
	defer unlock()
	return datastore.CheckSQLite(ctx, path)
}

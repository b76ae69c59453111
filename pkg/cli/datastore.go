package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
	var dataDir, endpoint, kubeconfig string
	var tlsFiles server.DatastoreTLS
	var overrides []server.DatastoreOverride
	var only string
	check := &cobra.Command{
		Use:   "check",
		Short: "Verify that the label and field index agrees with the stored objects",
		Long: "Verify that every stored object has its index entry, that no index entry outlives " +
			"its object, and that the indexed values are those of the stored value. With the server " +
			"running, the check asks it (through its API, as cluster-admin) to recompute every indexed " +
			"label and selectable field with the resource's current definition. With the server " +
			"stopped, it reads the database itself and compares labels, names and namespaces. " +
			"Exits non-zero when a problem is found. Checks the data directory's SQLite database, " +
			"or the database of --datastore-endpoint.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if len(overrides) > 0 || only != "" {
				return checkDatastores(c, dataDir, endpoint, kubeconfig, tlsFiles, overrides, only)
			}
			report, err := runCheck(c.Context(), dataDir, endpoint, kubeconfig, "", tlsFiles)
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
	check.Flags().StringVar(&kubeconfig, "kubeconfig", "", "a cluster-admin kubeconfig of the running server (default: <data-dir>/kubeconfig.yaml, then $KUBECONFIG)")
	check.Flags().Var(overridesFlag{&overrides}, "datastore-override", "the server's --datastore-override flags (repeatable): their datastores are checked too")
	check.Flags().StringVar(&only, "datastore", "", "check this datastore only: default, or the name the server logs for one of --datastore-override (e.g. events)")
	c.AddCommand(check)
	return c
}

// checkDatastores checks each datastore of a server's flags, or the one
// named, and reports each under its name.
func checkDatastores(c *cobra.Command, dataDir, endpoint, kubeconfig string, t server.DatastoreTLS, overrides []server.DatastoreOverride, only string) error {
	stores, err := server.Datastores(dataDir, endpoint, overrides)
	if err != nil {
		return err
	}
	var chosen []server.NamedDatastore
	var names []string
	for _, s := range stores {
		names = append(names, s.Name)
		if only == "" || only == s.Name {
			chosen = append(chosen, s)
		}
	}
	if len(chosen) == 0 {
		return fmt.Errorf("--datastore %q: no such datastore; the flags give %s", only, strings.Join(names, ", "))
	}
	failed := false
	for _, s := range chosen {
		report, err := runCheck(c.Context(), dataDir, s.Endpoint, kubeconfig, s.Name, t)
		if err != nil {
			return fmt.Errorf("datastore %s: %w", s.Name, err)
		}
		fmt.Fprintf(c.OutOrStdout(), "datastore %s: ", s.Name)
		report.Write(c.OutOrStdout())
		failed = failed || len(report.Problems) > 0
	}
	if failed {
		return errors.New("index and data disagree")
	}
	return nil
}

// runCheck checks a server's database: offline when the server is stopped,
// through the server when it runs.
func runCheck(ctx context.Context, dataDir, endpoint, kubeconfig, name string, t server.DatastoreTLS) (*datastore.CheckReport, error) {
	scheme, dsn, _ := strings.Cut(endpoint, "://")
	path := datastore.DatabasePath(dataDir)
	switch scheme {
	case "postgres", "postgresql":
		// The database's writer lock tells whether a server runs on it.
		report, err := datastore.CheckPostgres(ctx, dsn, tls.Config{CAFile: t.CAFile, CertFile: t.CertFile, KeyFile: t.KeyFile})
		if errors.Is(err, datastore.ErrInUse) {
			return checkOnline(ctx, checkKubeconfig(dataDir, kubeconfig), name)
		}
		return report, err
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
	if errors.Is(err, datastore.ErrInUse) {
		return checkOnline(ctx, checkKubeconfig(dataDir, kubeconfig), name)
	}
	if err != nil {
		return nil, err
	}
	defer unlock()
	return datastore.CheckSQLite(ctx, path)
}

// checkKubeconfig picks the kubeconfig of the running server: the flag, the
// data directory's admin kubeconfig, then $KUBECONFIG.
func checkKubeconfig(dataDir, flag string) string {
	if flag != "" {
		return flag
	}
	if path := filepath.Join(dataDir, "kubeconfig.yaml"); fileExists(path) {
		return path
	}
	return os.Getenv("KUBECONFIG")
}

package cli

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/harikube/harikube/pkg/datastore"
	"github.com/harikube/harikube/pkg/server"
	"github.com/harikube/harikube/pkg/snapshot"
)

func newSnapshotCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "snapshot",
		Short: "Save, list, prune and restore snapshots of the SQLite datastore",
	}
	c.AddCommand(newSnapshotSaveCommand(), newSnapshotLsCommand(), newSnapshotPruneCommand(), newSnapshotRestoreCommand())
	return c
}

// snapshotDir is where snapshots of a data directory go by default.
func snapshotDir(dataDir, dir string) string {
	if dir != "" {
		return dir
	}
	return filepath.Join(dataDir, "snapshots")
}

func encryptionConfigPath(dataDir string) string {
	return filepath.Join(dataDir, "cred", "encryption-config.yaml")
}

func newSnapshotSaveCommand() *cobra.Command {
	var dataDir, name, dir, endpoint string
	c := &cobra.Command{
		Use:   "save",
		Short: "Write a consistent snapshot of the datastore; the server may be running and taking writes",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			db, err := sqliteDatabase(dataDir, endpoint)
			if err != nil {
				return err
			}
			info, err := snapshot.Save(context.Background(), snapshot.SaveOptions{
				Database:         db,
				EncryptionConfig: encryptionConfigPath(dataDir),
				Dir:              snapshotDir(dataDir, dir),
				Name:             name,
			})
			if err != nil {
				return err
			}
			w := c.OutOrStdout()
			fmt.Fprintf(w, "Snapshot: %s\n", info.Path)
			fmt.Fprintf(w, "Size: %d bytes (%s)\n", info.Size, humanBytes(info.Size))
			fmt.Fprintf(w, "Revision: %d\n", info.Revision)
			if info.EncryptedValues > 0 {
				fmt.Fprintf(w, "Encrypted values: %d (restoring needs %s)\n", info.EncryptedValues, encryptionConfigPath(dataDir))
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVarP(&dataDir, "data-dir", "d", defaultDataDir(), "the server's data directory")
	f.StringVar(&name, "name", "on-demand", "name prefix of the snapshot file (<name>-<UTC time>.db)")
	f.StringVar(&dir, "dir", "", "directory for the snapshot (default <data-dir>/snapshots)")
	f.StringVar(&endpoint, "datastore-endpoint", "", "the server's --datastore-endpoint, if it set one")
	return c
}

// sqliteDatabase is the SQLite file behind a data directory and optional
// endpoint; for PostgreSQL it says how to back that up instead.
func sqliteDatabase(dataDir, endpoint string) (string, error) {
	if endpoint == "" {
		return datastore.DatabasePath(dataDir), nil
	}
	scheme, rest, ok := strings.Cut(endpoint, "://")
	switch {
	case ok && scheme == "sqlite":
		path, query, _ := strings.Cut(rest, "?")
		path = strings.TrimPrefix(path, "file:")
		if path == "" || path == ":memory:" || strings.Contains(query, "mode=memory") {
			return "", fmt.Errorf("datastore endpoint %q: snapshots need the database file the server uses, e.g. sqlite:///var/lib/harikube/db/state.db", endpoint)
		}
		return path, nil
	case ok && (scheme == "postgres" || scheme == "postgresql"):
		database := "kubernetes"
		if u, err := url.Parse(endpoint); err == nil && strings.Trim(u.Path, "/") != "" {
			database = strings.Trim(u.Path, "/")
		}
		return "", fmt.Errorf("the datastore is PostgreSQL: harikube snapshots are for SQLite. Back up the database %q with PostgreSQL's own tools, "+
			"e.g. 'pg_dump --format=custom --dbname=%s --file=harikube.dump' (consistent while the server runs), and restore with "+
			"'pg_restore --clean --if-exists --dbname=... harikube.dump' while the server is stopped (README: Backups)", database, redactedURL(endpoint))
	}
	return "", fmt.Errorf("datastore endpoint %q: snapshots are taken of sqlite:// datastores", redactedURL(endpoint))
}

func redactedURL(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		return u.Redacted()
	}
	return s
}

func newSnapshotLsCommand() *cobra.Command {
	var dataDir, dir string
	c := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the snapshots in the snapshot directory, oldest first",
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			list, err := snapshot.List(context.Background(), snapshotDir(dataDir, dir))
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tPATH\tSIZE\tREVISION\tCREATED\tENCRYPTED VALUES")
			for _, s := range list {
				fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\t%d\n", s.Name, s.Path, s.Size, s.Revision, s.Created.Format(time.RFC3339), s.EncryptedValues)
			}
			return w.Flush()
		},
	}
	c.Flags().StringVarP(&dataDir, "data-dir", "d", defaultDataDir(), "the server's data directory")
	c.Flags().StringVar(&dir, "dir", "", "snapshot directory (default <data-dir>/snapshots)")
	return c
}

func newSnapshotPruneCommand() *cobra.Command {
	var dataDir, dir, name string
	var retain int
	c := &cobra.Command{
		Use:   "prune",
		Short: "Delete all but the newest --retain snapshots of one --name",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			removed, err := snapshot.Prune(context.Background(), snapshotDir(dataDir, dir), name, retain)
			for _, p := range removed {
				fmt.Fprintf(c.OutOrStdout(), "Deleted %s\n", p)
			}
			return err
		},
	}
	f := c.Flags()
	f.StringVarP(&dataDir, "data-dir", "d", defaultDataDir(), "the server's data directory")
	f.StringVar(&dir, "dir", "", "snapshot directory (default <data-dir>/snapshots)")
	f.StringVar(&name, "name", "on-demand", "prune the snapshots saved under this name ('scheduled' for the server's)")
	f.IntVar(&retain, "retain", 5, "how many of the newest snapshots to keep")
	return c
}

func newSnapshotRestoreCommand() *cobra.Command {
	var dataDir, endpoint string
	var bump int64
	c := &cobra.Command{
		Use:   "restore FILE",
		Short: "Make a snapshot the datastore of a stopped server; the current database is kept aside",
		Long: "Make a snapshot the datastore of a stopped server. The snapshot is checked first (a harikube " +
			"snapshot, complete, intact, and its encrypted values' key present in <data-dir>/cred); the current " +
			"database (db/state.db, or the file of --datastore-endpoint sqlite://...) is renamed to <file>.pre-restore-<time>, never deleted. The restored datastore's " +
			"revision is moved past every revision the old server may have handed out and the history before it " +
			"is compacted, so clients holding a newer resourceVersion get 410 Gone and relist.",
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			database, err := sqliteDatabase(dataDir, endpoint)
			if err != nil {
				return err
			}
			if endpoint != "" {
				// The data directory's lock is all that keeps restore from
				// replacing a running server's database: it must be that
				// server's directory, not a default created here.
				if !c.Flags().Changed("data-dir") {
					return errors.New("--datastore-endpoint: pass the server's --data-dir too; restore takes its lock so that it cannot replace the database of a running server")
				}
				if _, err := os.Stat(dataDir); err != nil {
					return fmt.Errorf("--data-dir %s: %w; with --datastore-endpoint, name the data directory of the server that uses %s", dataDir, err, database)
				}
			}
			if err := os.MkdirAll(dataDir, 0o700); err != nil {
				return fmt.Errorf("create data directory %s: %w", dataDir, err)
			}
			unlock, err := server.LockDataDir(dataDir)
			if err != nil {
				return fmt.Errorf("%w (restore needs the server stopped)", err)
			}
			defer unlock()
			res, err := snapshot.Restore(context.Background(), snapshot.RestoreOptions{
				Snapshot:         args[0],
				Database:         database,
				EncryptionConfig: encryptionConfigPath(dataDir),
				BumpRevision:     bump,
			})
			if err != nil {
				return fmt.Errorf("%w; nothing was changed", err)
			}
			w := c.OutOrStdout()
			fmt.Fprintf(w, "Restored %s (revision %d) into %s\n", res.Snapshot.Path, res.Snapshot.Revision, database)
			fmt.Fprintf(w, "Revision: %d (older revisions are compacted)\n", res.Revision)
			for _, p := range res.KeptAside {
				fmt.Fprintf(w, "Kept aside: %s\n", p)
			}
			if endpoint != "" {
				fmt.Fprintf(w, "Start the server with --data-dir %s --datastore-endpoint %s\n", dataDir, redactedURL(endpoint))
			} else {
				fmt.Fprintf(w, "Start the server with --data-dir %s\n", dataDir)
			}
			return nil
		},
	}
	c.Flags().StringVarP(&dataDir, "data-dir", "d", defaultDataDir(), "the data directory of the stopped server")
	c.Flags().StringVar(&endpoint, "datastore-endpoint", "", "the server's --datastore-endpoint, if it set one (a sqlite:// file)")
	c.Flags().Int64Var(&bump, "bump-revision", snapshot.DefaultBumpRevision, "start the restored revision this far past the newest known one (as etcdutl's --bump-revision with --mark-compacted)")
	return c
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// cronFlag is a --snapshot-schedule value, checked when the flag is parsed.
type cronFlag struct{ spec *string }

func (f cronFlag) String() string {
	if f.spec == nil {
		return ""
	}
	return *f.spec
}

func (f cronFlag) Set(s string) error {
	if _, err := snapshot.ParseSchedule(s); err != nil {
		return err
	}
	*f.spec = s
	return nil
}

func (cronFlag) Type() string { return "cron" }

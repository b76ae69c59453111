// Package datastore runs Kine in-process with harikube's indexing driver: a
// Kine backend over SQL whose rows carry label and field indexes, so the
// selections the apiserver attaches to LIST, COUNT and WATCH requests are
// answered in SQL.
package datastore

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/k3s-io/kine/pkg/app"
	"github.com/k3s-io/kine/pkg/drivers"
	"github.com/k3s-io/kine/pkg/drivers/generic"
	"github.com/k3s-io/kine/pkg/drivers/sqlite"
	"github.com/k3s-io/kine/pkg/endpoint"
	"github.com/k3s-io/kine/pkg/logstructured"
	"github.com/k3s-io/kine/pkg/logstructured/sqllog"
	"github.com/k3s-io/kine/pkg/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/harikube/harikube/pkg/index"
	"github.com/harikube/harikube/pkg/selectorsql"
)

// Kine driver schemes of the indexing driver. Users keep writing sqlite://
// (Options.Endpoint); the translation keeps kine's own "sqlite" driver
// available as the unindexed baseline.
const schemeSQLite = "harikube-sqlite"

func init() {
	drivers.Register(schemeSQLite, newSQLite)
}

// Options configure a datastore.
type Options struct {
	// DataDir holds the socket (kine.sock) and the default SQLite database
	// (db/state.db).
	DataDir string
	// Endpoint is a Kine datastore DSN; empty means SQLite in DataDir.
	Endpoint string
	// Listener overrides where the etcd API is served (unix://path or
	// host:port); empty means unix://<DataDir>/kine.sock.
	Listener string
	// Registry supplies per-resource extractors; nil indexes metadata only.
	Registry *index.Registry
	// Unindexed runs Kine's stock driver, without index tables or
	// pushdown: the baseline the benchmark compares against.
	Unindexed bool
	// MetricsRegisterer receives Kine's and the index's metrics.
	MetricsRegisterer prometheus.Registerer
	// Name tells this datastore's metrics (their datastore label) and
	// messages from other datastores of the process; "" is "default".
	Name string
	// KineArgs are Kine command-line flags (--compact-interval=..., ...)
	// applied over Kine's defaults.
	KineArgs []string
}

// Datastore is a running Kine server.
type Datastore struct {
	// Endpoint is what the apiserver passes as --etcd-servers.
	Endpoint string
	// DatabasePath is the SQLite file, when the datastore is SQLite.
	DatabasePath string
	// Name is Options.Name, or "default".
	Name    string
	backend *backend // nil for the unindexed baseline
	wg      *sync.WaitGroup
	checker *checker   // nil for the stock driver
	failed  chan error // nil for the stock driver
}

// SocketPath is where the etcd API is served for a data directory.
func SocketPath(dataDir string) string { return filepath.Join(dataDir, "kine.sock") }

// DatabasePath is the default SQLite database of a data directory.
func DatabasePath(dataDir string) string { return filepath.Join(dataDir, "db", "state.db") }

// Start serves the etcd API until ctx is cancelled; Wait then blocks until
// the database is closed.
func Start(ctx context.Context, opts Options) (*Datastore, error) {
	cfg := app.Config(opts.KineArgs)
	name := opts.Name
	if name == "" {
		name = "default"
	}
	cfg.MetricsRegisterer = opts.MetricsRegisterer
	wg := &sync.WaitGroup{}
	cfg.WaitGroup = wg
	cfg.Listener = opts.Listener
	if cfg.Listener == "" {
		cfg.Listener = "unix://" + SocketPath(opts.DataDir)
	}
	if path, ok := strings.CutPrefix(cfg.Listener, "unix://"); ok {
		if err := checkSocketPath(path); err != nil {
			return nil, err
		}
	}
	ds := &Datastore{wg: wg, Name: name}

	ep := opts.Endpoint
	if ep == "" {
		path := DatabasePath(opts.DataDir)
		if err := prepareSQLiteFile(ctx, path); err != nil {
			return nil, err
		}
		ds.DatabasePath = path
		ep = "sqlite://" + path + "?" + sqlite.DefaultParams + walSizeLimit
	}
	scheme, dsn, ok := strings.Cut(ep, "://")
	if !ok {
		return nil, fmt.Errorf("datastore endpoint %q: want <scheme>://<address>, e.g. sqlite:///var/lib/harikube/db/state.db", redact(ep))
	}
	switch scheme {
	case "sqlite":
		if path := sqliteFilePath(dsn); path != "" && ds.DatabasePath == "" {
			if err := prepareSQLiteFile(ctx, path); err != nil {
				return nil, err
			}
			ds.DatabasePath = path
			if !strings.Contains(dsn, "?") {
				// A file named without parameters gets the default
				// database's: WAL, a busy timeout, immediate transactions.
				dsn += "?" + sqlite.DefaultParams + walSizeLimit
			}
		}
		if !opts.Unindexed {
			if ds.DatabasePath != "" {
				ds.checker = &checker{src: sqliteCheckSource(ds.DatabasePath), registry: opts.Registry}
			}
			scheme = schemeSQLite
		}
	case "postgres", "postgresql":
		if !opts.Unindexed {
			ds.checker = &checker{src: postgresCheckSource(dsn, cfg.BackendTLSConfig), registry: opts.Registry}
			scheme = schemePostgres
		}
	default:
		return nil, fmt.Errorf("datastore endpoint scheme %q is not supported: use sqlite://<path> or postgres://<user>:<password>@<host>/<database>", scheme)
	}
	cfg.Endpoint = scheme + "://" + dsn
	var w *wiring
	if !opts.Unindexed {
		w = &wiring{shared: opts.MetricsRegisterer, registry: opts.Registry, metrics: newMetrics(), failed: make(chan error, 1)}
		ds.failed = w.failed
		if opts.MetricsRegisterer != nil {
			w.labelled = prometheus.WrapRegistererWith(prometheus.Labels{"datastore": name}, opts.MetricsRegisterer)
		}
		if err := w.metrics.register(w.labelled); err != nil {
			return nil, fmt.Errorf("register datastore metrics: %w", err)
		}
		cfg.MetricsRegisterer = w
	}

	etcd, err := endpoint.Listen(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("start datastore: %w", err)
	}
	ds.Endpoint = strings.Join(etcd.Endpoints, ",")
	if w != nil {
		ds.backend = w.built
	}
	if ds.checker != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-ctx.Done()
			ds.checker.close()
		}()
	}
	return ds, nil
}

// walSizeLimit makes SQLite truncate the write-ahead log to 4 MiB (its
// auto-checkpoint size) whenever a checkpoint lets it start over. Without it
// the -wal file keeps the size of the largest write burst since the start:
// under sustained churn it grew in steps past the database itself, whatever
// compaction removed.
const walSizeLimit = "&_pragma=journal_size_limit(4194304)"

// Wait blocks until the datastore has shut down after its context ended.
func (d *Datastore) Wait() { d.wg.Wait() }

// Failed delivers the reason, should the datastore stop being safe to
// write to while it runs (another harikube took its PostgreSQL database);
// the process should then stop.
func (d *Datastore) Failed() <-chan error { return d.failed }

// prepareSQLiteFile creates the database directory and file with owner-only
// permissions (SQLite gives its -wal and -shm files the same mode), and
// refuses an existing file that is not a usable SQLite database.
func prepareSQLiteFile(ctx context.Context, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create database directory %s: %w", filepath.Dir(path), err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open database %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("open database %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		return fmt.Errorf("restrict database %s: %w", path, err)
	}
	return checkSQLiteFile(ctx, path)
}

// sqliteFilePath is the database file of a sqlite:// endpoint's DSN, or ""
// when it names none (Kine's default, or an in-memory database).
func sqliteFilePath(dsn string) string {
	path, query, _ := strings.Cut(dsn, "?")
	path = strings.TrimPrefix(path, "file:")
	if path == ":memory:" || strings.Contains(query, "mode=memory") {
		return ""
	}
	return path
}

func addParam(dsn, key, value string) string {
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	return dsn + sep + key + "=" + url.QueryEscape(value)
}

// redact hides credentials in a DSN shown to the user.
func redact(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		return u.Redacted()
	}
	return dsn
}

func newSQLite(ctx context.Context, wg *sync.WaitGroup, cfg *drivers.Config) (bool, server.Backend, error) {
	w, err := wiringOf(cfg)
	if err != nil {
		return false, nil, err
	}
	cfg.DataSourceName = addParam(cfg.DataSourceName, "_pragma", "temp_store(memory)")
	_, g, err := sqlite.NewVariant(ctx, wg, "sqlite3", cfg)
	if err != nil {
		return false, nil, err
	}
	b, err := newIndexedBackend(ctx, wg, cfg, g, w, database{schema: selectorsql.SQLiteSchema(), param: "?", prepareGrouped: true})
	return false, b, err
}

// database describes what differs between the databases the index runs on.
type database struct {
	schema []string
	// param is the placeholder prefix; numbered databases take $1, $2, ….
	param    string
	numbered bool
	// prepareGrouped prepares the statements of grouped writes once per
	// group: modernc.org/sqlite parses every unprepared statement again,
	// while pgx keeps its own cache of prepared statements.
	prepareGrouped bool
}

// newIndexedBackend puts the index beside kine's tables of an opened
// database and returns the backend kine's gRPC server will serve.
func newIndexedBackend(ctx context.Context, wg *sync.WaitGroup, cfg *drivers.Config, g *generic.Generic, w *wiring, db database) (server.Backend, error) {
	if err := addSupersededColumn(ctx, g.DB); err != nil {
		return nil, fmt.Errorf("create index schema: %w", err)
	}
	for _, stmt := range append(db.schema, coverageSchema, routesSchema) {
		if _, err := g.DB.ExecContext(ctx, stmt); err != nil {
			return nil, fmt.Errorf("create index schema: %w", err)
		}
	}
	if err := migrateCoverage(ctx, g.DB); err != nil {
		return nil, fmt.Errorf("create index schema: %w", err)
	}
	// Writes commit one at a time, in revision order. SQLite has one writer
	// anyway; on PostgreSQL a revision committed after a higher one is lost
	// to a watch that started in between (kine starts a watch after the
	// highest revision committed), which a gate per database prevents now
	// that one harikube owns each database.
	gate := newWriteGate()
	idx := newIndexer(w.registry, g.DB, gate, db.param, db.numbered)
	if err := idx.loadCoverage(ctx); err != nil {
		return nil, err
	}
	if err := idx.backfill(ctx); err != nil {
		return nil, fmt.Errorf("index existing rows: %w", err)
	}
	idx.registry.Watch(func(res index.Resource) { idx.register(ctx, res) })
	go func() {
		if err := idx.markSuperseded(ctx); err != nil && ctx.Err() == nil {
			logrus.Warnf("Index rows from before this version stay unmarked (reads visit their history) until the next start: %v", err)
		}
	}()
	d := &dialect{Generic: g, idx: idx, gate: gate, param: db.param, numbered: db.numbered, prepareGrouped: db.prepareGrouped}
	log := sqllog.New(d, wg, cfg)
	w.built = &backend{Backend: logstructured.New(log), log: log, committed: &d.committed, idx: idx, cache: newEntryCache(), metrics: w.metrics, pages: newPageCounts()}
	return w.built, nil
}

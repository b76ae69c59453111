package datastore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/k3s-io/kine/pkg/drivers"
	"github.com/k3s-io/kine/pkg/drivers/generic"
	"github.com/k3s-io/kine/pkg/query"
	"github.com/k3s-io/kine/pkg/server"
	"github.com/k3s-io/kine/pkg/tls"
	"github.com/sirupsen/logrus"

	"github.com/harikube/harikube/pkg/selectorsql"
)

const schemePostgres = "harikube-postgres"

func init() {
	drivers.Register(schemePostgres, newPostgres)
}

// postgresKineSchema is kine's table layout, so a database can move
// between kine's own PostgreSQL driver and this one.
var postgresKineSchema = []string{
	`CREATE TABLE IF NOT EXISTS kine (
		id BIGSERIAL PRIMARY KEY,
		name TEXT COLLATE "C",
		created INTEGER,
		deleted INTEGER,
		create_revision BIGINT,
		prev_revision BIGINT,
		lease INTEGER,
		value BYTEA,
		old_value BYTEA)`,
	`CREATE INDEX IF NOT EXISTS kine_name_index ON kine (name)`,
	`CREATE INDEX IF NOT EXISTS kine_name_id_index ON kine (name, id)`,
	`CREATE INDEX IF NOT EXISTS kine_id_deleted_index ON kine (id, deleted)`,
	`CREATE INDEX IF NOT EXISTS kine_prev_revision_index ON kine (prev_revision)`,
	`CREATE UNIQUE INDEX IF NOT EXISTS kine_name_prev_revision_uindex ON kine (name, prev_revision)`,
	`CREATE INDEX IF NOT EXISTS kine_list_query_index ON kine (name, id DESC, deleted)`,
}

// newPostgres is the indexing driver on PostgreSQL (and PostgreSQL-protocol
// databases). The DSN is a libpq URL without its scheme; the database is
// created when missing.
func newPostgres(ctx context.Context, wg *sync.WaitGroup, cfg *drivers.Config) (bool, server.Backend, error) {
	w, err := wiringOf(cfg)
	if err != nil {
		return false, nil, err
	}
	dsn := cfg.DataSourceName
	connConfig, err := postgresConfig(dsn, cfg.BackendTLSConfig)
	if err != nil {
		return false, nil, err
	}
	// pgx prepares and caches statements; after a few runs PostgreSQL
	// switches them to a generic plan that ignores the selector values and
	// scans. Selective reads need plans made for their values.
	if _, set := connConfig.RuntimeParams["plan_cache_mode"]; !set {
		connConfig.RuntimeParams["plan_cache_mode"] = "force_custom_plan"
	}
	// A selective read whose value many index rows once had is estimated
	// costly enough for JIT compilation, which took 10-15 ms here for a
	// read that runs in well under one.
	if _, set := connConfig.RuntimeParams["jit"]; !set {
		connConfig.RuntimeParams["jit"] = "off"
	}
	if err := createDatabase(ctx, connConfig); err != nil {
		return false, nil, err
	}
	if err := holdWriterLock(ctx, wg, connConfig, w.fail); err != nil {
		return false, nil, err
	}
	g, err := generic.OpenDB(ctx, wg, "pgx", stdlib.GetConnector(*connConfig), cfg.ConnectionPoolConfig, "$", true, cfg.MetricsRegisterer)
	if err != nil {
		return false, nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	g.GetSizeSQL = query.New(`SELECT pg_total_relation_size('kine') + pg_total_relation_size('`+selectorsql.IndexTable+`') + pg_total_relation_size('`+selectorsql.RowsTable+`')`, "$", true, "GetSize")
	g.CompactSQL = query.New(`DELETE FROM kine AS kv USING (
			SELECT kp.prev_revision AS id FROM kine AS kp
			WHERE kp.name != 'compact_rev_key' AND kp.prev_revision != 0 AND kp.id > ? AND kp.id <= ?
			UNION ALL
			SELECT kd.id AS id FROM kine AS kd
			WHERE kd.deleted != 0 AND kd.id > ? AND kd.id <= ?) AS ks
		WHERE kv.id = ks.id`, "$", true, "Compact")
	g.FillRetryDuration = 5 * time.Millisecond
	g.InsertRetry = func(err error) bool {
		var pgErr *pgconn.PgError
		return errors.As(err, &pgErr) && pgErr.Code == pgerrcode.UniqueViolation && pgErr.ConstraintName == "kine_pkey"
	}
	g.TranslateErr = func(err error) error {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == pgerrcode.UniqueViolation {
			return server.ErrKeyExists
		}
		return err
	}
	g.ErrCode = func(err error) string {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return pgErr.Code
		}
		if err == nil {
			return ""
		}
		return err.Error()
	}
	// PostgreSQL text cannot hold NUL: a range start "key\x00" becomes
	// "key\x1a", which sorts the same against real keys.
	g.TranslateStartKeyFunc = func(startKey string) string {
		if s, ok := strings.CutSuffix(startKey, "\x00"); ok {
			return s + "\x1a"
		}
		return startKey
	}
	if err := checkServerVersion(ctx, g.DB, connConfig.Database); err != nil {
		return false, nil, err
	}
	for _, stmt := range postgresKineSchema {
		if _, err := g.DB.ExecContext(ctx, stmt); err != nil {
			return false, nil, fmt.Errorf("create kine schema: %w", err)
		}
	}
	b, err := newIndexedBackend(ctx, wg, cfg, g, w, database{schema: selectorsql.PostgresSchema(), param: "$", numbered: true})
	if err == nil {
		go keepStatistics(ctx, g.DB)
	}
	return true, b, err
}

// postgresConfig parses a PostgreSQL DSN (a libpq URL without its scheme)
// with Kine's TLS options applied as Kine's own PostgreSQL driver applies
// them: a CA, certificate or key file becomes sslrootcert, sslcert or sslkey
// and sslmode=verify-full, unless the URL sets them itself. --skip-verify,
// which Kine ignores for PostgreSQL, makes it sslmode=require (encrypted, the
// server's certificate not checked).
func postgresConfig(dsn string, t tls.Config) (*pgx.ConnConfig, error) {
	u, err := url.Parse("postgres://" + dsn)
	if err != nil {
		return nil, fmt.Errorf("parse PostgreSQL endpoint: %w", redactErr(err))
	}
	q := u.Query()
	sslmode := ""
	for param, file := range map[string]string{"sslrootcert": t.CAFile, "sslcert": t.CertFile, "sslkey": t.KeyFile} {
		if file == "" || q.Has(param) {
			continue
		}
		if param == "sslrootcert" && t.SkipVerify {
			continue
		}
		q.Set(param, file)
		sslmode = "verify-full"
	}
	if t.SkipVerify {
		sslmode = "require"
	}
	if sslmode != "" && !q.Has("sslmode") {
		q.Set("sslmode", sslmode)
	}
	u.RawQuery = q.Encode()
	c, err := pgx.ParseConfig(u.String())
	if err != nil {
		return nil, fmt.Errorf("parse PostgreSQL endpoint: %w", err)
	}
	if c.Database == "" {
		c.Database = "kubernetes"
	}
	return c, nil
}

// redactErr drops the URL, which may hold a password, from a url.Parse error.
func redactErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// WriterLockKey is the session-level advisory lock a harikube datastore holds
// on its PostgreSQL database ("harikube" in ASCII).
const WriterLockKey = 0x68617269_6b756265

// WriterLockApp names the lock's connection in pg_stat_activity.
const WriterLockApp = "harikube datastore lock"

// holdWriterLock takes the database's writer lock on a connection of its
// own and keeps it until ctx ends. A second harikube on the same database
// is refused: it would write rows the first one's index and coverage do not
// know about, and both would compact and re-index the same rows. taken, if
// not nil, is told when another harikube took the lock while this one's
// session was lost.
func holdWriterLock(ctx context.Context, wg *sync.WaitGroup, c *pgx.ConnConfig, taken func(error)) error {
	conn, err := takeWriterLock(ctx, c)
	if err != nil {
		return err
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		watchWriterLock(ctx, conn, c, taken)
	}()
	return nil
}

// takeWriterLock connects and takes the lock; a *lockHeldError says who
// holds it instead.
func takeWriterLock(ctx context.Context, c *pgx.ConnConfig) (*pgx.Conn, error) {
	lc := c.Copy()
	lc.RuntimeParams["application_name"] = WriterLockApp
	conn, err := pgx.ConnectConfig(ctx, lc)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL database %q: %w", c.Database, err)
	}
	var locked bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", int64(WriterLockKey)).Scan(&locked); err != nil {
		conn.Close(ctx)
		return nil, fmt.Errorf("lock PostgreSQL database %q: %w", c.Database, err)
	}
	if !locked {
		held := &lockHeldError{database: c.Database}
		held.holder, held.pid = lockHolder(ctx, conn)
		conn.Close(ctx)
		return nil, held
	}
	return conn, nil
}

// lockHeldError: another session holds the writer lock.
type lockHeldError struct {
	database, holder string // holder describes the session, or is empty
	pid              uint32 // the holder's backend, 0 when unknown
}

func (e *lockHeldError) Error() string {
	return fmt.Sprintf("PostgreSQL database %q is in use by another harikube datastore%s: "+
		"one server writes to a database at a time. Stop the other server, or give this one "+
		"another database in its endpoint (e.g. postgres://…/%s-2)", e.database, e.holder, e.database)
}

func (e *lockHeldError) Is(target error) bool { return target == ErrInUse }

// lockHolder describes the session holding the writer lock, for the error.
func lockHolder(ctx context.Context, conn *pgx.Conn) (string, uint32) {
	var pid int32
	var addr, started string
	err := conn.QueryRow(ctx, `SELECT a.pid, COALESCE(host(a.client_addr), 'local socket'), to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ')
		FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND l.classid = $1 AND l.objid = $2 AND l.objsubid = 1 LIMIT 1`,
		int64(WriterLockKey>>32), int64(WriterLockKey&0xffffffff)).Scan(&pid, &addr, &started)
	if err != nil {
		return "", 0
	}
	return fmt.Sprintf(" (connected from %s since %s, PostgreSQL backend pid %d)", addr, started, pid), uint32(pid)
}

// writerLockCheckInterval is how often the lock's session is checked, and
// how often the lock is tried again once it is lost; each try is bounded by
// it too, so an unanswered connection does not hold the checks up.
const writerLockCheckInterval = 5 * time.Second

// watchWriterLock keeps the lock's connection until ctx ends. A session
// lost with the database (PostgreSQL restarted or failed over, the session
// was terminated) takes its lock with it; the lock is taken again once the
// database answers. If another harikube took it meanwhile, taken is told,
// since two servers must not write one database.
func watchWriterLock(ctx context.Context, conn *pgx.Conn, c *pgx.ConnConfig, taken func(error)) {
	defer func() {
		if conn == nil {
			return
		}
		// Unlock before closing: the server drops a closed session's locks
		// only when its backend has exited, which a start or check right
		// after this one could otherwise beat.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_, _ = conn.Exec(ctx, "SELECT pg_advisory_unlock($1)", int64(WriterLockKey))
		conn.Close(ctx)
	}()
	var lostAt time.Time
	var lostPID uint32 // the backend of the lost session
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(writerLockCheckInterval):
		}
		if conn != nil {
			pingCtx, cancel := context.WithTimeout(ctx, writerLockCheckInterval)
			err := conn.Ping(pingCtx)
			cancel()
			if err == nil || ctx.Err() != nil {
				continue
			}
			logrus.Warnf("Lost the writer lock on PostgreSQL database %q with its session (%v): taking it again when the database answers", c.Database, err)
			lostPID = conn.PgConn().PID()
			closeCtx, cancel := context.WithTimeout(ctx, time.Second)
			conn.Close(closeCtx)
			cancel()
			conn, lostAt = nil, time.Now()
		}
		tryCtx, cancel := context.WithTimeout(ctx, writerLockCheckInterval)
		next, err := takeWriterLock(tryCtx, c)
		var held *lockHeldError
		switch {
		case err == nil:
			conn = next
			logrus.Infof("Took the writer lock on PostgreSQL database %q again, %s after losing it", c.Database, time.Since(lostAt).Round(time.Second))
		case errors.As(err, &held) && held.pid != 0 && held.pid == lostPID:
			// The lost session is still there (it stopped answering
			// without closing): end it, and take the lock at the next try.
			endSession(tryCtx, c, lostPID)
		case errors.As(err, &held):
			err = fmt.Errorf("lost the writer lock on PostgreSQL database %q with its session, and another harikube datastore took it%s: "+
				"both may have written to it. Stop one of the two servers, and run `harikube datastore check` on the database before starting again", c.Database, held.holder)
			cancel()
			if taken == nil {
				logrus.Error(err)
			} else {
				taken(err)
			}
			return
		case ctx.Err() == nil:
			logrus.Debugf("Writer lock on PostgreSQL database %q not taken yet: %v", c.Database, err)
		}
		cancel()
	}
}

// endSession terminates a backend of this datastore's own that still holds
// the writer lock.
func endSession(ctx context.Context, c *pgx.ConnConfig, pid uint32) {
	conn, err := pgx.ConnectConfig(ctx, c)
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SELECT pg_terminate_backend($1)", int32(pid)); err != nil {
		logrus.Debugf("End the lost writer lock session (backend pid %d): %v", pid, err)
	}
}

// minServerVersion is the oldest PostgreSQL the schema and queries run on:
// CREATE OR REPLACE TRIGGER is new in 14 (MATERIALIZED CTEs and
// plan_cache_mode in 12).
const minServerVersion = 140000

// checkServerVersion refuses servers older than minServerVersion with a
// message saying so, instead of a syntax error half-way through the schema.
func checkServerVersion(ctx context.Context, db *sql.DB, database string) error {
	var num int
	var version string
	if err := db.QueryRowContext(ctx, "SELECT current_setting('server_version_num')::int, current_setting('server_version')").Scan(&num, &version); err != nil {
		return fmt.Errorf("read the PostgreSQL version of database %q: %w", database, err)
	}
	return versionSupported(num, version)
}

func versionSupported(num int, version string) error {
	if num < minServerVersion {
		return fmt.Errorf("PostgreSQL %s is not supported: harikube needs PostgreSQL 14 or newer", version)
	}
	return nil
}

// createDatabase creates the configured database when it does not exist,
// as kine does, connecting to the server's maintenance database.
func createDatabase(ctx context.Context, c *pgx.ConnConfig) error {
	conn, err := pgx.ConnectConfig(ctx, c)
	if err == nil {
		return conn.Close(ctx)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != pgerrcode.InvalidCatalogName {
		return fmt.Errorf("connect to PostgreSQL database %q: %w", c.Database, err)
	}
	admin := c.Copy()
	admin.Database = "postgres"
	conn, err = pgx.ConnectConfig(ctx, admin)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL to create database %q: %w", c.Database, err)
	}
	defer conn.Close(ctx)
	logrus.Infof("Creating PostgreSQL database %q", c.Database)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{c.Database}.Sanitize()); err != nil {
		return fmt.Errorf("create PostgreSQL database %q: %w", c.Database, err)
	}
	return nil
}

// keepStatistics runs ANALYZE on kine and the index tables whenever they
// have grown by a tenth since the last run (checked every 15 s). Until
// PostgreSQL has statistics for a table that grew quickly, it believes the
// table is as small as it was, and plans index-driven selective reads as a
// scan of the whole key range; autovacuum catches up only minutes later.
func keepStatistics(ctx context.Context, db *sql.DB) {
	analyzed := int64(-1)
	for {
		var rev sql.NullInt64
		if err := db.QueryRowContext(ctx, "SELECT MAX(id) FROM kine").Scan(&rev); err == nil && (analyzed < 0 || rev.Int64-analyzed >= max(500, analyzed/10)) {
			if _, err := db.ExecContext(ctx, "ANALYZE kine, "+selectorsql.IndexTable+", "+selectorsql.RowsTable); err != nil && ctx.Err() == nil {
				logrus.Debugf("ANALYZE: %v", err)
			} else {
				analyzed = rev.Int64
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(15 * time.Second):
		}
	}
}

package datastore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
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
	dsn, registry := takeInstance(cfg.DataSourceName)
	connConfig, err := pgx.ParseConfig("postgres://" + dsn)
	if err != nil {
		return false, nil, fmt.Errorf("parse PostgreSQL endpoint: %w", err)
	}
	if connConfig.Database == "" {
		connConfig.Database = "kubernetes"
	}
	// pgx prepares and caches statements; after a few runs PostgreSQL
	// switches them to a generic plan that ignores the selector values and
	// scans. Selective reads need plans made for their values.
	if _, set := connConfig.RuntimeParams["plan_cache_mode"]; !set {
		connConfig.RuntimeParams["plan_cache_mode"] = "force_custom_plan"
	}
	if err := createDatabase(ctx, connConfig); err != nil {
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
	for _, stmt := range postgresKineSchema {
		if _, err := g.DB.ExecContext(ctx, stmt); err != nil {
			return false, nil, fmt.Errorf("create kine schema: %w", err)
		}
	}
	b, err := newIndexedBackend(ctx, wg, cfg, g, registry, database{schema: selectorsql.PostgresSchema(), param: "$", numbered: true})
	if err == nil {
		go keepStatistics(ctx, g.DB)
	}
	return true, b, err
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

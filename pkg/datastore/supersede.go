package datastore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/k3s-io/kine/pkg/query"
	"github.com/sirupsen/logrus"

	"github.com/harikube/harikube/pkg/selectorsql"
)

// migrationTable records how far the rows indexed before superseded_by
// existed have been marked: done and target are index row ids, and marking
// is finished when done reaches target. Unmarked rows are read as current
// (a superset), so reads stay correct while it runs.
const migrationTable = "harikube_migration"

const supersededMigration = "superseded_by"

// supersedeBatch bounds the revisions one marking transaction covers, so
// writes wait for it no longer than for a short write burst.
const supersedeBatch = 2000

// addSupersededColumn adds superseded_by (BIGINT: SQLite reads it as an
// integer, as it does kine's ids) to an index table created by an
// older harikube, before the schema's indexes on it are created, and
// records which index rows have to be marked: all of them when the column
// is new, none when the table is.
func addSupersededColumn(ctx context.Context, db *sql.DB) error {
	col := selectorsql.SupersededColumn
	if _, err := db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS "+migrationTable+" (name TEXT PRIMARY KEY, done BIGINT NOT NULL, target BIGINT NOT NULL)"); err != nil {
		return fmt.Errorf("create %s: %w", migrationTable, err)
	}
	record := "INSERT INTO " + migrationTable + " (name, done, target) SELECT '" + supersededMigration + "', 0, COALESCE(MAX(id), 0) FROM " + selectorsql.IndexTable + " WHERE true" // WHERE: SQLite's upsert after SELECT
	if probe(ctx, db, "SELECT "+col+" FROM "+selectorsql.IndexTable+" LIMIT 1") {
		// Present: marking was recorded when it was added (or, after a
		// crash in between, is recorded now and marks everything again).
		_, err := db.ExecContext(ctx, record+" ON CONFLICT (name) DO NOTHING")
		return err
	}
	if !probe(ctx, db, "SELECT 1 FROM "+selectorsql.IndexTable+" LIMIT 1") {
		// A new database: every row is marked by the write after it.
		_, err := db.ExecContext(ctx, "INSERT INTO "+migrationTable+" (name, done, target) VALUES ('"+supersededMigration+"', 0, 0) ON CONFLICT (name) DO NOTHING")
		return err
	}
	logrus.Infof("Adding %s to the index; rows already indexed are marked in the background", col)
	if _, err := db.ExecContext(ctx, "ALTER TABLE "+selectorsql.IndexTable+" ADD COLUMN "+col+" BIGINT"); err != nil {
		return fmt.Errorf("add column %s to %s: %w", col, selectorsql.IndexTable, err)
	}
	_, err := db.ExecContext(ctx, record+" ON CONFLICT (name) DO UPDATE SET done = 0, target = excluded.target")
	return err
}

// probe reports whether q runs (the table and columns it names exist).
func probe(ctx context.Context, db *sql.DB, q string) bool {
	rows, err := db.QueryContext(ctx, q)
	if err != nil {
		return false
	}
	rows.Close()
	return true
}

// markSuperseded marks the index rows recorded in migrationTable batch by
// batch, each batch a transaction at the write gate. Writes meanwhile mark
// the rows they supersede themselves.
func (ix *indexer) markSuperseded(ctx context.Context) error {
	var done, target int64
	err := ix.db.QueryRowContext(ctx, ix.sql("SELECT done, target FROM "+migrationTable+" WHERE name = ?"), supersededMigration).Scan(&done, &target)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && done >= target) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", migrationTable, err)
	}
	mark := ix.sql(selectorsql.MarkSupersededSQL)
	progress := ix.sql("UPDATE " + migrationTable + " SET done = ? WHERE name = ?")
	marked := int64(0)
	for done < target {
		to := min(done+supersedeBatch, target)
		err := ix.gate.do(ctx, func() error {
			x, err := ix.db.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer x.Rollback() //nolint:errcheck // after Commit this is a no-op
			res, err := x.ExecContext(ctx, mark, done, to)
			if err != nil {
				return err
			}
			n, _ := res.RowsAffected()
			marked += n
			if _, err := x.ExecContext(ctx, progress, to, supersededMigration); err != nil {
				return err
			}
			return x.Commit()
		})
		if err != nil {
			return fmt.Errorf("mark superseded index rows after %d: %w", done, err)
		}
		done = to
	}
	logrus.Infof("Marked %d superseded index rows", marked)
	return nil
}

// supersedeSQL is selectorsql.SupersedeSQL with this database's
// placeholders.
func (d *dialect) supersedeSQL() string {
	return query.New(selectorsql.SupersedeSQL, d.param, d.numbered, "").Query
}

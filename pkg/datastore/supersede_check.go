package datastore

import (
	"context"
	"fmt"

	"github.com/harikube/harikube/pkg/selectorsql"
)

// checkSuperseded reports index rows with id in (after, upTo] marked
// superseded by anything but their key's next revision: a read at a
// revision in between would miss them. Unmarked rows only cost reads time.
// A database whose index has no marks yet (never started by this version)
// has nothing to check.
func checkSuperseded(ctx context.Context, c checkDB, r *CheckReport, after, upTo int64) error {
	if !probeColumn(ctx, c.db) {
		return nil
	}
	col := "i." + selectorsql.SupersededColumn
	next := "COALESCE((SELECT MIN(k.id) FROM kine AS k WHERE k.name = i.key AND k.id > i.id), 0)"
	rows, err := c.db.QueryContext(ctx, c.sql("SELECT DISTINCT i.id, i.key, "+col+", "+next+" FROM "+selectorsql.IndexTable+" AS i WHERE i.id > ? AND i.id <= ? AND "+col+" IS NOT NULL AND "+col+" <> "+next), after, upTo)
	if err != nil {
		return fmt.Errorf("check superseded marks: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, marked, want int64
		var key string
		if err := rows.Scan(&id, &key, &marked, &want); err != nil {
			return err
		}
		r.add("revision %d (%s): marked superseded by revision %d, but the key's next revision is %d", id, key, marked, want)
	}
	return rows.Err()
}

// probeColumn reports whether the index table has the superseded column.
func probeColumn(ctx context.Context, db querier) bool {
	rows, err := db.QueryContext(ctx, "SELECT "+selectorsql.SupersededColumn+" FROM "+selectorsql.IndexTable+" LIMIT 1")
	if err != nil {
		return false
	}
	rows.Close()
	return true
}

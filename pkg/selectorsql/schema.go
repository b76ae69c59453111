package selectorsql

// SQLiteSchema creates the index tables next to kine's own table. The
// trigger removes index rows in the same transaction as the kine row they
// describe, whichever path deletes it (compaction, DeleteRevision).
func SQLiteSchema() []string {
	return append([]string{
		`CREATE TABLE IF NOT EXISTS ` + RowsTable + ` (id INTEGER PRIMARY KEY, decoded INTEGER NOT NULL)`,
		`CREATE INDEX IF NOT EXISTS harikube_rows_undecoded ON ` + RowsTable + ` (id) WHERE decoded = 0`,
		`CREATE TABLE IF NOT EXISTS ` + IndexTable + ` (
			id INTEGER NOT NULL,
			kind TEXT NOT NULL,
			name TEXT NOT NULL,
			value TEXT NOT NULL,
			num INTEGER,
			key TEXT NOT NULL,
			` + SupersededColumn + ` INTEGER,
			PRIMARY KEY (id, kind, name)) WITHOUT ROWID`,
		`CREATE TRIGGER IF NOT EXISTS harikube_kine_delete AFTER DELETE ON kine BEGIN
			DELETE FROM ` + IndexTable + ` WHERE id = OLD.id;
			DELETE FROM ` + RowsTable + ` WHERE id = OLD.id;
		END`,
	}, indexSchema...)
}

// PostgresSchema is SQLiteSchema for PostgreSQL. Text columns compared
// with key ranges use the "C" collation, as kine's own name column does, so
// range bounds order bytewise in both tables.
func PostgresSchema() []string {
	return append([]string{
		`CREATE TABLE IF NOT EXISTS ` + RowsTable + ` (id BIGINT PRIMARY KEY, decoded INTEGER NOT NULL)`,
		`CREATE INDEX IF NOT EXISTS harikube_rows_undecoded ON ` + RowsTable + ` (id) WHERE decoded = 0`,
		`CREATE TABLE IF NOT EXISTS ` + IndexTable + ` (
			id BIGINT NOT NULL,
			kind TEXT COLLATE "C" NOT NULL,
			name TEXT COLLATE "C" NOT NULL,
			value TEXT COLLATE "C" NOT NULL,
			num BIGINT,
			key TEXT COLLATE "C" NOT NULL,
			` + SupersededColumn + ` BIGINT,
			PRIMARY KEY (id, kind, name))`,
		`CREATE OR REPLACE FUNCTION harikube_kine_delete() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			DELETE FROM ` + IndexTable + ` WHERE id = OLD.id;
			DELETE FROM ` + RowsTable + ` WHERE id = OLD.id;
			RETURN OLD;
		END $$`,
		`CREATE OR REPLACE TRIGGER harikube_kine_delete AFTER DELETE ON kine FOR EACH ROW EXECUTE FUNCTION harikube_kine_delete()`,
		// Marking a row superseded leaves its old version in the index of
		// current rows until a vacuum: reads of a value that many rows had
		// visit those entries. Vacuum after 1 % of the rows changed, not
		// PostgreSQL's 20 %.
		`ALTER TABLE ` + IndexTable + ` SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000)`,
		// A value's frequency depends on its name (decile=7 is 10 % of
		// decile's rows, '7' rare among all values): without statistics of
		// the combination the planner takes a frequent value for a rare one
		// and sorts all its rows for a page instead of walking them in key
		// order and stopping at the limit.
		`CREATE STATISTICS IF NOT EXISTS harikube_index_kind_name_value (mcv) ON kind, name, value FROM ` + IndexTable,
	}, indexSchema...)
}

// indexSchema is the same in both databases. Index-driven reads start from
// the rows still current (superseded_by IS NULL) and, at an older revision,
// from the rows superseded after it, so their cost follows the matches and
// not the history of the keys. The indexes of earlier versions, over every
// revision, are dropped.
var indexSchema = []string{
	`DROP INDEX IF EXISTS harikube_index_value`,
	`DROP INDEX IF EXISTS harikube_index_num`,
	`CREATE INDEX IF NOT EXISTS harikube_index_current ON ` + IndexTable + ` (kind, name, value, key) WHERE ` + SupersededColumn + ` IS NULL`,
	`CREATE INDEX IF NOT EXISTS harikube_index_current_num ON ` + IndexTable + ` (kind, name, num, key) WHERE num IS NOT NULL AND ` + SupersededColumn + ` IS NULL`,
	`CREATE INDEX IF NOT EXISTS harikube_index_superseded ON ` + IndexTable + ` (kind, name, ` + SupersededColumn + `) WHERE ` + SupersededColumn + ` IS NOT NULL`,
}

// SupersedeSQL marks the index rows of revision prev (args: next, prev,
// key) as superseded by the key's next revision, in the transaction that
// writes it. The key guards against marking another key's row; a row
// already marked keeps its (earlier) mark.
const SupersedeSQL = `UPDATE ` + IndexTable + ` SET ` + SupersededColumn + ` = ? WHERE id = ? AND key = ? AND ` + SupersededColumn + ` IS NULL`

// MarkSupersededSQL marks, from kine's own rows, the unmarked index rows
// with id in (from, to] (args: from, to) whose key has a later revision:
// rows written before the column existed, and rows a re-index rewrote.
const MarkSupersededSQL = `UPDATE ` + IndexTable + ` SET ` + SupersededColumn + ` = (SELECT MIN(k.id) FROM kine AS k WHERE k.name = ` + IndexTable + `.key AND k.id > ` + IndexTable + `.id)
	WHERE id > ? AND id <= ? AND ` + SupersededColumn + ` IS NULL
	AND EXISTS (SELECT 1 FROM kine AS k WHERE k.name = ` + IndexTable + `.key AND k.id > ` + IndexTable + `.id)`

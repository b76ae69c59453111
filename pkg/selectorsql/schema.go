package selectorsql

// SQLiteSchema creates the index tables next to kine's own table. The
// trigger removes index rows in the same transaction as the kine row they
// describe, whichever path deletes it (compaction, DeleteRevision).
func SQLiteSchema() []string {
	return []string{
		`CREATE TABLE IF NOT EXISTS ` + RowsTable + ` (id INTEGER PRIMARY KEY, decoded INTEGER NOT NULL)`,
		`CREATE INDEX IF NOT EXISTS harikube_rows_undecoded ON ` + RowsTable + ` (id) WHERE decoded = 0`,
		`CREATE TABLE IF NOT EXISTS ` + IndexTable + ` (
			id INTEGER NOT NULL,
			kind TEXT NOT NULL,
			name TEXT NOT NULL,
			value TEXT NOT NULL,
			num INTEGER,
			key TEXT NOT NULL,
			PRIMARY KEY (id, kind, name)) WITHOUT ROWID`,
		`CREATE INDEX IF NOT EXISTS harikube_index_value ON ` + IndexTable + ` (kind, name, value, key)`,
		`CREATE INDEX IF NOT EXISTS harikube_index_num ON ` + IndexTable + ` (kind, name, num, key) WHERE num IS NOT NULL`,
		`CREATE TRIGGER IF NOT EXISTS harikube_kine_delete AFTER DELETE ON kine BEGIN
			DELETE FROM ` + IndexTable + ` WHERE id = OLD.id;
			DELETE FROM ` + RowsTable + ` WHERE id = OLD.id;
		END`,
	}
}

// PostgresSchema is SQLiteSchema for PostgreSQL. Text columns compared
// with key ranges use the "C" collation, as kine's own name column does, so
// range bounds order bytewise in both tables.
func PostgresSchema() []string {
	return []string{
		`CREATE TABLE IF NOT EXISTS ` + RowsTable + ` (id BIGINT PRIMARY KEY, decoded INTEGER NOT NULL)`,
		`CREATE INDEX IF NOT EXISTS harikube_rows_undecoded ON ` + RowsTable + ` (id) WHERE decoded = 0`,
		`CREATE TABLE IF NOT EXISTS ` + IndexTable + ` (
			id BIGINT NOT NULL,
			kind TEXT COLLATE "C" NOT NULL,
			name TEXT COLLATE "C" NOT NULL,
			value TEXT COLLATE "C" NOT NULL,
			num BIGINT,
			key TEXT COLLATE "C" NOT NULL,
			PRIMARY KEY (id, kind, name))`,
		`CREATE INDEX IF NOT EXISTS harikube_index_value ON ` + IndexTable + ` (kind, name, value, key)`,
		`CREATE INDEX IF NOT EXISTS harikube_index_num ON ` + IndexTable + ` (kind, name, num, key) WHERE num IS NOT NULL`,
		`CREATE OR REPLACE FUNCTION harikube_kine_delete() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			DELETE FROM ` + IndexTable + ` WHERE id = OLD.id;
			DELETE FROM ` + RowsTable + ` WHERE id = OLD.id;
			RETURN OLD;
		END $$`,
		`CREATE OR REPLACE TRIGGER harikube_kine_delete AFTER DELETE ON kine FOR EACH ROW EXECUTE FUNCTION harikube_kine_delete()`,
	}
}

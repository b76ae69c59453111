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

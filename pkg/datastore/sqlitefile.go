package datastore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"time"

	sqlite3lib "modernc.org/sqlite/lib"
)

// sqliteHeader starts every SQLite 3 database file.
var sqliteHeader = []byte("SQLite format 3\x00")

// sqliteLockWait is how long the start waits for a database another process
// holds locked, as long as Kine's own busy timeout.
var sqliteLockWait = 30 * time.Second

// checkSQLiteFile refuses, before Kine opens it, a database file that is not
// SQLite or that another process keeps locked. Kine would otherwise retry
// opening a non-database for five minutes, and wait out its busy timeout on
// each of several setup statements, before failing with a generic message.
// Nothing here writes to the file: a database harikube cannot use is left as
// it is for its owner to repair or restore.
func checkSQLiteFile(ctx context.Context, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open database %s: %w", path, err)
	}
	header := make([]byte, len(sqliteHeader))
	n, err := io.ReadFull(f, header)
	f.Close()
	switch {
	case n == 0 && errors.Is(err, io.EOF):
		return nil // new, empty: SQLite initialises it
	case err != nil && !errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("read database %s: %w", path, err)
	case !bytes.Equal(header[:n], sqliteHeader):
		return fmt.Errorf("database %s is not a SQLite database (it does not start with the SQLite header); "+
			"harikube leaves it untouched: restore it from a backup, or move it away to start with an empty datastore", path)
	}

	// Take and release the write lock Kine will need, waiting as long as
	// Kine would for a lock held briefly (a backup, for example).
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", sqliteLockWait.Milliseconds()))
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return fmt.Errorf("open database %s: %w", path, err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return sqliteFileError(path, err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return sqliteFileError(path, err)
	}
	var tables int
	err = conn.QueryRowContext(ctx, "SELECT COUNT(*) FROM sqlite_master").Scan(&tables)
	if _, rbErr := conn.ExecContext(ctx, "ROLLBACK"); err == nil && rbErr != nil {
		err = rbErr
	}
	if err != nil {
		return sqliteFileError(path, err)
	}
	return nil
}

func sqliteFileError(path string, err error) error {
	var coded interface{ Code() int }
	if errors.As(err, &coded) {
		switch coded.Code() & 0xff {
		case sqlite3lib.SQLITE_BUSY, sqlite3lib.SQLITE_LOCKED:
			return fmt.Errorf("database %s is locked by another process (waited %s): %w; "+
				"stop the program holding it (a harikube server would hold <data-dir>/harikube.lock too) and start again",
				path, sqliteLockWait, err)
		case sqlite3lib.SQLITE_NOTADB, sqlite3lib.SQLITE_CORRUPT:
			return fmt.Errorf("database %s is corrupt: %w; harikube leaves it untouched: restore it from a backup, "+
				"or move it away to start with an empty datastore", path, err)
		}
	}
	return fmt.Errorf("open database %s: %w", path, err)
}

package snapshot

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// DefaultBumpRevision is how far past every revision the old server may
// have handed out the restored datastore's revision starts, as etcdutl's
// `snapshot restore --bump-revision --mark-compacted`: a client holding a
// resourceVersion from after the snapshot gets 410 Gone and relists,
// instead of watching revisions that now name other writes. One billion
// covers eleven days at a thousand writes a second.
const DefaultBumpRevision = 1_000_000_000

// RestoreOptions say which snapshot becomes which database.
type RestoreOptions struct {
	Snapshot string
	// Database is the SQLite file the server will open (<data-dir>/db/state.db).
	Database string
	// EncryptionConfig is the server's encryption configuration
	// (<data-dir>/cred/encryption-config.yaml).
	EncryptionConfig string
	// BumpRevision is added to the newest known revision (see
	// DefaultBumpRevision); the range below is marked compacted.
	BumpRevision int64
}

// RestoreResult says what Restore did.
type RestoreResult struct {
	Snapshot Info
	// Revision is the restored datastore's revision; everything older is
	// compacted.
	Revision int64
	// KeptAside are the previous database's files, renamed.
	KeptAside []string
}

// Restore makes a snapshot the database. Everything is checked before the
// current database is touched; that one is renamed, never deleted. The
// caller holds the data directory's lock (the server is stopped).
func Restore(ctx context.Context, opts RestoreOptions) (RestoreResult, error) {
	if opts.BumpRevision < 1 {
		return RestoreResult{}, fmt.Errorf("--bump-revision %d: must be at least 1", opts.BumpRevision)
	}
	info, err := Verify(ctx, opts.Snapshot)
	if err != nil {
		return RestoreResult{}, err
	}
	if err := checkKeys(info, opts.EncryptionConfig); err != nil {
		return RestoreResult{}, err
	}

	dbDir := filepath.Dir(opts.Database)
	owner, ownerKnown := ownerOf(dbDir)
	if err := os.MkdirAll(dbDir, 0o700); err != nil {
		return RestoreResult{}, fmt.Errorf("create database directory %s: %w", dbDir, err)
	}
	tmp := filepath.Join(dbDir, "."+filepath.Base(opts.Database)+".restoring")
	if err := copyFile(opts.Snapshot, tmp); err != nil {
		os.Remove(tmp)
		return RestoreResult{}, err
	}
	defer os.Remove(tmp) // gone once renamed into place

	base := info.Revision
	if rev, err := revisionOf(ctx, opts.Database); err == nil && rev > base {
		base = rev
	}
	revision := base + opts.BumpRevision
	if err := prepareRestored(ctx, tmp, info.Revision, revision); err != nil {
		return RestoreResult{}, err
	}

	// Root restoring into a pod's data directory (from a debug pod or a
	// Job, the StatefulSet scaled to 0) leaves it to the pod's user, or the
	// server, running as that user, could not open its database.
	if ownerKnown && os.Geteuid() == 0 && owner.uid != 0 {
		for _, path := range []string{dbDir, tmp} {
			if err := os.Chown(path, owner.uid, owner.gid); err != nil {
				return RestoreResult{}, fmt.Errorf("give %s to the data directory's owner %d:%d: %w", path, owner.uid, owner.gid, err)
			}
		}
	}

	aside, err := keepAside(opts.Database, time.Now().UTC())
	if err != nil {
		return RestoreResult{}, err
	}
	if err := os.Rename(tmp, opts.Database); err != nil {
		restoreAside(opts.Database, aside)
		return RestoreResult{}, fmt.Errorf("move restored database into place: %w", err)
	}
	syncDir(dbDir)
	return RestoreResult{Snapshot: info, Revision: revision, KeptAside: aside}, nil
}

// Verify reads a snapshot's metadata and checks the whole file: a file
// that is not a snapshot, truncated or damaged is refused.
func Verify(ctx context.Context, path string) (Info, error) {
	info, err := Read(ctx, path)
	if err != nil {
		return Info{}, err
	}
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&immutable=1")
	if err != nil {
		return Info{}, fmt.Errorf("open %s: %w", path, err)
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, "PRAGMA integrity_check(20)")
	if err != nil {
		return Info{}, fmt.Errorf("snapshot %s is damaged: %w", path, err)
	}
	var problems []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			rows.Close()
			return Info{}, fmt.Errorf("snapshot %s is damaged: %w", path, err)
		}
		if line != "ok" {
			problems = append(problems, line)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return Info{}, fmt.Errorf("snapshot %s is damaged: %w", path, err)
	}
	if len(problems) > 0 {
		return Info{}, fmt.Errorf("snapshot %s is damaged (integrity check: %s)", path, strings.Join(problems, "; "))
	}
	if err := requireKine(ctx, db, path); err != nil {
		return Info{}, err
	}
	return info, nil
}

var sqliteHeader = []byte("SQLite format 3\x00")

func checkHeader(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	header := make([]byte, len(sqliteHeader))
	if _, err := io.ReadFull(f, header); err != nil || !bytes.Equal(header, sqliteHeader) {
		return fmt.Errorf("%s is not a harikube snapshot (not a SQLite file)", path)
	}
	return nil
}

// checkComplete compares the file size with the page count its header
// records: SQLite itself reads a truncated file up to where it ends.
func checkComplete(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := make([]byte, 100)
	if _, err := io.ReadFull(f, h); err != nil {
		return fmt.Errorf("snapshot %s is truncated (%v)", path, err)
	}
	pageSize := int64(binary.BigEndian.Uint16(h[16:18]))
	if pageSize == 1 {
		pageSize = 65536
	}
	pages := int64(binary.BigEndian.Uint32(h[28:32]))
	// The page count is valid when the change counter matches the
	// version-valid-for number (SQLite file format, section 1.3.7).
	valid := bytes.Equal(h[24:28], h[92:96]) && pages > 0
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if valid && fi.Size() < pages*pageSize {
		return fmt.Errorf("snapshot %s is truncated: %d bytes, its header records %d pages of %d bytes (%d); copy it again from where it was saved",
			path, fi.Size(), pages, pageSize, pages*pageSize)
	}
	return nil
}

// checkKeys refuses to restore encrypted values without their keys.
func checkKeys(info Info, configPath string) error {
	if info.EncryptedValues == 0 {
		return nil
	}
	have, err := keyFingerprints(configPath)
	if err != nil {
		return err
	}
	if len(have) == 0 {
		return fmt.Errorf("snapshot %s holds %d values encrypted at rest (--secrets-encryption) and %s is missing: copy the encryption-config.yaml of the data directory the snapshot was taken from (keys %s) there, then restore again and start the server with --secrets-encryption",
			info.Path, info.EncryptedValues, configPath, describeKeys(info.EncryptionKeys))
	}
	var missing []string
	for _, k := range info.EncryptionKeys {
		if !slices.Contains(have, k) {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("snapshot %s holds %d values encrypted at rest with keys %s, and %s lacks %s: put the encryption-config.yaml of the data directory the snapshot was taken from there, then restore again",
			info.Path, info.EncryptedValues, describeKeys(info.EncryptionKeys), configPath, strings.Join(missing, ", "))
	}
	return nil
}

func describeKeys(keys []string) string {
	if len(keys) == 0 {
		return "not recorded"
	}
	return strings.Join(keys, ", ") + " (name:sha256 prefix)"
}

// revisionOf is the newest revision of an existing database.
func revisionOf(ctx context.Context, path string) (int64, error) {
	if _, err := os.Stat(path); err != nil {
		return 0, err
	}
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma="+busyPragma())
	if err != nil {
		return 0, err
	}
	defer db.Close()
	var rev sql.NullInt64
	err = db.QueryRowContext(ctx, "SELECT MAX(id) FROM kine").Scan(&rev)
	return rev.Int64, err
}

// prepareRestored compacts the history up to the snapshot's revision (the
// index rows go with their kine rows, by trigger), records revision as both
// the newest and the compacted revision, and drops the snapshot metadata.
func prepareRestored(ctx context.Context, path string, snapshotRev, revision int64) error {
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma="+busyPragma())
	if err != nil {
		return fmt.Errorf("open restored database: %w", err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("prepare restored database: %w", err)
	}
	defer tx.Rollback()
	stmts := []struct {
		sql  string
		args []any
	}{
		// Kine's own compaction query (drivers/sqlite), over all history.
		{`DELETE FROM kine WHERE id IN (
			SELECT kp.prev_revision FROM kine AS kp
			WHERE kp.name != 'compact_rev_key' AND kp.prev_revision != 0 AND kp.id <= ?
			UNION ALL
			SELECT kd.id FROM kine AS kd WHERE kd.deleted != 0 AND kd.id <= ?)`, []any{snapshotRev, snapshotRev}},
		// A gap row, as Kine writes for a skipped revision, holds the new
		// revision.
		{`INSERT INTO kine (id, name, created, deleted, create_revision, prev_revision, lease, value, old_value)
			VALUES (?, 'gap-' || ?, 0, 1, 0, 0, 0, NULL, NULL)`, []any{revision, revision}},
		{`UPDATE kine SET prev_revision = ? WHERE name = 'compact_rev_key'`, []any{revision}},
		{`DROP TABLE ` + metaTable, nil},
	}
	for _, s := range stmts {
		if _, err := tx.ExecContext(ctx, s.sql, s.args...); err != nil {
			return fmt.Errorf("prepare restored database: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("prepare restored database: %w", err)
	}
	if err := db.Close(); err != nil {
		return fmt.Errorf("close restored database: %w", err)
	}
	return syncFile(path)
}

// keepAside renames the database and its -wal and -shm files to
// <db>.pre-restore-<time>[-wal|-shm], which SQLite opens as one database.
func keepAside(db string, now time.Time) ([]string, error) {
	if _, err := os.Stat(db); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	target := db + ".pre-restore-" + now.Format("20060102T150405Z")
	var moved []string
	for _, suffix := range []string{"", "-wal", "-shm"} {
		from := db + suffix
		if _, err := os.Stat(from); errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err := os.Rename(from, target+suffix); err != nil {
			restoreAside(db, moved)
			return nil, fmt.Errorf("keep the current database aside: %w", err)
		}
		moved = append(moved, target+suffix)
	}
	return moved, nil
}

// restoreAside undoes keepAside after a failure.
func restoreAside(db string, moved []string) {
	for _, m := range moved {
		suffix := ""
		for _, s := range []string{"-wal", "-shm"} {
			if strings.HasSuffix(m, s) {
				suffix = s
			}
		}
		_ = os.Rename(m, db+suffix)
	}
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("copy snapshot: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy snapshot: %w", err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return fmt.Errorf("copy snapshot: %w", err)
	}
	return out.Close()
}

type fileOwner struct{ uid, gid int }

// ownerOf is the owner of dir or, when it does not exist yet, of its parent.
func ownerOf(dir string) (fileOwner, bool) {
	for _, path := range []string{dir, filepath.Dir(dir)} {
		if info, err := os.Stat(path); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				return fileOwner{uid: int(st.Uid), gid: int(st.Gid)}, true
			}
			return fileOwner{}, false
		}
	}
	return fileOwner{}, false
}

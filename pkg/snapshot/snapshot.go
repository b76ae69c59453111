// Package snapshot saves, lists, prunes and restores snapshots of a harikube
// SQLite datastore. A snapshot is one self-contained SQLite file written by
// `VACUUM INTO` (a consistent read of the live database, index tables
// included) with a metadata table that marks it as a harikube snapshot.
package snapshot

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/harikube/harikube/pkg/version"
)

// metaTable marks a file as a harikube snapshot and describes it.
const metaTable = "harikube_snapshot"

// formatVersion is the layout of the metadata table; restore refuses newer ones.
const formatVersion = 1

// Metadata keys.
const (
	metaFormat          = "format"
	metaRevision        = "revision"
	metaCreated         = "created"
	metaHarikube        = "harikube_version"
	metaEncryptedValues = "encrypted_values"
	metaEncryptionKeys  = "encryption_keys"
)

// fileExt is the extension of snapshot files.
const fileExt = ".db"

// busyTimeout bounds how long a snapshot's read waits for SQLite's locks
// (a WAL reset or checkpoint of the running server), as long as Kine's own.
const busyTimeout = 30 * time.Second

// Info describes one snapshot file.
type Info struct {
	Path     string
	Name     string // the name it was saved under (on-demand, scheduled, ...)
	Size     int64
	Revision int64
	Created  time.Time
	// EncryptedValues counts values stored encrypted at rest (Secrets
	// with --secrets-encryption); restoring them needs the same key.
	EncryptedValues int64
	// EncryptionKeys are the keys of the encryption configuration at
	// save time, as "name:sha256-prefix" fingerprints.
	EncryptionKeys  []string
	HarikubeVersion string
}

// SaveOptions say what to snapshot and where.
type SaveOptions struct {
	// Database is the SQLite file of the datastore (running or stopped).
	Database string
	// EncryptionConfig is the server's encryption configuration, if any:
	// the snapshot records its keys' fingerprints (never the keys).
	EncryptionConfig string
	// Dir receives the snapshot (created 0700 if missing).
	Dir string
	// Name prefixes the file name: <name>-<UTC time>.db.
	Name string
}

// Save writes a consistent snapshot of a live or stopped database. The file
// appears under its final name only once complete, with mode 0600.
func Save(ctx context.Context, opts SaveOptions) (Info, error) {
	if err := validName(opts.Name); err != nil {
		return Info{}, err
	}
	if _, err := os.Stat(opts.Database); err != nil {
		return Info{}, fmt.Errorf("no SQLite database at %s (%w): pass the server's --data-dir, and its --datastore-endpoint if it set one; a server on PostgreSQL is backed up with pg_dump (README: Backups)", opts.Database, err)
	}
	keys, err := keyFingerprints(opts.EncryptionConfig)
	if err != nil {
		return Info{}, err
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return Info{}, fmt.Errorf("create snapshot directory %s: %w", opts.Dir, err)
	}
	created := time.Now().UTC()
	final := filepath.Join(opts.Dir, opts.Name+"-"+created.Format("20060102T150405.000Z")+fileExt)
	tmp := filepath.Join(opts.Dir, "."+filepath.Base(final)+".partial")
	if err := writeSnapshot(ctx, opts.Database, tmp, keys, created); err != nil {
		os.Remove(tmp)
		return Info{}, err
	}
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return Info{}, fmt.Errorf("move snapshot into place: %w", err)
	}
	syncDir(opts.Dir)
	return Read(ctx, final)
}

func writeSnapshot(ctx context.Context, source, tmp string, keys []string, created time.Time) error {
	// VACUUM INTO accepts an existing empty file: creating it first gives
	// it mode 0600 whatever the umask.
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create snapshot file: %w", err)
	}
	f.Close()

	// Read-only: the snapshot is one read transaction of the source, which
	// in WAL mode never blocks the server's writers.
	src, err := sql.Open("sqlite", "file:"+source+"?mode=ro&_pragma="+busyPragma())
	if err != nil {
		return fmt.Errorf("open database %s: %w", source, err)
	}
	defer src.Close()
	if err := requireKine(ctx, src, source); err != nil {
		return err
	}
	if _, err := src.ExecContext(ctx, "VACUUM INTO ?", tmp); err != nil {
		return fmt.Errorf("snapshot database %s: %w", source, err)
	}

	dst, err := sql.Open("sqlite", "file:"+tmp+"?_pragma="+busyPragma())
	if err != nil {
		return fmt.Errorf("open snapshot: %w", err)
	}
	defer dst.Close()
	dst.SetMaxOpenConns(1)
	var rev sql.NullInt64
	if err := dst.QueryRowContext(ctx, "SELECT MAX(id) FROM kine").Scan(&rev); err != nil {
		return fmt.Errorf("read the snapshot's revision: %w", err)
	}
	var encrypted int64
	if err := dst.QueryRowContext(ctx, "SELECT COUNT(*) FROM kine WHERE deleted = 0 AND substr(value, 1, 8) = CAST('k8s:enc:' AS BLOB)").Scan(&encrypted); err != nil {
		return fmt.Errorf("look for encrypted values: %w", err)
	}
	meta := map[string]string{
		metaFormat:          strconv.Itoa(formatVersion),
		metaRevision:        strconv.FormatInt(rev.Int64, 10),
		metaCreated:         created.Format(time.RFC3339Nano),
		metaHarikube:        version.Get().Harikube,
		metaEncryptedValues: strconv.FormatInt(encrypted, 10),
		metaEncryptionKeys:  strings.Join(keys, ","),
	}
	stmts := []string{
		"PRAGMA journal_mode=DELETE",
		"CREATE TABLE " + metaTable + " (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
	}
	for _, s := range stmts {
		if _, err := dst.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("write snapshot metadata: %w", err)
		}
	}
	for k, v := range meta {
		if _, err := dst.ExecContext(ctx, "INSERT INTO "+metaTable+" (key, value) VALUES (?, ?)", k, v); err != nil {
			return fmt.Errorf("write snapshot metadata: %w", err)
		}
	}
	if err := dst.Close(); err != nil {
		return fmt.Errorf("close snapshot: %w", err)
	}
	return syncFile(tmp)
}

func busyPragma() string {
	return fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds())
}

// requireKine refuses a database without Kine's table.
func requireKine(ctx context.Context, db *sql.DB, path string) error {
	var n int
	if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'kine'").Scan(&n); err != nil {
		return fmt.Errorf("read database %s: %w", path, err)
	}
	if n == 0 {
		return fmt.Errorf("%s holds no kine table: not a harikube datastore, or the server never started on it", path)
	}
	return nil
}

// Read returns the metadata of a snapshot file, or an error saying why it
// is not one.
func Read(ctx context.Context, path string) (Info, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return Info{}, err
	}
	if !fi.Mode().IsRegular() {
		return Info{}, fmt.Errorf("%s is not a regular file", path)
	}
	if err := checkHeader(path); err != nil {
		return Info{}, err
	}
	if err := checkComplete(path); err != nil {
		return Info{}, err
	}
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&immutable=1")
	if err != nil {
		return Info{}, fmt.Errorf("open %s: %w", path, err)
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, "SELECT key, value FROM "+metaTable)
	if err != nil {
		if strings.Contains(err.Error(), "no such table") {
			return Info{}, fmt.Errorf("%s is not a harikube snapshot (a SQLite file without the %s table); take snapshots with 'harikube snapshot save'", path, metaTable)
		}
		return Info{}, fmt.Errorf("%s is not a readable harikube snapshot: %w", path, err)
	}
	defer rows.Close()
	meta := map[string]string{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return Info{}, fmt.Errorf("read metadata of %s: %w", path, err)
		}
		meta[k] = v
	}
	if err := rows.Err(); err != nil {
		return Info{}, fmt.Errorf("read metadata of %s: %w", path, err)
	}
	format, err := strconv.Atoi(meta[metaFormat])
	if err != nil {
		return Info{}, fmt.Errorf("%s: snapshot metadata without a format version", path)
	}
	if format > formatVersion {
		return Info{}, fmt.Errorf("%s has snapshot format %d, newer than this harikube reads (%d); restore it with the harikube version that wrote it (%s)", path, format, formatVersion, meta[metaHarikube])
	}
	info := Info{Path: path, Size: fi.Size(), HarikubeVersion: meta[metaHarikube]}
	info.Revision, _ = strconv.ParseInt(meta[metaRevision], 10, 64)
	info.EncryptedValues, _ = strconv.ParseInt(meta[metaEncryptedValues], 10, 64)
	info.Created, _ = time.Parse(time.RFC3339Nano, meta[metaCreated])
	if k := meta[metaEncryptionKeys]; k != "" {
		info.EncryptionKeys = strings.Split(k, ",")
	}
	info.Name = nameOf(filepath.Base(path))
	return info, nil
}

// nameOf is the <name> of <name>-<time>.db, or "" for another file name.
func nameOf(base string) string {
	stem, ok := strings.CutSuffix(base, fileExt)
	if !ok {
		return ""
	}
	i := strings.LastIndex(stem, "-")
	if i <= 0 {
		return ""
	}
	if _, err := time.Parse("20060102T150405.000Z", stem[i+1:]); err != nil {
		return ""
	}
	return stem[:i]
}

// List returns the snapshots in dir, oldest first. Files that are not
// snapshots are skipped; a missing directory holds none.
func List(ctx context.Context, dir string) ([]Info, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list snapshots in %s: %w", dir, err)
	}
	var out []Info
	for _, e := range entries {
		if e.IsDir() || strings.HasPrefix(e.Name(), ".") || !strings.HasSuffix(e.Name(), fileExt) {
			continue
		}
		info, err := Read(ctx, filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// Prune deletes all but the newest retain snapshots of the given name in
// dir and returns the paths it deleted.
func Prune(ctx context.Context, dir, name string, retain int) ([]string, error) {
	if retain < 1 {
		return nil, fmt.Errorf("retention %d: keep at least one snapshot", retain)
	}
	all, err := List(ctx, dir)
	if err != nil {
		return nil, err
	}
	var mine []Info
	for _, s := range all {
		if s.Name == name {
			mine = append(mine, s)
		}
	}
	var removed []string
	for len(mine) > retain {
		if err := os.Remove(mine[0].Path); err != nil {
			return removed, fmt.Errorf("delete snapshot: %w", err)
		}
		removed = append(removed, mine[0].Path)
		mine = mine[1:]
	}
	return removed, nil
}

func validName(name string) error {
	if name == "" || strings.ContainsAny(name, "/\\") || strings.HasPrefix(name, ".") {
		return fmt.Errorf("snapshot name %q: use letters, digits, '-' or '_' (it prefixes the file name)", name)
	}
	return nil
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// syncDir makes a rename in dir durable; failure only weakens durability.
func syncDir(dir string) {
	if f, err := os.Open(dir); err == nil {
		_ = f.Sync()
		f.Close()
	}
}

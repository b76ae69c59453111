package server

import (
	"context"
	"errors"
	"path/filepath"

	"k8s.io/component-base/metrics/legacyregistry"

	"github.com/harikube/harikube/pkg/datastore"
	"github.com/harikube/harikube/pkg/snapshot"
)

// SnapshotSchedule configures the snapshots the server takes of its SQLite
// datastore (k3s: --etcd-snapshot-schedule-cron, --etcd-snapshot-retention,
// --etcd-snapshot-dir).
type SnapshotSchedule struct {
	Cron      string // empty: no scheduled snapshots
	Retention int    // scheduled snapshots kept; 0 keeps all
	Dir       string // default <data-dir>/snapshots
}

// startSnapshots runs the snapshot schedule until ctx ends.
func startSnapshots(ctx context.Context, cfg Config, ds *datastore.Datastore) error {
	s := cfg.Snapshots
	if s.Cron == "" {
		return nil
	}
	sched, err := snapshot.ParseSchedule(s.Cron)
	if err != nil {
		return err
	}
	if ds.DatabasePath == "" {
		return errors.New("--snapshot-schedule takes snapshots of a SQLite datastore; back up PostgreSQL with pg_dump instead (README: Backups)")
	}
	if s.Retention < 0 {
		return errors.New("--snapshot-retention must be 0 (keep all) or more")
	}
	metrics, err := snapshot.NewMetrics(legacyregistry.Registerer())
	if err != nil {
		return err
	}
	dir := s.Dir
	if dir == "" {
		dir = filepath.Join(cfg.DataDir, "snapshots")
	}
	go snapshot.Schedule(ctx, sched, snapshot.SaveOptions{
		Database:         ds.DatabasePath,
		EncryptionConfig: filepath.Join(cfg.DataDir, "cred", "encryption-config.yaml"),
		Dir:              dir,
	}, s.Retention, metrics)
	return nil
}

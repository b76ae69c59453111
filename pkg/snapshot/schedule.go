package snapshot

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/robfig/cron/v3"
	"github.com/sirupsen/logrus"
)

// ScheduledName names the snapshots the server takes on its schedule; the
// retention applies to these only, as in k3s.
const ScheduledName = "scheduled"

// ParseSchedule reads a standard five-field cron expression ("0 */12 * * *")
// or a descriptor (@hourly, @every 30m), in the server's local time zone.
func ParseSchedule(spec string) (cron.Schedule, error) {
	s, err := cron.ParseStandard(spec)
	if err != nil {
		return nil, fmt.Errorf("schedule %q: %w; use five cron fields (minute hour day-of-month month day-of-week), e.g. '0 */12 * * *', or @every 6h", spec, err)
	}
	return s, nil
}

// Metrics of scheduled snapshots.
type Metrics struct {
	lastSuccess prometheus.Gauge
	lastSize    prometheus.Gauge
	lastRev     prometheus.Gauge
	saved       prometheus.Counter
	failures    prometheus.Counter
}

// NewMetrics creates the snapshot metrics and registers them with r (nil: not exported).
func NewMetrics(r prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Name: "harikube_snapshot_last_success_timestamp_seconds", Help: "When the last scheduled snapshot completed, in seconds since the epoch (0: none yet)."}),
		lastSize:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "harikube_snapshot_last_size_bytes", Help: "Size of the last scheduled snapshot file."}),
		lastRev:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "harikube_snapshot_last_revision", Help: "Datastore revision the last scheduled snapshot holds."}),
		saved:       prometheus.NewCounter(prometheus.CounterOpts{Name: "harikube_snapshot_saved_total", Help: "Scheduled snapshots saved."}),
		failures:    prometheus.NewCounter(prometheus.CounterOpts{Name: "harikube_snapshot_failures_total", Help: "Scheduled snapshots that failed (see the server log)."}),
	}
	if r == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.lastSuccess, m.lastSize, m.lastRev, m.saved, m.failures} {
		if err := r.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, fmt.Errorf("register snapshot metrics: %w", err)
			}
		}
	}
	return m, nil
}

// Schedule takes a snapshot at each time of sched until ctx ends, then
// keeps the newest retain scheduled snapshots (0: keep all). A failed
// snapshot is logged and counted; the next one is still taken.
func Schedule(ctx context.Context, sched cron.Schedule, opts SaveOptions, retain int, m *Metrics) {
	opts.Name = ScheduledName
	for {
		next := sched.Next(time.Now())
		timer := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		info, err := Save(ctx, opts)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			m.failures.Inc()
			logrus.Errorf("Scheduled snapshot failed: %v", err)
			continue
		}
		m.saved.Inc()
		m.lastSuccess.Set(float64(time.Now().Unix()))
		m.lastSize.Set(float64(info.Size))
		m.lastRev.Set(float64(info.Revision))
		logrus.Infof("Snapshot saved: %s (%d bytes, revision %d)", info.Path, info.Size, info.Revision)
		if retain > 0 {
			removed, err := Prune(ctx, opts.Dir, ScheduledName, retain)
			if err != nil {
				logrus.Errorf("Pruning scheduled snapshots: %v", err)
			}
			for _, p := range removed {
				logrus.Infof("Snapshot pruned (retention %d): %s", retain, p)
			}
		}
	}
}

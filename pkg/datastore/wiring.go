package datastore

import (
	"errors"
	"fmt"

	"github.com/k3s-io/kine/pkg/drivers"
	kinemetrics "github.com/k3s-io/kine/pkg/metrics"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/harikube/harikube/pkg/index"
)

// wiring carries one datastore's own dependencies to harikube's driver
// constructors. Kine builds a driver from its scheme and hands it only a
// drivers.Config, whose metrics registerer is the one field that can hold an
// object: Start passes this value there, so each datastore gets its registry
// and metrics explicitly, whatever else runs in the process.
type wiring struct {
	labelled prometheus.Registerer // the store's metrics, with its datastore label; nil exports none
	shared   prometheus.Registerer // kine's process-wide collectors, without a label
	registry *index.Registry
	metrics  *metrics
	built    *backend   // set by the constructor
	failed   chan error // what ends the datastore early; buffered, first only
}

// fail reports what stops the datastore from going on; the first report wins.
func (w *wiring) fail(err error) {
	select {
	case w.failed <- err:
	default:
	}
}

var _ prometheus.Registerer = (*wiring)(nil)

// Register puts kine's process-wide SQL counters in the shared registerer
// once (they count every datastore together) and everything else, such as
// the connection pool's statistics, under this datastore's label.
func (w *wiring) Register(c prometheus.Collector) error {
	r := w.labelled
	if kineShared(c) {
		r = w.shared
	}
	if r == nil {
		return nil
	}
	err := r.Register(c)
	if are := (prometheus.AlreadyRegisteredError{}); errors.As(err, &are) && kineShared(c) {
		return nil
	}
	return err
}

func (w *wiring) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := w.Register(c); err != nil {
			panic(err)
		}
	}
}

func (w *wiring) Unregister(c prometheus.Collector) bool {
	return w.labelled != nil && w.labelled.Unregister(c)
}

func kineShared(c prometheus.Collector) bool {
	switch c {
	case kinemetrics.SQLTotal, kinemetrics.SQLTime, kinemetrics.CompactTotal, kinemetrics.InsertErrorsTotal:
		return true
	}
	return false
}

// wiringOf returns the dependencies Start passed with cfg.
func wiringOf(cfg *drivers.Config) (*wiring, error) {
	w, ok := cfg.MetricsRegisterer.(*wiring)
	if !ok {
		return nil, fmt.Errorf("harikube's %s driver is started by datastore.Start only", cfg.Scheme)
	}
	return w, nil
}

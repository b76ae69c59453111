package datastore

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are one datastore's counters; the registerer Start gives them
// adds its datastore label.
type metrics struct {
	requests      *prometheus.CounterVec
	rows          *prometheus.CounterVec
	watchFiltered prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "harikube_datastore_selection_requests_total",
			Help: "Reads that reached the datastore with a label or field selection, by resource and kind (list, count, watch).",
		}, []string{"resource", "kind"}),
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "harikube_datastore_selection_rows_total",
			Help: "Rows the datastore returned for lists with a selection, by resource.",
		}, []string{"resource"}),
		watchFiltered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "harikube_datastore_watch_events_filtered_total",
			Help: "Watch events the datastore did not send because neither the new nor the previous value matched the watch's selection.",
		}),
	}
}

// register adds the counters to r. A datastore of the same name started
// again in this process (tests) keeps counting in the counters registered
// first.
func (m *metrics) register(r prometheus.Registerer) error {
	if r == nil {
		return nil
	}
	var err error
	if m.requests, err = registered(r, m.requests); err != nil {
		return err
	}
	if m.rows, err = registered(r, m.rows); err != nil {
		return err
	}
	m.watchFiltered, err = registered(r, m.watchFiltered)
	return err
}

func registered[C prometheus.Collector](r prometheus.Registerer, c C) (C, error) {
	err := r.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, err
}

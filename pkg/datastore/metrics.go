package datastore

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	metricRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "harikube_datastore_selection_requests_total",
		Help: "Reads that reached the datastore with a label or field selection, by resource and kind (list, count, watch).",
	}, []string{"resource", "kind"})
	metricRows = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "harikube_datastore_selection_rows_total",
		Help: "Rows the datastore returned for lists with a selection, by resource.",
	}, []string{"resource"})
	metricWatchFiltered = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "harikube_datastore_watch_events_filtered_total",
		Help: "Watch events the datastore did not send because neither the new nor the previous value matched the watch's selection.",
	})
)

// registerMetrics adds the datastore's collectors to r; registering them
// again (a second datastore in one process) is not an error.
func registerMetrics(r prometheus.Registerer) error {
	if r == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{metricRequests, metricRows, metricWatchFiltered} {
		if err := r.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

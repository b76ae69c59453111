package pushdown

import (
	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

var (
	metricRequests = metrics.NewCounterVec(&metrics.CounterOpts{
		Name:           "harikube_apiserver_pushdown_requests_total",
		Help:           "LIST and WATCH requests whose label or field selectors the apiserver sent to the datastore, by resource and verb.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"resource", "verb"})
	metricItemsKept = metrics.NewCounterVec(&metrics.CounterOpts{
		Name:           "harikube_apiserver_pushdown_items_kept_total",
		Help:           "Objects the apiserver kept after re-applying the predicate to pushed-down LISTs, by resource; compare with harikube_datastore_selection_rows_total.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"resource"})
	metricDecodedReused = metrics.NewCounterVec(&metrics.CounterOpts{
		Name:           "harikube_apiserver_decoded_values_reused_total",
		Help:           "Decodes of a custom resource's stored value answered with a copy of what indexing the write had decoded, by resource.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"resource"})
)

func init() {
	legacyregistry.MustRegister(metricRequests, metricItemsKept, metricDecodedReused)
}

package datastore

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/k3s-io/kine/pkg/tls"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/harikube/harikube/pkg/index"
)

// TestTwoDatastoresInOneProcess: two datastores share a metrics registry
// without clashing, each counts under its own datastore label, each indexes
// with the registry passed to it, and the default one records, counts and
// forgets routes.
func TestTwoDatastoresInOneProcess(t *testing.T) {
	ctx := context.Background()
	metrics := prometheus.NewRegistry()
	dir := t.TempDir()
	def := startWith(t, Options{DataDir: dir, Registry: index.NewRegistry(), MetricsRegisterer: metrics})
	eventsDB := filepath.Join(dir, "db", "events.db")
	events := startWith(t, Options{DataDir: dir, Name: "events", Endpoint: "sqlite://" + eventsDB,
		Listener: "unix://" + filepath.Join(dir, "events.sock"), Registry: index.NewRegistry(), MetricsRegisterer: metrics})

	put(t, def.client, prefix+"ns/a", object("a", map[string]string{"app": "web"}, "red"))
	put(t, events.client, prefix+"ns/b", object("b", map[string]string{"app": "web"}, "red"))
	put(t, events.client, prefix+"ns/c", object("c", map[string]string{"app": "db"}, "red"))
	for _, e := range []*env{def, events} {
		if keys, _ := list(t, e.client, selected(t, "app=web", "")); len(keys) != 1 {
			t.Errorf("datastore %s: app=web gave %v", e.ds.Name, keys)
		}
	}

	families, err := metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string][]string{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			datastore := ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "datastore" {
					datastore = l.GetValue()
				}
			}
			labels[f.GetName()] = append(labels[f.GetName()], datastore)
		}
	}
	if got := strings.Join(labels["harikube_datastore_selection_requests_total"], ","); got != "default,events" {
		t.Errorf("harikube_datastore_selection_requests_total by datastore: %s, want default,events", got)
	}
	if got := labels["go_sql_open_connections"]; len(got) != 2 {
		t.Errorf("go_sql_open_connections by datastore: %v, want one each", got)
	}
	if got := labels["kine_sql_total"]; len(got) == 0 || got[0] != "" {
		t.Errorf("kine_sql_total: %v, want it once for the process, without a datastore label", got)
	}

	// Routes, as the server records them in the default datastore.
	if err := def.ds.RecordRoute(ctx, "", "widgets", prefix); err != nil {
		t.Fatal(err)
	}
	if err := def.ds.RecordRoute(ctx, "sqlite://"+eventsDB, "events", "/registry/events/"); err != nil {
		t.Fatal(err)
	}
	if err := def.ds.RecordRoute(ctx, "sqlite://"+eventsDB, "events.events.k8s.io", "/registry/events/"); err != nil {
		t.Fatal(err)
	}
	routes, err := def.ds.Routes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 2 || routes[0].Datastore != "" || routes[1].Datastore != "sqlite://"+eventsDB ||
		strings.Join(routes[1].Resources, ",") != "events,events.events.k8s.io" {
		t.Fatalf("routes: %+v", routes)
	}
	if n, err := events.ds.LiveKeys(ctx, prefix); err != nil || n != 2 {
		t.Errorf("live keys in events: %d %v, want 2", n, err)
	}
	del(t, events.client, prefix+"ns/c")
	events.stop()
	if n, err := LiveKeysAt(ctx, "sqlite://"+eventsDB, tls.Config{}, prefix); err != nil || n != 1 {
		t.Errorf("live keys in the stopped events database: %d %v, want 1", n, err)
	}
	if n, err := LiveKeysAt(ctx, "sqlite://"+filepath.Join(dir, "none.db"), tls.Config{}, prefix); err != nil || n != 0 {
		t.Errorf("live keys in a missing database: %d %v, want 0", n, err)
	}
	if err := def.ds.ForgetRoute(ctx, "sqlite://"+eventsDB, "/registry/events/"); err != nil {
		t.Fatal(err)
	}
	if routes, err = def.ds.Routes(ctx); err != nil || len(routes) != 1 {
		t.Fatalf("routes after forgetting: %+v %v", routes, err)
	}
}

package e2e

import (
	"context"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/harikube/harikube/tests/pgserver"
	"github.com/harikube/harikube/tests/testserver"
)

// TestPostgresRestartKeepsObjects: harikube on PostgreSQL stops cleanly and,
// restarted against the same database, serves every object, and selector
// lists still use the index.
func TestPostgresRestartKeepsObjects(t *testing.T) {
	pg := pgserver.Start(t)
	s := testserver.Start(t, "--datastore-endpoint="+pg.DSN())
	ctx := context.Background()
	dyn := createGadgetCRD(t, s.Config)
	for i := range 20 {
		if _, err := dyn.Namespace("default").Create(ctx, gadget(fmt.Sprintf("r%02d", i), map[string]string{"even": fmt.Sprint(i%2 == 0)}, "red"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kept", Namespace: "default"}, Data: map[string]string{"k": "v"}}
	if _, err := s.Client.CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if code := s.Stop(t); code != 0 {
		t.Fatalf("stop exit code %d", code)
	}
	s.Restart(t)
	got, err := s.Client.CoreV1().ConfigMaps("default").Get(ctx, "kept", metav1.GetOptions{})
	if err != nil || got.Data["k"] != "v" {
		t.Fatalf("configmap after restart: %v %v", got, err)
	}
	list, err := dyn.Namespace("default").List(ctx, metav1.ListOptions{LabelSelector: "even=true"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 10 {
		t.Fatalf("even=true after restart: %d objects, want 10", len(list.Items))
	}
	if s.Metric(t, "harikube_datastore_selection_rows_total", `resource="gadgets.pushdown.harikube.io"`) != 10 {
		t.Fatal("the selector list after restart was not answered by the index")
	}
}

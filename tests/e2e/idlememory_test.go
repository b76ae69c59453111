package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/harikube/harikube/tests/testserver"
)

// TestIdleCollectorTarget: the server's Go collector runs at the busy
// target (GOGC 50) under load and at the idle one (GOGC 10) once the load
// stops, as Go's own go_gc_gogc_percent reports it.
func TestIdleCollectorTarget(t *testing.T) {
	t.Parallel()
	s := testserver.Start(t)
	ctx := context.Background()
	// Each read of /metrics allocates about 6 MB (its text is 2.5 MB):
	// read every second, the reads alone would keep the server busy.
	gogc := func(want float64, within time.Duration, what string) {
		t.Helper()
		var last float64
		err := wait.PollUntilContextTimeout(ctx, 10*time.Second, within, false, func(context.Context) (bool, error) {
			last = s.Metric(t, "go_gc_gogc_percent")
			return last == want, nil
		})
		if err != nil {
			t.Fatalf("%s: go_gc_gogc_percent %v after %s, want %v", what, last, within, want)
		}
	}
	// A LIST of 200 ConfigMaps of 10 KiB decodes and encodes about 2 MiB;
	// listing them in a loop allocates far above the busy threshold.
	data := map[string]string{"v": strings.Repeat("x", 10<<10)}
	for i := range 200 {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("load-%03d", i), Namespace: "default"}, Data: data}
		if _, err := s.Client.CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	loadDone := make(chan error, 1)
	go func() {
		for loadCtx.Err() == nil {
			if _, err := s.Client.CoreV1().ConfigMaps("default").List(loadCtx, metav1.ListOptions{}); err != nil && loadCtx.Err() == nil {
				loadDone <- err
				return
			}
		}
		loadDone <- nil
	}()
	gogc(50, time.Minute, "under a LIST loop")
	stopLoad()
	if err := <-loadDone; err != nil {
		t.Fatal(err)
	}
	gogc(10, 90*time.Second, "idle after the load")
}

package bench

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
)

// churnWidget is extra widget k: its labels and shard match no LIST
// workload, and it is deleted again before the next size.
func churnWidget(k int) *unstructured.Unstructured {
	return newWidget(fmt.Sprintf("churn-%07d", k), map[string]any{"bench-churn": "true"},
		fmt.Sprintf("churn-%d", k), payload(-1000-k))
}

// measureChurn creates min(n, most) extra widgets, then times an update
// of each (a merge patch of spec.payload) and a delete of each with the
// seeding clients, leaving the data set as it was.
func measureChurn(ctx context.Context, c dynamic.Interface, cpu func() (float64, error), n, most, workers int, con *console) (updates, deletes Throughput, err error) {
	rc := c.Resource(widgets).Namespace(namespace)
	count := min(n, most)
	var retries atomic.Int64
	if _, err := inParallel(ctx, con, "creating widgets to update and delete", 0, count, workers, func(k int) error {
		return createWithRetry(ctx, rc, churnWidget(k), &retries)
	}); err != nil {
		return updates, deletes, fmt.Errorf("create churn widgets: %w", err)
	}
	timed := func(what string, alreadyDone func(error) bool, do func(k int) error) (t Throughput, err error) {
		retries.Store(0)
		err = withCPU(cpu, &t, func() error {
			elapsed, err := inParallel(ctx, con, what, 0, count, workers, func(k int) error {
				return withRetry(ctx, &retries, alreadyDone, func() error { return do(k) })
			})
			t = Throughput{Objects: count, Workers: workers, Seconds: elapsed.Seconds(), PerSecond: float64(count) / elapsed.Seconds(), Retries: retries.Load()}
			return err
		})
		return t, err
	}
	if updates, err = timed("updating", nil, func(k int) error {
		patch := fmt.Appendf(nil, `{"spec":{"payload":%q}}`, payload(-2000-k))
		_, err := rc.Patch(ctx, churnWidget(k).GetName(), types.MergePatchType, patch, metav1.PatchOptions{})
		return err
	}); err != nil {
		return updates, deletes, fmt.Errorf("update: %w", err)
	}
	if deletes, err = timed("deleting", apierrors.IsNotFound, func(k int) error {
		return rc.Delete(ctx, churnWidget(k).GetName(), metav1.DeleteOptions{})
	}); err != nil {
		return updates, deletes, fmt.Errorf("delete: %w", err)
	}
	con.printf("  %d updates: %.0f/s, %.2f CPU s per 1,000; %d deletes: %.0f/s, %.2f CPU s per 1,000 (%d clients)\n",
		count, updates.PerSecond, updates.CPUSecondsPer1000, count, deletes.PerSecond, deletes.CPUSecondsPer1000, workers)
	return updates, deletes, nil
}

// withRetry repeats a request that failed transiently. alreadyDone, when
// set, tells an error of a repeated attempt that means an earlier attempt
// took effect (not found for a delete, already exists for a create).
func withRetry(ctx context.Context, retries *atomic.Int64, alreadyDone func(error) bool, do func() error) error {
	const attempts = 5
	for attempt := 0; ; attempt++ {
		err := do()
		switch {
		case err == nil:
			return nil
		case alreadyDone != nil && attempt > 0 && alreadyDone(err):
			return nil
		case attempt+1 == attempts || ctx.Err() != nil || !transient(err):
			return err
		}
		retries.Add(1)
		time.Sleep(time.Duration(attempt+1) * 200 * time.Millisecond)
	}
}

// createWithRetry creates obj, repeating a create that failed transiently.
func createWithRetry(ctx context.Context, rc dynamic.ResourceInterface, obj *unstructured.Unstructured, retries *atomic.Int64) error {
	return withRetry(ctx, retries, apierrors.IsAlreadyExists, func() error {
		_, err := rc.Create(ctx, obj, metav1.CreateOptions{})
		return err
	})
}

// deleteWithRetry deletes name, repeating a delete that failed transiently.
func deleteWithRetry(ctx context.Context, rc dynamic.ResourceInterface, name string, retries *atomic.Int64) error {
	return withRetry(ctx, retries, apierrors.IsNotFound, func() error {
		return rc.Delete(ctx, name, metav1.DeleteOptions{})
	})
}

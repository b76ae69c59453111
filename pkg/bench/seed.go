package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
)

// createCRD creates the widget CRD and waits until widgets can be listed
// and created: the first creates of a new resource are slow (the apiserver
// prepares its handler), which is no part of the create throughput.
func createCRD(ctx context.Context, c dynamic.Interface, annotations map[string]string, timeout time.Duration) error {
	crd := widgetCRD()
	crd.SetAnnotations(annotations)
	if _, err := c.Resource(crds).Create(ctx, crd, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create CRD %s: %w", crdName, err)
	}
	rc := c.Resource(widgets).Namespace(namespace)
	deadline := time.Now().Add(timeout)
	for {
		crd, err := c.Resource(crds).Get(ctx, crdName, metav1.GetOptions{})
		if err == nil && !established(crd) {
			err = fmt.Errorf("CRD %s not established", crdName)
		}
		if err == nil {
			_, err = rc.List(ctx, metav1.ListOptions{Limit: 1})
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("widgets not servable after %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	probe := watchWidget(-1)
	probe.SetName("probe")
	var retries atomic.Int64
	for k := 0; k < 2; k++ {
		if err := createWithRetry(ctx, rc, probe, &retries); err != nil {
			return fmt.Errorf("create a first widget: %w", err)
		}
		if err := deleteWithRetry(ctx, rc, probe.GetName(), &retries); err != nil {
			return fmt.Errorf("delete the first widget: %w", err)
		}
	}
	return nil
}

func established(crd *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}

// Throughput is how fast the seeding clients created objects (those added
// for this size).
type Throughput struct {
	Objects   int     `json:"objects"`
	Workers   int     `json:"workers"`
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"per_second"`
	// Retries counts creates repeated after a transient error.
	Retries int64 `json:"retries"`
	// CPUSecondsPer1000 is the server's CPU time (with etcd's in the etcd
	// mode) per 1,000 operations: steadier than the rate on a busy machine.
	CPUSecondsPer1000 float64 `json:"cpu_seconds_per_1000,omitempty"`
	// cut is what an interrupted seeding created, so that the LISTs can be
	// checked at the size it reached.
	cut *cutSeeding
}

// cutSeeding is a seeding that ended early: widgets from..attempted-1 were
// attempted, created[i-from] tells which creates succeeded, and failed
// lists those whose outcome the client did not learn.
type cutSeeding struct {
	from, attempted int
	created         []bool
	failed          []int
}

// seed creates widgets from..n-1 with the given number of concurrent
// clients, showing a progress line every second. When it fails it still
// returns how many it created, and how fast.
func seed(ctx context.Context, c dynamic.Interface, from, n, workers int, con *console) (Throughput, error) {
	rc := c.Resource(widgets).Namespace(namespace)
	var retries, created, attempted atomic.Int64
	cut := &cutSeeding{from: from, created: make([]bool, n-from)}
	var mu sync.Mutex
	elapsed, err := inParallel(ctx, con, "seeding", from, n, workers, func(i int) error {
		storeMax(&attempted, int64(i+1))
		if err := createWithRetry(ctx, rc, widget(i), &retries); err != nil {
			mu.Lock()
			cut.failed = append(cut.failed, i)
			mu.Unlock()
			return fmt.Errorf("create %s: %w", widgetName(i), err)
		}
		cut.created[i-from] = true // each i is one worker's
		created.Add(1)
		return nil
	})
	if err == nil {
		err = ctx.Err() // the workers stop quietly when the context ends
	}
	t := Throughput{Objects: int(created.Load()), Workers: workers, Seconds: elapsed.Seconds(), PerSecond: float64(created.Load()) / elapsed.Seconds(), Retries: retries.Load()}
	if err != nil {
		cut.attempted = int(attempted.Load())
		t.cut = cut
		return t, err
	}
	con.printf("seeded %d objects (%d→%d) in %.1fs with %d clients: %.0f creates/s\n", t.Objects, from, n, t.Seconds, workers, t.PerSecond)
	return t, nil
}

// inParallel runs do(i) for i in [from, n) from workers concurrent
// clients, showing a progress line every second, and returns how long it
// took. The first error stops it.
func inParallel(ctx context.Context, con *console, what string, from, n, workers int, do func(i int) error) (time.Duration, error) {
	var next, done atomic.Int64
	next.Store(int64(from))
	done.Store(int64(from))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := do(i); err != nil {
					errs <- err
					cancel()
					return
				}
				done.Add(1)
			}
		}()
	}
	stopProgress := con.progress(func() string {
		d := done.Load()
		return fmt.Sprintf("%s %d/%d (%.0f/s)", what, d, n, float64(d-int64(from))/time.Since(start).Seconds())
	})
	wg.Wait()
	elapsed := time.Since(start)
	stopProgress()
	close(errs)
	return elapsed, <-errs
}

func transient(err error) bool {
	return apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) || apierrors.IsTooManyRequests(err) ||
		apierrors.IsInternalError(err) || apierrors.IsServiceUnavailable(err) || apierrors.IsUnexpectedServerError(err) ||
		!isStatusError(err)
}

// isStatusError tells API errors from transport errors (a reset
// connection), which are worth repeating.
func isStatusError(err error) bool {
	var status apierrors.APIStatus
	return errors.As(err, &status)
}

package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestStallWatch: the watch cancels the mode only when the server fails
// to answer, with the cgroup at its limit, for the given number of checks
// in a row; an answer in between starts the count again. It returns once
// its context ends.
func TestStallWatch(t *testing.T) {
	errDown := errors.New("no answer")
	// answers follows pattern (true: answers) check by check, then stays up.
	answers := func(pattern ...bool) func(context.Context) error {
		var n atomic.Int32
		return func(context.Context) error {
			i := int(n.Add(1)) - 1
			if i >= len(pattern) || pattern[i] {
				return nil
			}
			return errDown
		}
	}
	for _, tc := range []struct {
		name    string
		answers func(context.Context) error
		atLimit bool
		stalled bool
	}{
		{"unanswering at the limit", answers(false, false, false), true, true},
		{"unanswering below the limit", answers(false, false, false, false, false), false, false},
		{"answering at the limit", answers(), true, false},
		{"an answer between failures", answers(false, false, true, false, false, true), true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			w := stallWatch{every: 5 * time.Millisecond, strikes: 3, answers: tc.answers, atLimit: func() bool { return tc.atLimit }}
			done := make(chan struct{})
			go func() { w.run(ctx, cancel); close(done) }()
			if tc.stalled {
				select {
				case <-done:
				case <-time.After(5 * time.Second):
					t.Fatal("the watch did not end the mode")
				}
			} else {
				time.Sleep(200 * time.Millisecond) // 40 checks
				cancel(nil)
				select {
				case <-done:
				case <-time.After(5 * time.Second):
					t.Fatal("the watch did not return once its context ended")
				}
			}
			if got := errors.Is(context.Cause(ctx), errStalledAtLimit); got != tc.stalled {
				t.Errorf("stalled: %v, want %v", got, tc.stalled)
			}
		})
	}
}

// TestClassifyRequestTimeout: both ways an apiserver's --request-timeout
// ends a LIST are a reported end, and another server error is a failure.
func TestClassifyRequestTimeout(t *testing.T) {
	serverError := func(msg string) error {
		return &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: http.StatusInternalServerError, Reason: metav1.StatusReasonUnknown, Message: msg}}
	}
	for _, tc := range []struct {
		name  string
		err   error
		cause string
	}{
		{"the timeout filter's 504", apierrors.NewTimeoutError("request did not complete within the allotted timeout", 0), "request-timeout"},
		// What a LIST on kine-stock got in CI with --request-timeout=200ms.
		{"the datastore call's deadline", serverError("rpc error: code = DeadlineExceeded desc = stream terminated by RST_STREAM with error code: CANCEL"), "request-timeout"},
		{"the datastore call's context", serverError("context deadline exceeded"), "request-timeout"},
		{"another server error", serverError("rpc error: code = Unavailable desc = connection refused"), ""},
		{"a client-side deadline", fmt.Errorf("list: %w", context.DeadlineExceeded), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e modeEnder
			if cause, reason := e.classify(context.Background(), tc.err, nil, nil); cause != tc.cause {
				t.Errorf("classified as %q (%s), want %q", cause, reason, tc.cause)
			}
		})
	}
}

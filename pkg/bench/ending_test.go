package bench

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
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

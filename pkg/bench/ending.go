package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ModeEnd is a mode that ended before its last size for a reason the bench
// expects at large N: out of memory under --memory-limit, its --mode-budget
// spent, etcd's quota full, a request the apiserver timed out, or a server
// that exited. The bench reports it with the figures so far and goes on
// with the next mode.
type ModeEnd struct {
	Mode string `json:"mode"`
	// Cause is "memory", "time", "etcd-quota", "request-timeout" or "exited".
	Cause  string `json:"cause"`
	Reason string `json:"reason"`
	// Seconds is how long the mode ran.
	Seconds float64 `json:"seconds"`
	// Reached is the size being measured when it ended: N is the objects
	// created by then, Create the rate of those of this size, and the LISTs
	// and watch hold what was measured at this size before the end.
	Reached Result `json:"reached"`
	// CgroupPeakBytes is the memory cgroup's peak during the mode (the bench
	// process included, page cache too), with --memory-limit.
	CgroupPeakBytes int64 `json:"cgroup_peak_bytes,omitempty"`
}

// modeEnded carries a ModeEnd out of runMode.
type modeEnded struct{ end ModeEnd }

func (e *modeEnded) Error() string { return e.end.Reason }

// errModeBudget is the cause of a mode's context when --mode-budget ran out.
var errModeBudget = errors.New("mode budget spent")

// modeEnder turns an error in a mode into a ModeEnd when it is one of the
// ends the bench reports.
type modeEnder struct {
	mode   string
	begin  time.Time
	budget time.Duration
	memCap *memoryCap
	// oomBefore is the cgroup's OOM kill count when the mode began.
	oomBefore int64
	dbDir     string
	// lists and con time and print the LISTs at the size a cut seeding
	// reached.
	lists Repetition
	con   *console
}

func newModeEnder(mode string, opts Options, memCap *memoryCap, con *console) (*modeEnder, error) {
	e := &modeEnder{mode: mode, begin: time.Now(), budget: opts.ModeBudget, memCap: memCap, lists: opts.Repetition, con: con}
	if memCap != nil {
		if err := memCap.resetPeak(); err != nil {
			return nil, err
		}
		var err error
		if e.oomBefore, err = memCap.oomKills(); err != nil {
			return nil, fmt.Errorf("memory cgroup: %w", err)
		}
	}
	return e, nil
}

// reclaimNotKill says why a server short of memory stalls instead of
// being killed.
const reclaimNotKill = "the kernel reclaims the executable's pages and reads them back rather than killing it"

// errStalledAtLimit is the cause of a mode's context when its server
// stopped answering while its cgroup kept reaching --memory-limit, and is
// wrapped by the error of a start that timed out so.
var errStalledAtLimit = errors.New("server stalled at the memory limit")

// markStalled wraps errStalledAtLimit into a start's timeout (errNotReady)
// when the cgroup is still reaching its limit, checked before the process
// is stopped.
func (c *memoryCap) markStalled(err error) error {
	if c != nil && errors.Is(err, errNotReady) && c.hitsLimitWithin(time.Second) {
		return fmt.Errorf("%w (%w)", err, errStalledAtLimit)
	}
	return err
}

// Short of memory, the kernel reclaims a server's executable pages (clean,
// so it can) and reads them back rather than killing it; the process then
// crawls, and the clients' retries would wait on it for ever. A server that
// fails stallStrikes checks in a row, stallCheckEvery apart, each without
// an answer from /readyz within stallProbeTimeout while the cgroup was at
// its limit, has stalled there.
const (
	stallCheckEvery   = 10 * time.Second
	stallProbeTimeout = 10 * time.Second
	stallStrikes      = 3
)

// stallWatch ends a mode whose server stalls at the memory limit.
type stallWatch struct {
	every   time.Duration
	strikes int
	// answers probes the server; atLimit reports whether the cgroup is
	// (still) reaching its limit.
	answers func(context.Context) error
	atLimit func() bool
}

// run cancels the mode with errStalledAtLimit once the server has stalled,
// and returns when ctx ends.
func (w stallWatch) run(ctx context.Context, cancel context.CancelCauseFunc) {
	tick := time.NewTicker(w.every)
	defer tick.Stop()
	strikes := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if w.answers(ctx) == nil || ctx.Err() != nil || !w.atLimit() {
			strikes = 0
			continue
		}
		if strikes++; strikes >= w.strikes {
			cancel(errStalledAtLimit)
			return
		}
	}
}

// watchStall watches srv while the mode runs, when the servers have a
// memory limit; stop ends the watch and waits for it (once; later calls
// return at once).
func (e *modeEnder) watchStall(ctx context.Context, srv *server) (context.Context, func()) {
	if e.memCap == nil {
		return ctx, func() {}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	w := stallWatch{every: stallCheckEvery, strikes: stallStrikes,
		answers: func(ctx context.Context) error { return srv.answers(ctx, stallProbeTimeout) },
		atLimit: func() bool { return e.memCap.hitsLimitWithin(time.Second) }}
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.run(ctx, cancel)
	}()
	var once sync.Once
	return ctx, func() {
		once.Do(func() {
			cancel(nil)
			<-done
		})
	}
}

// withBudget bounds the mode's context by --mode-budget.
func (e *modeEnder) withBudget(ctx context.Context) (context.Context, context.CancelFunc) {
	if e.budget <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeoutCause(ctx, e.budget, errModeBudget)
}

// end returns a *modeEnded for an expected end, with what was measured at
// the size being reached (res, nil when the end came after the last size;
// seeded objects existed before it); any other error is returned as it is.
// srv is nil when the server did not start.
func (e *modeEnder) end(ctx context.Context, err error, srv *server, etcd *process, seeded int, res *Result) error {
	cause, reason := e.classify(ctx, err, srv, etcd)
	if cause == "" {
		return err
	}
	reached := Result{Mode: e.mode, N: seeded}
	if res != nil {
		reached = *res
		reached.N = seeded + res.Create.Objects
		if cut := res.Create.cut; cut != nil && cause == "time" && srv != nil && !srv.exited() {
			var lerr error
			if reached.Lists, reached.N, lerr = e.measureReached(ctx, srv, cut); lerr != nil {
				e.con.printf("  LISTs at the size reached: %v\n", lerr)
			}
		}
	}
	if srv != nil {
		reached.ServerPeakRSSBytes = peakRSSOrSampled(srv.process)
		reached.ServerPeakAnonBytes = srv.peakAnon.Load()
		reached.ServerPeakAnonDuring = srv.peakAnonDuring()
	}
	if etcd != nil {
		reached.EtcdPeakRSSBytes = peakRSSOrSampled(etcd)
		reached.EtcdPeakAnonBytes = etcd.peakAnon.Load()
	}
	if e.dbDir != "" {
		reached.DatabaseBytes, _ = dirSize(e.dbDir)
	}
	end := ModeEnd{Mode: e.mode, Cause: cause, Reason: reason, Seconds: time.Since(e.begin).Seconds(), Reached: reached}
	if e.memCap != nil {
		end.CgroupPeakBytes, _ = e.memCap.peak()
	}
	return &modeEnded{end: end}
}

// reachedGrace bounds the LISTs timed after the time budget is spent.
const reachedGrace = 3 * time.Minute

// measureReached times the selective LISTs at the size a seeding cut short
// by the time budget reached, each checked against the widgets it created
// (asking the server about the creates whose outcome the client did not
// learn), within a grace period of its own. It returns them and the number
// of widgets.
func (e *modeEnder) measureReached(ctx context.Context, srv *server, cut *cutSeeding) ([]ListResult, int, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reachedGrace)
	defer cancel()
	rc := srv.client.Resource(widgets).Namespace(namespace)
	for _, i := range cut.failed {
		_, err := rc.Get(ctx, widgetName(i), metav1.GetOptions{})
		switch {
		case err == nil:
			cut.created[i-cut.from] = true
		case !apierrors.IsNotFound(err):
			return nil, 0, fmt.Errorf("check %s: %w", widgetName(i), err)
		}
	}
	n := cut.from
	for _, ok := range cut.created {
		if ok {
			n++
		}
	}
	exists := func(i int) bool { return i < cut.from || cut.created[i-cut.from] }
	e.con.printf("[%s, N=%d reached] selective LISTs (within %s after the budget)\n", e.mode, n, reachedGrace)
	var out []ListResult
	for _, w := range Workloads() {
		if !w.Selective {
			continue
		}
		match := w.match
		w.match = func(i int) bool { return match(i) && exists(i) }
		lr, err := measureList(ctx, srv.client, w, max(cut.from, cut.attempted), e.lists)
		if err != nil {
			return out, n, err
		}
		out = append(out, lr)
		e.con.printf("  %-44s p50 %9.2f ms  p95 %9.2f ms  (%d runs, %d objects, %d pages)\n",
			w.Title, lr.P50Ms, lr.P95Ms, lr.Samples, lr.Got, lr.Pages)
	}
	return out, n, nil
}

// classify names the end an error is, or returns "" when it is a failure.
func (e *modeEnder) classify(ctx context.Context, err error, srv *server, etcd *process) (cause, reason string) {
	var procs []*process
	if srv != nil {
		procs = append(procs, srv.process)
	}
	if etcd != nil {
		procs = append(procs, etcd)
	}
	// A killed process is noticed a moment after its clients see the
	// connection go.
	var gone *process
	for deadline := time.Now().Add(3 * time.Second); gone == nil && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		for _, p := range procs {
			if p.exited() {
				gone = p
				break
			}
		}
		if gone == nil && !isConnectionError(err) {
			break
		}
	}
	if e.memCap != nil {
		if kills, kerr := e.memCap.oomKills(); kerr == nil && kills > e.oomBefore {
			who := "a process"
			if gone != nil {
				who = gone.name
			}
			return "memory", fmt.Sprintf("out of memory: the kernel's OOM killer ended %s at the memory limit of %s (--memory-limit); the bench saw: %s",
				who, gib(e.memCap.limit), firstLine(err))
		}
		// Short of memory, the kernel keeps reclaiming the executable's
		// pages (clean, so it can) and faulting them back in, instead of
		// killing the process: a server that cannot start, or that stops
		// answering while its cgroup is still at the limit, ended there.
		if errors.Is(err, errNotReady) && errors.Is(err, errStalledAtLimit) {
			return "memory", fmt.Sprintf("out of memory: the server did not become ready at the memory limit of %s (--memory-limit), which it kept reaching; %s; the bench saw: %s",
				gib(e.memCap.limit), reclaimNotKill, firstLine(err))
		}
		// ctx still live: a probe on an ended context fails for that alone.
		if gone == nil && srv != nil && ctx.Err() == nil && isConnectionError(err) && !errors.Is(err, context.DeadlineExceeded) &&
			srv.answers(ctx, stallProbeTimeout) != nil && e.memCap.hitsLimitWithin(time.Second) {
			return "memory", fmt.Sprintf("out of memory: the server stopped answering at the memory limit of %s (--memory-limit), which it kept reaching; %s; the bench saw: %s",
				gib(e.memCap.limit), reclaimNotKill, firstLine(err))
		}
	}
	if gone != nil {
		return "exited", fmt.Sprintf("%s exited: %v; the bench saw: %s", gone.name, gone.err, firstLine(err))
	}
	if strings.Contains(err.Error(), "database space exceeded") {
		return "etcd-quota", "etcd's quota is full (mvcc: database space exceeded)"
	}
	if errors.Is(context.Cause(ctx), errStalledAtLimit) {
		return "memory", fmt.Sprintf("out of memory: the server stopped answering at the memory limit of %s (--memory-limit): /readyz unanswered for %d checks in a row, every %s or so, while the cgroup kept reaching its limit (%s); the bench saw: %s",
			gib(e.memCap.limit), stallStrikes, stallCheckEvery, reclaimNotKill, firstLine(err))
	}
	if errors.Is(context.Cause(ctx), errModeBudget) {
		return "time", fmt.Sprintf("time budget of %s spent (--mode-budget)", e.budget)
	}
	// What a watch-cache apiserver answers a LIST at a size it can no longer
	// serve in time; creates retry these, so one reaching here is final.
	if apierrors.IsTimeout(err) || apierrors.IsServerTimeout(err) || storageDeadlineExceeded(err) {
		return "request-timeout", fmt.Sprintf("the apiserver timed out a request (its --request-timeout, 60s unless set): %s", firstLine(err))
	}
	// A request that times out after its handler began to answer has its
	// stream reset instead; the apiserver counts both as terminated (504).
	if srv != nil && isConnectionError(err) && !errors.Is(err, context.DeadlineExceeded) {
		if n, merr := srv.timedOutRequests(ctx); merr == nil && n > 0 {
			return "request-timeout", fmt.Sprintf("the apiserver timed out %d requests (its --request-timeout, 60s unless set; apiserver_request_terminations_total, code 504), and reset this one: %s", n, firstLine(err))
		}
	}
	return "", ""
}

// storageDeadlineExceeded is the apiserver's answer when the request's
// deadline (its --request-timeout) ends the datastore call before the
// timeout filter answers 504: a 500 carrying the etcd client's gRPC status.
func storageDeadlineExceeded(err error) bool {
	var status apierrors.APIStatus
	if !errors.As(err, &status) || status.Status().Code != http.StatusInternalServerError {
		return false
	}
	msg := status.Status().Message
	return strings.Contains(msg, "code = DeadlineExceeded") || strings.Contains(msg, context.DeadlineExceeded.Error())
}

// isConnectionError is a transport error rather than an API error: what a
// client sees when its server has gone.
func isConnectionError(err error) bool {
	return !isStatusError(err) && !errors.Is(err, context.Canceled)
}

// peakRSSOrSampled is the kernel's peak RSS of a live process, else the
// largest sample of one that has exited.
func peakRSSOrSampled(p *process) int64 {
	if p.exited() {
		return p.peakResident.Load()
	}
	if v, err := p.peakRSS(); err == nil {
		return v
	}
	return p.peakResident.Load()
}

func gib(b int64) string {
	if b < 1<<30 {
		return mib(b)
	}
	return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
}

func firstLine(err error) string {
	line, _, _ := strings.Cut(err.Error(), "\n")
	return line
}

// writeEnded prints the modes that ended early, with the figures reached.
func (r *Report) writeEnded(w io.Writer) {
	if len(r.Ended) == 0 {
		return
	}
	fmt.Fprintln(w, "Modes that ended before their last size:")
	for _, e := range r.Ended {
		res := e.Reached
		fmt.Fprintf(w, "  %s: %s, after %.0f s, at N = %d (%d created at %.0f creates/s in this size); peak RSS %s (anonymous %s), database %s",
			e.Mode, e.Reason, e.Seconds, res.N, res.Create.Objects, res.Create.PerSecond,
			mib(res.ServerPeakRSSBytes+res.EtcdPeakRSSBytes), mib(res.ServerPeakAnonBytes+res.EtcdPeakAnonBytes), mib(res.DatabaseBytes))
		if e.CgroupPeakBytes > 0 {
			fmt.Fprintf(w, "; memory cgroup peak %s", mib(e.CgroupPeakBytes))
		}
		fmt.Fprintln(w)
		for _, l := range res.Lists {
			fmt.Fprintf(w, "    %-44s p50 %9.2f ms  p95 %9.2f ms\n", l.Title, l.P50Ms, l.P95Ms)
		}
	}
	fmt.Fprintln(w)
}

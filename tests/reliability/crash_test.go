package reliability

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/harikube/harikube/tests/testserver"
)

var (
	cycles     = flag.Int("cycles", 3, "TestCrashSafety: SIGKILL/restart cycles")
	killWindow = flag.Duration("kill-window", 6*time.Second, "TestCrashSafety: the kill comes at a random moment within this long after the writers start (at least 1.5 s)")
)

const crashNS = "crash"

// What TestCrashSafety writes: custom resources of its own CRD (stored as
// JSON, served uncached, selectors pushed down to SQL) and ConfigMaps
// (stored as protobuf, served from the watch cache).
type crashKind struct {
	name     string // "crasher" or "configmap"
	path     string // REST collection
	prefix   string // Kine key prefix of the namespace
	gvr      schema.GroupVersionResource
	writers  int
	watchers []string // label selectors watched throughout
}

// A state of one object as the client knows it.
type objState struct {
	exists bool
	token  string // unique per write: spec.value or data.v
	labels map[string]string
	rv     int64 // 0 when unknown (after a delete)
}

func (s objState) String() string {
	if !s.exists {
		return "absent"
	}
	return fmt.Sprintf("%s %v rv %d", s.token, s.labels, s.rv)
}

type outcome int

const (
	acked outcome = iota
	rejected
	unknown
)

// A write as the client saw it.
type writeOp struct {
	verb    string // create, update, delete
	token   string // "" for deletes
	labels  map[string]string
	outcome outcome
	rv      int64 // the acknowledged resourceVersion of a create or update
}

type trackedObject struct {
	kind    *crashKind
	name    string
	known   objState  // the state the client is sure of
	pending *objState // the state a write with a lost answer may have left
	tainted bool      // no more writes until the restart resolves it
	oldRVs  []int64   // earlier acknowledged versions, for stale writes
	ops     []writeOp // this cycle's writes
}

func (o *trackedObject) key() string { return o.kind.prefix + o.name }

type crashStats struct {
	acked, rejected, unknown     atomic.Int64
	unknownApplied, unknownLost  int
	ackedChecked, rejectChecked  int
	listChecks, watchEvents      int
	relists, watchResumes        int
	midCycleLists, unexpectedErr atomic.Int64
}

// TestCrashSafety: concurrent writers create, update and delete custom
// resources and ConfigMaps with changing labels while label-selector
// watchers follow them; the server is killed with SIGKILL at a random moment
// while writes are in flight, checked offline with `harikube datastore
// check`, and restarted on the same data directory. After every restart:
//
//   - every acknowledged write is in Kine's log with the resourceVersion the
//     client was given, and the object's state is the last acknowledged one,
//     or the state of the one write whose answer the kill swallowed;
//   - no rejected write (a stale update, a duplicate create, a stale delete)
//     is anywhere in the log;
//   - every label-selector LIST equals labels.Selector.Matches applied to a
//     full LIST at the same resourceVersion (also checked during the writes);
//   - each watcher, resuming from its last resourceVersion, received exactly
//     the events the log implies for its selector — each once, in order — or
//     got 410 Gone and relisted, and the relist equals the log's state.
//
// SIGKILL ends the process, not the machine: the database is in WAL mode with
// synchronous=NORMAL, durable against a process crash, not a power cut.
func TestCrashSafety(t *testing.T) {
	if *cycles < 1 {
		t.Fatalf("-cycles=%d: want at least 1", *cycles)
	}
	began := time.Now()
	s := testserver.Start(t)
	createNamespace(t, s, crashNS)
	crPath := createCRD(t, s.Config, "reliability.harikube.io", "crashers", "Crasher", crashNS)
	kinds := []*crashKind{{
		name:     "crasher",
		path:     crPath,
		prefix:   "/registry/reliability.harikube.io/crashers/" + crashNS + "/",
		gvr:      schema.GroupVersionResource{Group: "reliability.harikube.io", Version: "v1", Resource: "crashers"},
		writers:  2,
		watchers: []string{"tier=gold", "group in (a,b),num>3", "tier notin (gold,silver)"},
	}, {
		name:     "configmap",
		path:     "/api/v1/namespaces/" + crashNS + "/configmaps",
		prefix:   "/registry/configmaps/" + crashNS + "/",
		gvr:      schema.GroupVersionResource{Version: "v1", Resource: "configmaps"},
		writers:  2,
		watchers: []string{"tier=silver", "!tier"},
	}}
	// The namespace's kube-root-ca.crt is written by the controller manager;
	// let it land before the watchers' first lists.
	pollFor(t, "kube-root-ca.crt in "+crashNS, func(ctx context.Context) bool {
		_, err := s.Client.CoreV1().ConfigMaps(crashNS).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		return err == nil
	})

	a := newAPI(t, s.Config)
	st := &crashStats{}
	etcd := etcdClient(t, s.DataDir)
	logStart := map[string]int64{}
	start := currentRevision(t, etcd)
	for _, k := range kinds {
		logStart[k.name] = start
	}

	// Objects: each writer owns its own, so each object's writes are
	// sequential and its state is known exactly.
	objects := map[string]*trackedObject{}
	var writerSets [][]*trackedObject
	for _, k := range kinds {
		for w := 0; w < k.writers; w++ {
			var set []*trackedObject
			for i := 0; i < 12; i++ {
				o := &trackedObject{kind: k, name: fmt.Sprintf("w%d-%02d", w, i)}
				objects[o.key()] = o
				set = append(set, o)
			}
			writerSets = append(writerSets, set)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dyn := dynamic.NewForConfigOrDie(s.Config)
	var watchers []*selWatcher
	var wwg sync.WaitGroup
	for _, k := range kinds {
		for i, sel := range k.watchers {
			w := newSelWatcher(t, k, sel, dyn.Resource(k.gvr).Namespace(crashNS))
			w.windowStart = start
			// One sentinel per watcher: an object matching its selector,
			// written at the end of each cycle to know when it caught up.
			w.sentinel = &trackedObject{kind: k, name: fmt.Sprintf("sentinel-%d", i)}
			objects[w.sentinel.key()] = w.sentinel
			watchers = append(watchers, w)
			wwg.Add(1)
			go func() { defer wwg.Done(); w.run(ctx) }()
		}
	}
	for _, w := range watchers {
		w.waitListed(t)
	}
	var seq atomic.Int64
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	t.Logf("setup in %.1fs; %d cycles, kill window %s", time.Since(began).Seconds(), *cycles, *killWindow)

	for cycle := 1; cycle <= *cycles && !t.Failed(); cycle++ {
		cycleBegan := time.Now()
		cycleStart := currentRevision(t, etcd)

		// Write, with a checker comparing selector lists to the predicate
		// meanwhile, until SIGKILL.
		var killed atomic.Bool
		var writers sync.WaitGroup
		for i, set := range writerSets {
			writers.Add(1)
			go func(seed uint64) {
				defer writers.Done()
				runWriter(ctx, t, a, set, &killed, &seq, cycleStart, rand.New(rand.NewPCG(seed, uint64(cycle))), st)
			}(uint64(i)*7919 + uint64(time.Now().UnixNano()))
		}
		writers.Add(1)
		go func() {
			defer writers.Done()
			for !killed.Load() {
				for _, k := range kinds {
					if killed.Load() {
						return
					}
					sels := append(append([]string{}, k.watchers...), listSelectors...)
					if checkSelectorLists(ctx, t, a, k, sels[rand.IntN(len(sels))], &killed) {
						st.midCycleLists.Add(1)
					}
				}
			}
		}()
		delay := 1500*time.Millisecond + time.Duration(rng.Int64N(int64(max(*killWindow-1500*time.Millisecond, time.Millisecond))))
		time.Sleep(delay)
		killed.Store(true)
		s.Kill(t)
		writers.Wait()
		writePhase := time.Since(cycleBegan)

		// Offline check while the server is down.
		checkOut := datastoreCheck(t, s.DataDir)

		restarting := time.Now()
		s.Restart(t)
		restart := time.Since(restarting)
		waitServed(t, a, kinds)
		etcd.Close()
		etcd = etcdClient(t, s.DataDir)

		// Resolve every object against a full LIST and compare with what
		// the client knows.
		after := currentRevision(t, etcd)
		for _, k := range kinds {
			full, _, err := a.list(ctx, k.path, nil)
			if err != nil {
				t.Fatalf("cycle %d: full list of %s after restart: %v", cycle, k.name, err)
			}
			for _, o := range objects {
				if o.kind == k {
					resolve(t, cycle, o, full, cycleStart, after, st)
				}
			}
		}

		// Sentinels last: each watcher must reach its own.
		ends := map[string]int64{}
		for _, w := range watchers {
			rv := touchSentinel(ctx, t, a, w, &seq, st)
			ends[w.kind.name] = max(ends[w.kind.name], rv)
		}
		for _, w := range watchers {
			w.waitFor(t, w.sentinel.known.rv)
		}

		// Kine's log of the cycle against the client's writes and the
		// watchers' events. A watcher's window ends at its own sentinel,
		// which may be before the kind's last one.
		for _, k := range kinds {
			from := logStart[k.name]
			for _, w := range watchers {
				if w.kind == k {
					from = min(from, w.windowStart)
				}
			}
			events := readLog(t, etcd, k.prefix, from, ends[k.name])
			var cycleEvents []logEvent
			for _, e := range events {
				if e.rev > logStart[k.name] {
					cycleEvents = append(cycleEvents, e)
				}
			}
			checkLogAgainstWrites(t, cycle, k, cycleEvents, objects, st)
			for _, w := range watchers {
				if w.kind == k {
					end := w.sentinel.known.rv
					w.verify(t, cycle, etcd, events, w.windowStart, end, st)
					w.windowStart = end
				}
			}
			logStart[k.name] = ends[k.name]
		}
		for _, o := range objects {
			o.ops = nil
		}

		// Selector lists on the quiet server.
		for _, k := range kinds {
			for _, sel := range append(append([]string{}, k.watchers...), listSelectors...) {
				if !checkSelectorLists(ctx, t, a, k, sel, nil) {
					t.Errorf("cycle %d: selector list %q of %s could not be taken", cycle, sel, k.name)
				}
				st.listChecks++
			}
		}
		t.Logf("cycle %d: killed after %.1fs of writes (%d acknowledged so far), datastore check %q, restarted in %.1fs, cycle %.1fs",
			cycle, writePhase.Seconds(), st.acked.Load(), checkOut, restart.Seconds(), time.Since(cycleBegan).Seconds())
	}
	cancel()
	wwg.Wait()
	for _, w := range watchers {
		st.relists += w.relists
		st.watchResumes += w.resumes
	}
	t.Logf("TOTAL: %d cycles survived; writes acknowledged %d (checked in log and final state: %d), rejected %d (checked absent: %d), answer lost %d (applied %d, not applied %d); "+
		"watch events checked %d, watch resumes %d, relists after 410 %d; selector lists checked %d quiet + %d during writes; unexpected answers %d; %.0fs",
		*cycles, st.acked.Load(), st.ackedChecked, st.rejected.Load(), st.rejectChecked, st.unknown.Load(), st.unknownApplied, st.unknownLost,
		st.watchEvents, st.watchResumes, st.relists, st.listChecks, st.midCycleLists.Load(), st.unexpectedErr.Load(), time.Since(began).Seconds())
}

var listSelectors = []string{"tier=gold", "tier!=gold", "tier in (gold,silver)", "!tier", "tier", "group=a,tier=silver", "num>4", "num<3", "group notin (c),num>1"}

func pollFor(t testing.TB, what string, cond func(ctx context.Context) bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 90*time.Second, true,
		func(ctx context.Context) (bool, error) { return cond(ctx), nil })
	if err != nil {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// waitServed waits until the custom resources are served again after a
// restart (the CRD's storage comes up after /readyz).
func waitServed(t testing.TB, a *api, kinds []*crashKind) {
	t.Helper()
	for _, k := range kinds {
		pollFor(t, k.name+" served", func(ctx context.Context) bool {
			_, err := a.do(ctx, "GET", k.path, url.Values{"limit": {"1"}}, nil)
			return err == nil
		})
	}
}

func currentRevision(t testing.TB, c *clientv3.Client) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := c.Get(ctx, "/registry/health")
	if err != nil {
		t.Fatalf("etcd get: %v", err)
	}
	return r.Header.Revision
}

func randomLabels(r *rand.Rand, name string) map[string]string {
	l := map[string]string{"owner": strings.SplitN(name, "-", 2)[0]}
	if v := []string{"gold", "silver", "bronze", ""}[r.IntN(4)]; v != "" {
		l["tier"] = v
	}
	l["group"] = []string{"a", "b", "c"}[r.IntN(3)]
	if r.IntN(5) > 0 {
		l["num"] = strconv.Itoa(r.IntN(10))
	}
	return l
}

func objectBody(k *crashKind, name, token string, lbls map[string]string, rv int64) map[string]any {
	meta := map[string]any{"name": name, "namespace": crashNS, "labels": lbls}
	if rv != 0 {
		meta["resourceVersion"] = strconv.FormatInt(rv, 10)
	}
	if k.name == "configmap" {
		return map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": map[string]any{"v": token}}
	}
	return map[string]any{"apiVersion": "reliability.harikube.io/v1", "kind": "Crasher", "metadata": meta,
		"spec": map[string]any{"value": token, "payload": strings.Repeat("p", 200)}}
}

func tokenOf(k *crashKind, obj map[string]any) string {
	field := "spec"
	key := "value"
	if k.name == "configmap" {
		field, key = "data", "v"
	}
	m, _ := obj[field].(map[string]any)
	v, _ := m[key].(string)
	return v
}

// runWriter writes to its objects until killed is set: creates, updates,
// deletes with a resourceVersion precondition, and writes meant to be
// rejected (an update or delete with a stale resourceVersion, a create of an
// existing object). Each write's outcome is recorded for the checks.
func runWriter(ctx context.Context, t *testing.T, a *api, set []*trackedObject, killed *atomic.Bool, seq *atomic.Int64, cycleStart int64, r *rand.Rand, st *crashStats) {
	for !killed.Load() {
		var usable []*trackedObject
		for _, o := range set {
			if !o.tainted {
				usable = append(usable, o)
			}
		}
		if len(usable) == 0 {
			return
		}
		o := usable[r.IntN(len(usable))]
		k := o.kind
		token := fmt.Sprintf("%s-%s-%d", k.name, o.name, seq.Add(1))
		lbls := randomLabels(r, o.name)
		op := writeOp{token: token, labels: lbls}
		expectReject := false
		var out map[string]any
		var err error
		dice := r.IntN(100)
		switch {
		case !o.known.exists:
			op.verb = "create"
			out, err = a.do(ctx, "POST", k.path, nil, objectBody(k, o.name, token, lbls, 0))
		case dice < 6:
			op.verb, expectReject = "create", true
			out, err = a.do(ctx, "POST", k.path, nil, objectBody(k, o.name, token, lbls, 0))
		case dice < 12 && len(o.oldRVs) > 0:
			op.verb, expectReject = "update", true
			stale := o.oldRVs[r.IntN(len(o.oldRVs))]
			out, err = a.do(ctx, "PUT", k.path+"/"+o.name, nil, objectBody(k, o.name, token, lbls, stale))
		case dice < 15 && len(o.oldRVs) > 0:
			op.verb, op.token, op.labels, expectReject = "delete", "", nil, true
			stale := o.oldRVs[r.IntN(len(o.oldRVs))]
			_, err = a.do(ctx, "DELETE", k.path+"/"+o.name, nil, deleteOptions(stale))
		case dice < 25:
			op.verb, op.token, op.labels = "delete", "", nil
			_, err = a.do(ctx, "DELETE", k.path+"/"+o.name, nil, deleteOptions(o.known.rv))
		default:
			op.verb = "update"
			out, err = a.do(ctx, "PUT", k.path+"/"+o.name, nil, objectBody(k, o.name, token, lbls, o.known.rv))
		}
		switch {
		case err == nil:
			op.outcome = acked
			st.acked.Add(1)
			if expectReject {
				t.Errorf("%s %s %s: accepted, but it had to be rejected (stale resourceVersion or existing object)", op.verb, k.name, o.name)
			}
			next := objState{}
			if op.verb != "delete" {
				l, lerr := toListed(out)
				if lerr != nil {
					t.Errorf("%s %s %s: answer: %v", op.verb, k.name, o.name, lerr)
					o.tainted = true
					continue
				}
				if l.RV <= o.known.rv || l.RV <= cycleStart {
					t.Errorf("%s %s %s: acknowledged resourceVersion %d, not after the object's previous %d and the revision %d before this cycle's writes",
						op.verb, k.name, o.name, l.RV, o.known.rv, cycleStart)
				}
				op.rv = l.RV
				next = objState{exists: true, token: token, labels: lbls, rv: l.RV}
			}
			if o.known.rv != 0 {
				o.oldRVs = append(o.oldRVs, o.known.rv)
			}
			o.known = next
		case definitelyRejected(err):
			op.outcome = rejected
			st.rejected.Add(1)
			if !expectReject && !killed.Load() {
				// The client knows the object's exact state: a
				// rejection means harikube lost or invented a write.
				t.Errorf("%s %s %s from %s: rejected: %v", op.verb, k.name, o.name, o.known, err)
				o.tainted = true
			}
		default:
			op.outcome = unknown
			st.unknown.Add(1)
			if !killed.Load() {
				st.unexpectedErr.Add(1)
				t.Logf("%s %s %s: no clear answer while the server runs (treated as unknown): %v", op.verb, k.name, o.name, err)
			}
			p := objState{}
			if op.verb != "delete" {
				p = objState{exists: true, token: token, labels: lbls}
			}
			if !expectReject {
				o.pending = &p
			}
			o.tainted = true
		}
		o.ops = append(o.ops, op)
	}
}

func deleteOptions(rv int64) map[string]any {
	return map[string]any{"apiVersion": "v1", "kind": "DeleteOptions",
		"preconditions": map[string]any{"resourceVersion": strconv.FormatInt(rv, 10)}}
}

// resolve compares an object after the restart with what the client knows
// and makes the observed state the known one.
func resolve(t *testing.T, cycle int, o *trackedObject, full map[string]listed, cycleStart, now int64, st *crashStats) {
	got, exists := full[o.name]
	obs := objState{exists: exists}
	if exists {
		obs = objState{exists: true, token: tokenOf(o.kind, got.Obj), labels: got.Labels, rv: got.RV}
	}
	same := func(s objState) bool {
		if s.exists != obs.exists {
			return false
		}
		return !s.exists || (s.token == obs.token && maps.Equal(s.labels, obs.labels))
	}
	switch {
	case same(o.known):
		if o.known.exists && obs.rv != o.known.rv {
			t.Errorf("cycle %d: %s %s: resourceVersion %d after restart, acknowledged %d", cycle, o.kind.name, o.name, obs.rv, o.known.rv)
		}
		if o.pending != nil {
			st.unknownLost++
		}
	case o.pending != nil && same(*o.pending):
		st.unknownApplied++
		if obs.exists && (obs.rv <= cycleStart || obs.rv > now || obs.rv <= o.known.rv) {
			t.Errorf("cycle %d: %s %s: resourceVersion %d of the write whose answer was lost is outside (%d, %d]", cycle, o.kind.name, o.name, obs.rv, max(cycleStart, o.known.rv), now)
		}
	default:
		pending := "none"
		if o.pending != nil {
			pending = o.pending.String()
		}
		t.Errorf("cycle %d: %s %s after restart: %s; want the acknowledged state %s (or the unacknowledged %s)", cycle, o.kind.name, o.name, obs, o.known, pending)
	}
	if o.known.rv != 0 && obs.rv != o.known.rv {
		o.oldRVs = append(o.oldRVs, o.known.rv)
	}
	o.known, o.pending, o.tainted = obs, nil, false
}

// touchSentinel writes the watcher's sentinel with labels matching its
// selector and returns the acknowledged resourceVersion.
func touchSentinel(ctx context.Context, t *testing.T, a *api, w *selWatcher, seq *atomic.Int64, st *crashStats) int64 {
	t.Helper()
	o, k := w.sentinel, w.kind
	lbls := sentinelLabels[w.selector]
	if lbls == nil || !w.sel.Matches(labels.Set(lbls)) {
		t.Fatalf("no sentinel labels matching %q", w.selector)
	}
	token := fmt.Sprintf("%s-%s-%d", k.name, o.name, seq.Add(1))
	op := writeOp{verb: "update", token: token, labels: lbls}
	var out map[string]any
	var err error
	if o.known.exists {
		out, err = a.do(ctx, "PUT", k.path+"/"+o.name, nil, objectBody(k, o.name, token, lbls, o.known.rv))
	} else {
		op.verb = "create"
		out, err = a.do(ctx, "POST", k.path, nil, objectBody(k, o.name, token, lbls, 0))
	}
	if err != nil {
		t.Fatalf("write sentinel %s %s: %v", k.name, o.name, err)
	}
	l, err := toListed(out)
	if err != nil {
		t.Fatal(err)
	}
	st.acked.Add(1)
	op.rv = l.RV
	o.ops = append(o.ops, op)
	o.known = objState{exists: true, token: token, labels: lbls, rv: l.RV}
	return l.RV
}

var sentinelLabels = map[string]map[string]string{
	"tier=gold":                {"tier": "gold", "group": "c"},
	"group in (a,b),num>3":     {"group": "b", "num": "9"},
	"tier notin (gold,silver)": {"group": "a"},
	"tier=silver":              {"tier": "silver"},
	"!tier":                    {"group": "c", "num": "1"},
}

// checkSelectorLists compares a selector LIST with the predicate applied to
// a full LIST at the same resourceVersion. It returns false when a request
// failed (the server went away mid-check while killed is set); any other
// failure fails the test.
func checkSelectorLists(ctx context.Context, t *testing.T, a *api, k *crashKind, selector string, killed *atomic.Bool) bool {
	sel, err := labels.Parse(selector)
	if err != nil {
		t.Fatalf("selector %q: %v", selector, err)
	}
	fail := func(what string, err error) bool {
		if killed != nil && (killed.Load() || !definitelyRejected(err)) {
			return false
		}
		t.Errorf("%s of %s with %q: %v", what, k.name, selector, err)
		return false
	}
	full, rv, err := a.list(ctx, k.path, nil)
	if err != nil {
		return fail("full list", err)
	}
	got, gotRV, err := a.list(ctx, k.path, url.Values{
		"labelSelector":        {selector},
		"resourceVersion":      {strconv.FormatInt(rv, 10)},
		"resourceVersionMatch": {"Exact"},
	})
	if err != nil {
		return fail("selector list", err)
	}
	if gotRV != rv {
		t.Errorf("selector list %q of %s at resourceVersion %d (Exact) answered at %d", selector, k.name, rv, gotRV)
	}
	want := map[string]int64{}
	for name, l := range full {
		if sel.Matches(labels.Set(l.Labels)) {
			want[name] = l.RV
		}
	}
	have := map[string]int64{}
	for name, l := range got {
		have[name] = l.RV
	}
	if !maps.Equal(want, have) {
		var diff []string
		for name := range full {
			if _, w := want[name]; w != (got[name].Name != "") {
				diff = append(diff, fmt.Sprintf("%s: full list rv %d %v, selector list rv %d %v", name, full[name].RV, full[name].Labels, got[name].RV, got[name].Labels))
			}
		}
		for name := range got {
			if _, inFull := full[name]; !inFull {
				diff = append(diff, fmt.Sprintf("%s: only in the selector list, rv %d %v", name, got[name].RV, got[name].Labels))
			}
		}
		t.Errorf("selector list %q of %s at %d: %v; the predicate over the full list gives %v; differences: %s", selector, k.name, rv, have, want, strings.Join(diff, "; "))
	}
	return true
}

// logEvent is one change of a key in Kine's log.
type logEvent struct {
	rev       int64
	name      string
	deleted   bool
	token     string
	labels    map[string]string
	hadPrev   bool
	prevLabel map[string]string
}

// readLog returns the changes of prefix in (from, to] from Kine's log,
// with their previous values, through the etcd API on the socket.
func readLog(t *testing.T, c *clientv3.Client, prefix string, from, to int64) []logEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k := &crashKind{name: "crasher"}
	if strings.HasPrefix(prefix, "/registry/configmaps/") {
		k.name = "configmap"
	}
	var out []logEvent
	wc := c.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(from+1), clientv3.WithPrevKV())
	for resp := range wc {
		if err := resp.Err(); err != nil {
			t.Fatalf("read Kine's log of %s from %d: %v", prefix, from+1, err)
		}
		for _, e := range resp.Events {
			if e.Kv.ModRevision > to {
				return out
			}
			le := logEvent{rev: e.Kv.ModRevision, name: strings.TrimPrefix(string(e.Kv.Key), prefix), deleted: e.Type == clientv3.EventTypeDelete}
			if !le.deleted {
				le.token, le.labels = decodeStored(t, k, e.Kv.Value)
			}
			if e.PrevKv != nil && len(e.PrevKv.Value) > 0 {
				le.hadPrev = true
				_, le.prevLabel = decodeStored(t, k, e.PrevKv.Value)
			}
			out = append(out, le)
			if le.rev == to {
				return out
			}
		}
	}
	t.Fatalf("Kine's log of %s ended before revision %d", prefix, to)
	return nil
}

// decodeStored reads the token and labels of a stored value: JSON for
// custom resources, protobuf for ConfigMaps.
func decodeStored(t *testing.T, k *crashKind, value []byte) (string, map[string]string) {
	t.Helper()
	obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(value, nil, nil)
	if err == nil {
		if cm, ok := obj.(*corev1.ConfigMap); ok {
			return cm.Data["v"], cm.Labels
		}
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(value); err != nil {
		t.Fatalf("stored %s value does not decode: %v", k.name, err)
	}
	lbls := u.GetLabels()
	if lbls == nil {
		lbls = map[string]string{}
	}
	return tokenOf(k, u.Object), lbls
}

// checkLogAgainstWrites matches each object's writes of the cycle with its
// changes in the log: acknowledged writes appear, in order, with their
// resourceVersion; rejected ones never; those with a lost answer may.
func checkLogAgainstWrites(t *testing.T, cycle int, k *crashKind, events []logEvent, objects map[string]*trackedObject, st *crashStats) {
	t.Helper()
	byName := map[string][]logEvent{}
	for _, e := range events {
		byName[e.name] = append(byName[e.name], e)
	}
	for _, o := range objects {
		if o.kind != k {
			continue
		}
		rejectedTokens := map[string]bool{}
		for _, op := range o.ops {
			if op.outcome == rejected && op.token != "" {
				rejectedTokens[op.token] = true
			}
		}
		i := 0
		for _, e := range byName[o.name] {
			if !e.deleted && rejectedTokens[e.token] {
				t.Errorf("cycle %d: %s %s: the rejected write %s is in the log at revision %d", cycle, k.name, o.name, e.token, e.rev)
				continue
			}
			j := i
			for ; j < len(o.ops); j++ {
				op := o.ops[j]
				if op.outcome == rejected {
					continue
				}
				if (e.deleted && op.verb == "delete") || (!e.deleted && op.token == e.token) {
					break
				}
				if op.outcome == acked {
					t.Errorf("cycle %d: %s %s: acknowledged %s %s (rv %d) is not in the log before revision %d", cycle, k.name, o.name, op.verb, op.token, op.rv, e.rev)
				}
			}
			if j == len(o.ops) {
				t.Errorf("cycle %d: %s %s: revision %d (deleted %v, %s) in the log matches no write of the client", cycle, k.name, o.name, e.rev, e.deleted, e.token)
				continue
			}
			if op := o.ops[j]; op.outcome == acked {
				st.ackedChecked++
				if op.rv != 0 && op.rv != e.rev {
					t.Errorf("cycle %d: %s %s: %s acknowledged at resourceVersion %d is at revision %d in the log", cycle, k.name, o.name, op.token, op.rv, e.rev)
				}
			}
			i = j + 1
		}
		for _, op := range o.ops[i:] {
			if op.outcome == acked {
				t.Errorf("cycle %d: %s %s: acknowledged %s %s (rv %d) is not in the log", cycle, k.name, o.name, op.verb, op.token, op.rv)
			}
		}
		st.rejectChecked += len(rejectedTokens)
		if t.Failed() && !dumped[o.key()] {
			dumped[o.key()] = true
			var b strings.Builder
			for _, op := range o.ops {
				fmt.Fprintf(&b, "\n  write %s %s %v: outcome %d rv %d", op.verb, op.token, op.labels, op.outcome, op.rv)
			}
			for _, e := range byName[o.name] {
				fmt.Fprintf(&b, "\n  log %d deleted=%v %s %v", e.rev, e.deleted, e.token, e.labels)
			}
			t.Logf("cycle %d: %s %s, this cycle:%s", cycle, k.name, o.name, b.String())
		}
	}
}

// dumped: objects whose history was logged after a failure.
var dumped = map[string]bool{}

// selWatcher follows one label selector across restarts, resuming from
// the last resourceVersion it saw, relisting after 410 Gone.
type selWatcher struct {
	kind     *crashKind
	selector string
	sel      labels.Selector
	ri       dynamic.ResourceInterface
	sentinel *trackedObject
	// windowStart: events after it are checked at the end of the cycle.
	windowStart int64

	mu       sync.Mutex
	lastRV   int64
	segments []segment // ranges (from, to] of revisions whose events it has all received
	events   []watchEvent
	lists    []listSnapshot
	errs     []string
	relists  int
	resumes  int
	verified int // events before this index were checked
}

type segment struct{ from, to int64 }

type watchEvent struct {
	typ  watch.EventType
	name string
	rv   int64
}

type listSnapshot struct {
	rv    int64
	items map[string]int64
}

func newSelWatcher(t *testing.T, k *crashKind, selector string, ri dynamic.ResourceInterface) *selWatcher {
	sel, err := labels.Parse(selector)
	if err != nil {
		t.Fatalf("selector %q: %v", selector, err)
	}
	return &selWatcher{kind: k, selector: selector, sel: sel, ri: ri}
}

func (w *selWatcher) run(ctx context.Context) {
	needList := true
	for ctx.Err() == nil {
		if needList {
			list, err := w.ri.List(ctx, metav1.ListOptions{LabelSelector: w.selector})
			if err != nil {
				sleepCtx(ctx, 200*time.Millisecond)
				continue
			}
			rv, _ := strconv.ParseInt(list.GetResourceVersion(), 10, 64)
			snap := listSnapshot{rv: rv, items: map[string]int64{}}
			for _, it := range list.Items {
				r, _ := strconv.ParseInt(it.GetResourceVersion(), 10, 64)
				snap.items[it.GetName()] = r
			}
			w.mu.Lock()
			if len(w.lists) > 0 {
				w.relists++
			}
			w.lists = append(w.lists, snap)
			w.segments = append(w.segments, segment{from: rv, to: rv})
			w.lastRV = rv
			w.mu.Unlock()
			needList = false
		}
		w.mu.Lock()
		from := w.lastRV
		w.mu.Unlock()
		wi, err := w.ri.Watch(ctx, metav1.ListOptions{LabelSelector: w.selector, ResourceVersion: strconv.FormatInt(from, 10), AllowWatchBookmarks: true})
		if err != nil {
			if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
				needList = true
			}
			sleepCtx(ctx, 200*time.Millisecond)
			continue
		}
		needList = w.consume(ctx, wi)
		wi.Stop()
		w.mu.Lock()
		w.resumes++
		w.mu.Unlock()
	}
}

// consume records the events of one watch; it returns true when the watch
// ended with 410 Gone.
func (w *selWatcher) consume(ctx context.Context, wi watch.Interface) bool {
	for {
		var ev watch.Event
		var ok bool
		select {
		case <-ctx.Done():
			return false
		case ev, ok = <-wi.ResultChan():
		}
		if !ok {
			return false
		}
		if ev.Type == watch.Error {
			err := apierrors.FromObject(ev.Object)
			return apierrors.IsResourceExpired(err) || apierrors.IsGone(err)
		}
		u, isU := ev.Object.(*unstructured.Unstructured)
		if !isU {
			w.fail("event %s with a %T", ev.Type, ev.Object)
			continue
		}
		rv, err := strconv.ParseInt(u.GetResourceVersion(), 10, 64)
		if err != nil {
			w.fail("event %s %s: resourceVersion %q", ev.Type, u.GetName(), u.GetResourceVersion())
			continue
		}
		w.mu.Lock()
		if ev.Type == watch.Bookmark {
			if rv < w.lastRV {
				w.failLocked("bookmark at %d after %d", rv, w.lastRV)
			}
		} else {
			if rv <= w.lastRV {
				w.failLocked("event %s %s at %d after %d: repeated or out of order", ev.Type, u.GetName(), rv, w.lastRV)
			}
			if !w.sel.Matches(labels.Set(u.GetLabels())) {
				w.failLocked("event %s %s at %d: labels %v do not match", ev.Type, u.GetName(), rv, u.GetLabels())
			}
			w.events = append(w.events, watchEvent{typ: ev.Type, name: u.GetName(), rv: rv})
		}
		if rv > w.lastRV {
			w.lastRV = rv
			w.segments[len(w.segments)-1].to = rv
		}
		w.mu.Unlock()
	}
}

func (w *selWatcher) fail(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.failLocked(format, args...)
}

func (w *selWatcher) failLocked(format string, args ...any) {
	w.errs = append(w.errs, fmt.Sprintf(format, args...))
}

func (w *selWatcher) waitListed(t *testing.T) {
	t.Helper()
	pollFor(t, "watcher "+w.selector+" listed", func(context.Context) bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return len(w.lists) > 0
	})
}

func (w *selWatcher) waitFor(t *testing.T, rv int64) {
	t.Helper()
	pollFor(t, fmt.Sprintf("watcher %s %q at resourceVersion %d", w.kind.name, w.selector, rv), func(context.Context) bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.lastRV >= rv
	})
}

// verify compares the events received in (from, to] with those Kine's log
// implies for the selector, within the ranges the watcher covered, and
// each list it took with the log's state at that revision.
func (w *selWatcher) verify(t *testing.T, cycle int, c *clientv3.Client, log []logEvent, from, to int64, st *crashStats) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, e := range w.errs {
		t.Errorf("cycle %d: watcher %s %q: %s", cycle, w.kind.name, w.selector, e)
	}
	w.errs = nil
	covered := func(rev int64) bool {
		for _, s := range w.segments {
			if rev > s.from && rev <= s.to {
				return true
			}
		}
		return false
	}
	var want []watchEvent
	for _, e := range log {
		if !covered(e.rev) {
			continue
		}
		now := !e.deleted && w.sel.Matches(labels.Set(e.labels))
		before := e.hadPrev && w.sel.Matches(labels.Set(e.prevLabel))
		switch {
		case now && before:
			want = append(want, watchEvent{watch.Modified, e.name, e.rev})
		case now:
			want = append(want, watchEvent{watch.Added, e.name, e.rev})
		case before:
			want = append(want, watchEvent{watch.Deleted, e.name, e.rev})
		}
	}
	var got []watchEvent
	for _, e := range w.events {
		if e.rv > from && e.rv <= to {
			got = append(got, e)
		}
	}
	st.watchEvents += len(got)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("cycle %d: watcher %s %q over (%d, %d], segments %v: received\n  %v\nthe log implies\n  %v",
			cycle, w.kind.name, w.selector, from, to, w.segments, got, want)
	}
	// Lists (the first one, relists after 410) against Kine's state.
	var laterLists []listSnapshot
	for _, l := range w.lists {
		if l.rv > to {
			laterLists = append(laterLists, l)
			continue
		}
		resp, err := c.Get(context.Background(), w.kind.prefix, clientv3.WithPrefix(), clientv3.WithRev(l.rv))
		if err == nil {
			want := map[string]int64{}
			for _, kv := range resp.Kvs {
				_, lbls := decodeStored(t, w.kind, kv.Value)
				if w.sel.Matches(labels.Set(lbls)) {
					want[strings.TrimPrefix(string(kv.Key), w.kind.prefix)] = kv.ModRevision
				}
			}
			if !maps.Equal(want, l.items) {
				t.Errorf("cycle %d: watcher %s %q: list at %d gave %v; Kine's state at %d gives %v", cycle, w.kind.name, w.selector, l.rv, l.items, l.rv, want)
			}
		} else {
			t.Errorf("cycle %d: read Kine's state at %d: %v", cycle, l.rv, err)
		}
	}
	// Keep what lies after this window for the next one.
	w.lists = laterLists
	var segs []segment
	for _, s := range w.segments {
		if s.to > to {
			segs = append(segs, segment{from: max(s.from, to), to: s.to})
		}
	}
	if len(segs) == 0 {
		segs = []segment{{from: w.lastRV, to: w.lastRV}}
	}
	w.segments = segs
	var later []watchEvent
	for _, e := range w.events {
		if e.rv > to {
			later = append(later, e)
		}
	}
	w.events = later
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// Package snapshot tests `harikube snapshot` against the real binary:
// snapshots saved while a server takes writes, each restored into a new
// data directory and served, and the refusals of restore.
package snapshot

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/harikube/harikube/tests/pgserver"
	"github.com/harikube/harikube/tests/testserver"
)

const ns = "snap"

var (
	widgets    = schema.GroupVersionResource{Group: "snapshot.harikube.io", Version: "v1", Resource: "widgets"}
	configMaps = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}
	kinds      = []schema.GroupVersionResource{widgets, configMaps}
	selectors  = []string{"tier=gold", "tier!=gold", "tier in (gold,silver)", "tier notin (gold)", "!tier", "shard", "shard>3", "shard<2,tier=bronze"}
)

// write is one acknowledged write: the object's state from revision rv on.
type write struct {
	rv      int64
	deleted bool
	labels  map[string]string
}

// history records the acknowledged writes of each object.
type history struct {
	mu     sync.Mutex
	writes map[string][]write // "<resource>/<name>" → writes in order
	last   int64
}

func (h *history) add(key string, w write) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.writes[key] = append(h.writes[key], w)
	h.last = max(h.last, w.rv)
}

// at is every object's state at revision rev: its last write at or before it.
func (h *history) at(resource string, rev int64) map[string]write {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]write{}
	for key, ws := range h.writes {
		res, name, _ := strings.Cut(key, "/")
		if res != resource {
			continue
		}
		var state *write
		for i := range ws {
			if ws[i].rv <= rev {
				state = &ws[i]
			}
		}
		if state != nil && !state.deleted {
			out[name] = *state
		}
	}
	return out
}

// TestSnapshotsUnderWrites saves snapshots while writers create, update and
// delete custom resources (uncached, JSON) and ConfigMaps (watch cache,
// protobuf), restores each into a new data directory and serves it: every
// write acknowledged at or before the snapshot's revision is there with its
// resourceVersion and labels and none after it, the index passes `datastore
// check`, selector LISTs equal the predicate over a full LIST at the same
// revision, and a watch from a resourceVersion the old server handed out
// after the snapshot gets 410 Gone. The server also takes scheduled
// snapshots (every 2 s, retention 2) during the writes.
func TestSnapshotsUnderWrites(t *testing.T) {
	s := testserver.Start(t, "--snapshot-schedule=@every 2s", "--snapshot-retention=2")
	ctx := context.Background()
	createNamespace(t, s)
	createWidgetCRD(t, s.Config)
	dyn := dynamic.NewForConfigOrDie(s.Config)
	var deletes []*deleteWatch
	for _, gvr := range kinds {
		deletes = append(deletes, watchDeletes(t, dyn.Resource(gvr).Namespace(ns), gvr.Resource))
	}

	h := &history{writes: map[string][]write{}}
	writeCtx, stopWrites := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var writeErrs sync.Map
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := runWriter(writeCtx, dyn, kinds[w%2], fmt.Sprintf("w%d", w), int64(w), h); err != nil && writeCtx.Err() == nil {
				writeErrs.Store(w, err)
			}
		}()
	}

	// Snapshots during the writes, from a second process.
	var snaps []savedSnapshot
	for i := range 3 {
		time.Sleep(1500 * time.Millisecond)
		start := time.Now()
		snaps = append(snaps, save(t, s, "--name", "under-load"))
		t.Logf("snapshot %d: revision %d, %d bytes, %s", i, snaps[i].revision, snaps[i].size, time.Since(start).Round(time.Millisecond))
	}
	time.Sleep(time.Second)
	stopWrites()
	wg.Wait()
	writeErrs.Range(func(k, v any) bool { t.Errorf("writer %v: %v", k, v); return true })
	if t.Failed() {
		t.FailNow()
	}
	h.resolveDeletes(t, deletes)
	t.Logf("%d objects written, last acknowledged revision %d", len(h.writes), h.last)
	for i := 1; i < len(snaps); i++ {
		if snaps[i].revision <= snaps[i-1].revision {
			t.Errorf("snapshot %d holds revision %d, not after snapshot %d's %d: the writes did not go on during the snapshots", i, snaps[i].revision, i-1, snaps[i-1].revision)
		}
	}

	checkScheduled(t, s)
	saveToExistingDir(t, s)
	checkListAndPrune(t, s, snaps)
	refuseWhileRunning(t, s, snaps[0].path)

	for i, snap := range snaps[1:] { // snaps[0] was pruned
		t.Run(fmt.Sprintf("restore%d", i+1), func(t *testing.T) { checkRestored(t, s, snap, h) })
	}
}

type savedSnapshot struct {
	path     string
	revision int64
	size     int64
}

var (
	reSnapshot = regexp.MustCompile(`(?m)^Snapshot: (.+)$`)
	reRevision = regexp.MustCompile(`(?m)^Revision: (\d+)`)
	reSize     = regexp.MustCompile(`(?m)^Size: (\d+) bytes`)
)

// save runs `harikube snapshot save --data-dir <server's>` as a user would.
func save(t *testing.T, s *testserver.Server, args ...string) savedSnapshot {
	t.Helper()
	out, code := s.Run(t, append([]string{"snapshot", "save", "--data-dir", s.DataDir}, args...)...)
	if code != 0 {
		t.Fatalf("snapshot save: exit code %d, output:\n%s", code, out)
	}
	m1, m2, m3 := reSnapshot.FindStringSubmatch(out), reRevision.FindStringSubmatch(out), reSize.FindStringSubmatch(out)
	if m1 == nil || m2 == nil || m3 == nil {
		t.Fatalf("snapshot save printed no path, size and revision:\n%s", out)
	}
	snap := savedSnapshot{path: m1[1]}
	snap.revision, _ = strconv.ParseInt(m2[1], 10, 64)
	snap.size, _ = strconv.ParseInt(m3[1], 10, 64)
	fi, err := os.Stat(snap.path)
	if err != nil {
		t.Fatalf("snapshot file: %v", err)
	}
	if fi.Size() != snap.size || fi.Mode().Perm() != 0o600 {
		t.Errorf("snapshot %s: %d bytes mode %o; printed %d bytes, want mode 600", snap.path, fi.Size(), fi.Mode().Perm(), snap.size)
	}
	// A directory harikube creates is the owner's only; an existing --dir
	// keeps its mode (saveToExistingDir).
	if flagValue(args, "--dir") == "" {
		if di, err := os.Stat(filepath.Dir(snap.path)); err != nil {
			t.Errorf("snapshot directory %s: %v", filepath.Dir(snap.path), err)
		} else if di.Mode().Perm() != 0o700 {
			t.Errorf("snapshot directory %s: mode %v, want 700", filepath.Dir(snap.path), di.Mode().Perm())
		}
	}
	return snap
}

func flagValue(args []string, name string) string {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

// saveToExistingDir: save --dir into an existing directory of mode 0755
// writes the snapshot there, mode 0600 (save checks), and leaves the
// directory's mode as it was.
func saveToExistingDir(t *testing.T, s *testserver.Server) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "shared")
	must(t, os.Mkdir(dir, 0o755))
	must(t, os.Chmod(dir, 0o755)) // whatever the umask
	snap := save(t, s, "--dir", dir, "--name", "elsewhere")
	if filepath.Dir(snap.path) != dir {
		t.Errorf("save --dir %s wrote %s", dir, snap.path)
	}
	di, err := os.Stat(dir)
	must(t, err)
	if di.Mode().Perm() != 0o755 {
		t.Errorf("existing --dir %s after save: mode %v, want it kept at 755", dir, di.Mode().Perm())
	}
}

// runWriter creates, updates (new labels) and deletes objects of one kind
// until ctx ends, recording each acknowledged write.
func runWriter(ctx context.Context, dyn dynamic.Interface, gvr schema.GroupVersionResource, prefix string, seed int64, h *history) error {
	r := rand.New(rand.NewSource(seed))
	ri := dyn.Resource(gvr).Namespace(ns)
	live := map[string]*unstructured.Unstructured{}
	for n := 0; ctx.Err() == nil; n++ {
		var names []string
		for name := range live {
			names = append(names, name)
		}
		slices.Sort(names)
		switch op := r.Intn(10); {
		case op < 4 || len(names) < 5:
			name := fmt.Sprintf("%s-%05d", prefix, n)
			obj := newObject(gvr, name, randomLabels(r))
			got, err := ri.Create(ctx, obj, metav1.CreateOptions{})
			if err != nil {
				return fmt.Errorf("create %s: %w", name, err)
			}
			live[name] = got
			h.add(gvr.Resource+"/"+name, write{rv: rv(got), labels: got.GetLabels()})
		case op < 8:
			obj := live[names[r.Intn(len(names))]].DeepCopy()
			obj.SetLabels(randomLabels(r))
			got, err := ri.Update(ctx, obj, metav1.UpdateOptions{})
			if err != nil {
				return fmt.Errorf("update %s: %w", obj.GetName(), err)
			}
			live[obj.GetName()] = got
			h.add(gvr.Resource+"/"+obj.GetName(), write{rv: rv(got), labels: got.GetLabels()})
		default:
			name := names[r.Intn(len(names))]
			if err := ri.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				return fmt.Errorf("delete %s: %w", name, err)
			}
			delete(live, name)
			// The answer does not carry the delete's revision (a Status
			// for ConfigMaps); the DELETED watch event does (resolveDeletes).
			h.add(gvr.Resource+"/"+name, write{deleted: true})
		}
	}
	return nil
}

func rv(obj metav1.Object) int64 {
	v, _ := strconv.ParseInt(obj.GetResourceVersion(), 10, 64)
	return v
}

func randomLabels(r *rand.Rand) map[string]string {
	l := map[string]string{"owner": "snapshot-test"}
	if t := r.Intn(4); t < 3 {
		l["tier"] = []string{"gold", "silver", "bronze"}[t]
	}
	if r.Intn(3) > 0 {
		l["shard"] = strconv.Itoa(r.Intn(6))
	}
	return l
}

func newObject(gvr schema.GroupVersionResource, name string, lbls map[string]string) *unstructured.Unstructured {
	obj := &unstructured.Unstructured{Object: map[string]any{}}
	if gvr == configMaps {
		obj.SetAPIVersion("v1")
		obj.SetKind("ConfigMap")
		obj.Object["data"] = map[string]any{"payload": strings.Repeat("x", 200)}
	} else {
		obj.SetAPIVersion(widgets.Group + "/v1")
		obj.SetKind("Widget")
		obj.Object["spec"] = map[string]any{"value": name, "payload": strings.Repeat("y", 200)}
	}
	obj.SetName(name)
	obj.SetNamespace(ns)
	obj.SetLabels(lbls)
	return obj
}

// checkRestored restores snap into a new data directory, runs `datastore
// check`, serves it and compares it with the writes the old server
// acknowledged.
func checkRestored(t *testing.T, old *testserver.Server, snap savedSnapshot, h *history) {
	ctx := context.Background()
	dir := t.TempDir()
	out, code := old.Run(t, "snapshot", "restore", "--data-dir", dir, snap.path)
	if code != 0 {
		t.Fatalf("snapshot restore: exit code %d\n%s", code, out)
	}
	t.Logf("restore of revision %d: %s", snap.revision, strings.TrimSpace(out))
	datastoreCheck(t, dir)
	s := testserver.Start(t, "--data-dir", dir)
	dyn := dynamic.NewForConfigOrDie(s.Config)

	for _, gvr := range kinds {
		ri := dyn.Resource(gvr).Namespace(ns)
		want := h.at(gvr.Resource, snap.revision)
		full, err := ri.List(ctx, metav1.ListOptions{LabelSelector: "owner=snapshot-test"})
		if err != nil {
			t.Fatalf("list %s: %v", gvr.Resource, err)
		}
		got := map[string]write{}
		for _, it := range full.Items {
			got[it.GetName()] = write{rv: rv(&it), labels: it.GetLabels()}
		}
		for name, w := range want {
			g, ok := got[name]
			switch {
			case !ok:
				t.Errorf("%s %s (written at revision %d, before the snapshot's %d) is missing after restore", gvr.Resource, name, w.rv, snap.revision)
			case g.rv != w.rv || !maps.Equal(g.labels, w.labels):
				t.Errorf("%s %s after restore: revision %d labels %v; acknowledged at or before %d: revision %d labels %v", gvr.Resource, name, g.rv, g.labels, snap.revision, w.rv, w.labels)
			}
		}
		for name, g := range got {
			if _, ok := want[name]; !ok {
				t.Errorf("%s %s (revision %d) is there after restore, but the snapshot's revision %d holds no such object: a later write leaked in", gvr.Resource, name, g.rv, snap.revision)
			}
		}
		t.Logf("%s: %d objects at revision %d, all with their acknowledged resourceVersion", gvr.Resource, len(want), snap.revision)

		for _, sel := range selectors {
			compareSelectorList(t, ri, sel)
		}

		// The old server handed out h.last after the snapshot was taken.
		w, err := ri.Watch(ctx, metav1.ListOptions{ResourceVersion: strconv.FormatInt(h.last, 10)})
		if err != nil {
			if !apierrors.IsResourceExpired(err) && !apierrors.IsGone(err) {
				t.Errorf("watch %s from revision %d: %v, want 410 Gone", gvr.Resource, h.last, err)
			}
		} else {
			expectGone(t, w, gvr.Resource, h.last)
		}
	}

	// New writes come after every revision the old server handed out.
	cm, err := s.Client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "after-restore"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create after restore: %v", err)
	}
	if rv(cm) <= h.last {
		t.Errorf("a write after restore got revision %d, not past the old server's %d", rv(cm), h.last)
	}
	if code := s.Stop(t); code != 0 {
		t.Fatalf("restored server exited %d", code)
	}
	datastoreCheck(t, dir)
}

// expectGone reads the first event of a watch: an ERROR with 410.
func expectGone(t *testing.T, w watch.Interface, resource string, from int64) {
	t.Helper()
	defer w.Stop()
	select {
	case ev, ok := <-w.ResultChan():
		if !ok {
			t.Errorf("watch %s from %d closed without an event, want 410 Gone", resource, from)
			return
		}
		status, isStatus := ev.Object.(*metav1.Status)
		if ev.Type != watch.Error || !isStatus || status.Code != 410 {
			t.Errorf("watch %s from %d: first event %s %v, want ERROR 410 Gone", resource, from, ev.Type, ev.Object)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("watch %s from %d: no event in 30 s, want 410 Gone", resource, from)
	}
}

// compareSelectorList compares a selector LIST with labels.Selector.Matches
// over a full LIST at the same resourceVersion (as tests/reliability does).
func compareSelectorList(t *testing.T, ri dynamic.ResourceInterface, selector string) {
	t.Helper()
	ctx := context.Background()
	sel, err := labels.Parse(selector)
	if err != nil {
		t.Fatalf("selector %q: %v", selector, err)
	}
	full, err := ri.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("full list: %v", err)
	}
	got, err := ri.List(ctx, metav1.ListOptions{LabelSelector: selector, ResourceVersion: full.GetResourceVersion(), ResourceVersionMatch: metav1.ResourceVersionMatchExact})
	if err != nil {
		t.Fatalf("list %q at %s: %v", selector, full.GetResourceVersion(), err)
	}
	want := map[string]string{}
	for _, it := range full.Items {
		if sel.Matches(labels.Set(it.GetLabels())) {
			want[it.GetName()] = it.GetResourceVersion()
		}
	}
	have := map[string]string{}
	for _, it := range got.Items {
		have[it.GetName()] = it.GetResourceVersion()
	}
	if !maps.Equal(want, have) {
		t.Errorf("selector %q at %s: %d objects %v, the predicate over the full list gives %d %v", selector, full.GetResourceVersion(), len(have), have, len(want), want)
	}
}

// checkScheduled: the server's schedule saved snapshots, kept the newest two
// and exported its metrics.
func checkScheduled(t *testing.T, s *testserver.Server) {
	var scheduled []string
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		scheduled, _ = filepath.Glob(filepath.Join(s.DataDir, "snapshots", "scheduled-*.db"))
		return s.Metric(t, "harikube_snapshot_saved_total") >= 3 && len(scheduled) == 2, nil
	})
	if err != nil {
		t.Errorf("scheduled snapshots: %d saved, files %v; want at least 3 saved and the newest 2 kept", int(s.Metric(t, "harikube_snapshot_saved_total")), scheduled)
	}
	if f := s.Metric(t, "harikube_snapshot_failures_total"); f != 0 {
		t.Errorf("harikube_snapshot_failures_total = %v", f)
	}
	if size := s.Metric(t, "harikube_snapshot_last_size_bytes"); size < 4096 {
		t.Errorf("harikube_snapshot_last_size_bytes = %v", size)
	}
	if last := s.Metric(t, "harikube_snapshot_last_success_timestamp_seconds"); time.Since(time.Unix(int64(last), 0)) > time.Minute {
		t.Errorf("harikube_snapshot_last_success_timestamp_seconds = %v", last)
	}

	// The schedule goes on, and a new file appears before the metric
	// follows it: poll until a listing and the metric read after it agree.
	var newest int64
	var metric float64
	err = wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		out, code := s.Run(t, "snapshot", "ls", "--data-dir", s.DataDir)
		if code != 0 {
			return false, fmt.Errorf("snapshot ls: exit %d\n%s", code, out)
		}
		m := reScheduledLs.FindAllStringSubmatch(out, -1)
		if len(m) == 0 {
			return false, fmt.Errorf("snapshot ls lists no scheduled snapshot:\n%s", out)
		}
		newest, _ = strconv.ParseInt(m[len(m)-1][1], 10, 64) // ls lists oldest first
		metric = s.Metric(t, "harikube_snapshot_last_revision")
		return newest > 0 && metric == float64(newest), nil
	})
	if err != nil {
		t.Errorf("harikube_snapshot_last_revision = %v, the newest scheduled snapshot holds revision %d: %v", metric, newest, err)
	}
}

// reScheduledLs matches a scheduled snapshot's line of `snapshot ls`
// (NAME PATH SIZE REVISION ...) and captures its revision.
var reScheduledLs = regexp.MustCompile(`(?m)^scheduled\s+\S+\s+\d+\s+(\d+)\s`)

// checkListAndPrune: ls shows the on-demand snapshots with their revisions;
// prune --retain 2 deletes the oldest one only.
func checkListAndPrune(t *testing.T, s *testserver.Server, snaps []savedSnapshot) {
	out, code := s.Run(t, "snapshot", "ls", "--data-dir", s.DataDir)
	if code != 0 {
		t.Fatalf("snapshot ls: exit %d\n%s", code, out)
	}
	for _, snap := range snaps {
		if !regexp.MustCompile(`(?m)^under-load\s+` + regexp.QuoteMeta(snap.path) + `\s+\d+\s+` + strconv.FormatInt(snap.revision, 10) + `\s`).MatchString(out) {
			t.Errorf("snapshot ls does not list %s at revision %d:\n%s", snap.path, snap.revision, out)
		}
	}
	out, code = s.Run(t, "snapshot", "prune", "--data-dir", s.DataDir, "--name", "under-load", "--retain", "2")
	if code != 0 || strings.TrimSpace(out) != "Deleted "+snaps[0].path {
		t.Errorf("snapshot prune --retain 2: exit %d, output %q; want the oldest, %s, deleted", code, out, snaps[0].path)
	}
	for i, snap := range snaps {
		_, err := os.Stat(snap.path)
		if exists := err == nil; exists != (i > 0) {
			t.Errorf("after prune, %s exists: %v", snap.path, exists)
		}
	}
}

// refuseWhileRunning: restore into a running server's data directory is
// refused and leaves the database directory as it was.
func refuseWhileRunning(t *testing.T, s *testserver.Server, file string) {
	before := dirNames(t, filepath.Join(s.DataDir, "db"))
	out, code := runBinary(t, "snapshot", "restore", "--data-dir", s.DataDir, file)
	if code == 0 || !strings.Contains(out, "in use by another harikube server") || !strings.Contains(out, "restore needs the server stopped") {
		t.Errorf("restore into a running server's data directory: exit %d, output %q; want a refusal naming the running server", code, out)
	}
	if after := dirNames(t, filepath.Join(s.DataDir, "db")); !slices.Equal(before, after) {
		t.Errorf("refused restore changed %s: %v → %v", filepath.Join(s.DataDir, "db"), before, after)
	}
}

// TestRestoreRefusals: a file that is not SQLite, a SQLite file that is not
// a snapshot, a truncated snapshot and an encrypted one without its key are
// refused with a message saying why, and change nothing; with the key the
// encrypted snapshot restores and its Secret reads back. On a PostgreSQL
// endpoint, save explains pg_dump.
func TestRestoreRefusals(t *testing.T) {
	s := testserver.Start(t, "--secrets-encryption")
	ctx := context.Background()
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "kept", Namespace: "default"}, StringData: map[string]string{"password": "s3cret-value"}}
	if _, err := s.Client.CoreV1().Secrets("default").Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	snap := save(t, s)
	if !strings.HasPrefix(filepath.Base(snap.path), "on-demand-") || filepath.Dir(snap.path) != filepath.Join(s.DataDir, "snapshots") {
		t.Errorf("default snapshot path %s, want <data-dir>/snapshots/on-demand-<time>.db", snap.path)
	}

	// A data directory with a database of its own, which must survive.
	target := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(target, "db"), 0o700))
	must(t, os.WriteFile(filepath.Join(target, "db", "state.db"), []byte("the current database"), 0o600))
	unchanged := func(what string) {
		t.Helper()
		if names := dirNames(t, filepath.Join(target, "db")); !slices.Equal(names, []string{"state.db"}) {
			t.Errorf("%s: the database directory now holds %v", what, names)
		}
		if b, _ := os.ReadFile(filepath.Join(target, "db", "state.db")); string(b) != "the current database" {
			t.Errorf("%s: the current database changed", what)
		}
	}
	refused := func(what, file string, want ...string) {
		t.Helper()
		out, code := runBinary(t, "snapshot", "restore", "--data-dir", target, file)
		if code == 0 {
			t.Errorf("%s: restore exited 0:\n%s", what, out)
		}
		for _, w := range append(want, "nothing was changed") {
			if !strings.Contains(out, w) {
				t.Errorf("%s: restore said %q, want it to mention %q", what, strings.TrimSpace(out), w)
			}
		}
		unchanged(what)
	}

	text := filepath.Join(t.TempDir(), "notes.db")
	must(t, os.WriteFile(text, []byte("not a database at all\n"), 0o600))
	refused("text file", text, "not a harikube snapshot (not a SQLite file)")

	// The server's own database file is SQLite but no snapshot.
	dbCopy := filepath.Join(t.TempDir(), "state.db")
	copyFile(t, snap.path, dbCopy)
	dropMeta(t, dbCopy)
	refused("SQLite file without snapshot metadata", dbCopy, "is not a harikube snapshot")

	truncated := filepath.Join(t.TempDir(), "truncated.db")
	data, err := os.ReadFile(snap.path)
	must(t, err)
	must(t, os.WriteFile(truncated, data[:len(data)*2/3], 0o600))
	refused("truncated snapshot", truncated, "truncated")

	// Damaged but of the right size: four pages from the middle zeroed. A
	// snapshot is written compact (no free pages), so they belong to a
	// B-tree, and reading it fails (SQLite: "database disk image is malformed").
	damaged := filepath.Join(t.TempDir(), "damaged.db")
	pageSize := int(data[16])<<8 | int(data[17])
	if pageSize == 1 {
		pageSize = 65536
	}
	middle := len(data) / 2 / pageSize * pageSize
	if middle < pageSize || middle+4*pageSize > len(data) {
		t.Fatalf("snapshot of %d bytes has too few %d-byte pages to damage", len(data), pageSize)
	}
	bad := slices.Clone(data)
	clear(bad[middle : middle+4*pageSize])
	must(t, os.WriteFile(damaged, bad, 0o600))
	refused("damaged snapshot of the right size", damaged, "is damaged")

	refused("encrypted snapshot without its key", snap.path, "encrypted at rest", "encryption-config.yaml is missing")

	// With the key, restore works and the Secret reads back in plaintext.
	must(t, os.MkdirAll(filepath.Join(target, "cred"), 0o700))
	copyFile(t, filepath.Join(s.DataDir, "cred", "encryption-config.yaml"), filepath.Join(target, "cred", "encryption-config.yaml"))
	out, code := runBinary(t, "snapshot", "restore", "--data-dir", target, snap.path)
	if code != 0 {
		t.Fatalf("restore with the key: exit %d\n%s", code, out)
	}
	aside, _ := filepath.Glob(filepath.Join(target, "db", "state.db.pre-restore-*"))
	if len(aside) != 1 || !strings.Contains(out, "Kept aside: "+aside[0]) {
		t.Errorf("the previous database was not kept aside: %v\n%s", aside, out)
	} else if b, _ := os.ReadFile(aside[0]); string(b) != "the current database" {
		t.Errorf("kept-aside database %s does not hold the previous content", aside[0])
	}
	r := testserver.Start(t, "--data-dir", target, "--secrets-encryption")
	got, err := r.Client.CoreV1().Secrets("default").Get(ctx, "kept", metav1.GetOptions{})
	if err != nil || string(got.Data["password"]) != "s3cret-value" {
		t.Errorf("secret after restore: %v, %v", got, err)
	}

	out, code = runBinary(t, "snapshot", "save", "--data-dir", t.TempDir(), "--datastore-endpoint", "postgres://u:pw@127.0.0.1:1/clusterdb")
	if code == 0 || !strings.Contains(out, "pg_dump") || !strings.Contains(out, `"clusterdb"`) || strings.Contains(out, "pw@") {
		t.Errorf("snapshot save on PostgreSQL: exit %d, %q; want an explanation naming pg_dump and the database, without the password", code, out)
	}
}

func dropMeta(t *testing.T, path string) {
	t.Helper()
	// sqlite3 may not be installed; the binary's own restore path must not
	// be used either. Rewrite the table name in place: same length, so the
	// file stays valid SQLite but has no harikube_snapshot table.
	data, err := os.ReadFile(path)
	must(t, err)
	fixed := strings.ReplaceAll(string(data), "harikube_snapshot", "harikube_snapshoX")
	if fixed == string(data) {
		t.Fatalf("no metadata table name in %s", path)
	}
	must(t, os.WriteFile(path, []byte(fixed), 0o600))
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	must(t, err)
	must(t, os.WriteFile(to, b, 0o600))
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	must(t, err)
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// runBinary runs harikube with args; stdout and stderr together.
func runBinary(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, testserver.Binary(t), args...).CombinedOutput()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Fatalf("harikube %s: %v", strings.Join(args, " "), err)
	}
	return string(out), exitCode(err)
}

func exitCode(err error) int {
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return exitErr.ExitCode()
	}
	return 0
}

func datastoreCheck(t *testing.T, dir string) {
	t.Helper()
	out, code := runBinary(t, "datastore", "check", "--data-dir", dir)
	if code != 0 {
		t.Fatalf("datastore check --data-dir %s: exit %d\n%s", dir, code, out)
	}
}

func createNamespace(t *testing.T, s *testserver.Server) {
	t.Helper()
	if _, err := s.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func createWidgetCRD(t *testing.T, cfg *rest.Config) {
	t.Helper()
	crd := &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: widgets.Resource + "." + widgets.Group},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: widgets.Group,
			Names: apiextensionsv1.CustomResourceDefinitionNames{Plural: widgets.Resource, Kind: "Widget", ListKind: "WidgetList"},
			Scope: apiextensionsv1.NamespaceScoped,
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{
				Name: "v1", Served: true, Storage: true,
				SelectableFields: []apiextensionsv1.SelectableField{{JSONPath: ".spec.value"}},
				Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
					Type: "object",
					Properties: map[string]apiextensionsv1.JSONSchemaProps{"spec": {Type: "object", Properties: map[string]apiextensionsv1.JSONSchemaProps{
						"value": {Type: "string"}, "payload": {Type: "string"},
					}}},
				}},
			}},
		},
	}
	if _, err := apiextensionsclient.NewForConfigOrDie(cfg).ApiextensionsV1().CustomResourceDefinitions().Create(context.Background(), crd, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create CRD: %v", err)
	}
	ri := dynamic.NewForConfigOrDie(cfg).Resource(widgets).Namespace(ns)
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := ri.List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("CRD not served: %v", err)
	}
}

// deleteWatch records the revision of each DELETED event of one resource.
type deleteWatch struct {
	resource string
	mu       sync.Mutex
	rv       map[string]int64
}

func watchDeletes(t *testing.T, ri dynamic.ResourceInterface, resource string) *deleteWatch {
	t.Helper()
	list, err := ri.List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list %s: %v", resource, err)
	}
	w, err := ri.Watch(context.Background(), metav1.ListOptions{ResourceVersion: list.GetResourceVersion()})
	if err != nil {
		t.Fatalf("watch %s: %v", resource, err)
	}
	t.Cleanup(w.Stop)
	d := &deleteWatch{resource: resource, rv: map[string]int64{}}
	go func() {
		for ev := range w.ResultChan() {
			if obj, ok := ev.Object.(*unstructured.Unstructured); ok && ev.Type == watch.Deleted {
				d.mu.Lock()
				d.rv[obj.GetName()] = rv(obj)
				d.mu.Unlock()
			}
		}
	}()
	return d
}

// resolveDeletes gives each recorded delete the revision of its DELETED
// event (names are never reused, so an object is deleted at most once).
func (h *history) resolveDeletes(t *testing.T, watches []*deleteWatch) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 60*time.Second, true, func(context.Context) (bool, error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		done := true
		for key, ws := range h.writes {
			last := &ws[len(ws)-1]
			if !last.deleted || last.rv != 0 {
				continue
			}
			res, name, _ := strings.Cut(key, "/")
			for _, d := range watches {
				if d.resource != res {
					continue
				}
				d.mu.Lock()
				last.rv = d.rv[name]
				d.mu.Unlock()
			}
			if last.rv == 0 {
				done = false
			} else {
				h.last = max(h.last, last.rv)
			}
		}
		return done, nil
	})
	if err != nil {
		t.Fatalf("DELETED events of some deletes did not arrive: %v", err)
	}
}

// TestBadSnapshotSchedule: a schedule that is not cron stops the server
// before it starts anything, saying what a schedule looks like.
func TestBadSnapshotSchedule(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	out, code := runBinary(t, "server", "--data-dir", dir, "--snapshot-schedule", "every day")
	if code != 1 || !strings.Contains(out, `"--snapshot-schedule"`) || !strings.Contains(out, "five cron fields") {
		t.Errorf("server --snapshot-schedule 'every day': exit %d, output %q; want exit 1 naming the flag and the cron format", code, out)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("the refused start created %s", dir)
	}
}

// TestScheduleOnPostgres: scheduled snapshots on a PostgreSQL datastore are
// refused at start with the pg_dump advice.
func TestScheduleOnPostgres(t *testing.T) {
	pg := pgserver.Start(t)
	out, code := runBinary(t, "server", "--data-dir", t.TempDir(), "--bind-address", "127.0.0.1",
		"--https-listen-port", strconv.Itoa(testserver.FreePort(t)), "--datastore-endpoint", pg.DSN(), "--snapshot-schedule", "@hourly")
	if code != 1 || !strings.Contains(out, "--snapshot-schedule takes snapshots of a SQLite datastore") || !strings.Contains(out, "pg_dump") {
		t.Errorf("server on PostgreSQL with --snapshot-schedule: exit %d; want exit 1 pointing to pg_dump; output:\n%s", code, out)
	}
}

// TestRestoreToEndpoint: a server whose --datastore-endpoint names a SQLite
// file outside its data directory is saved and restored through the same
// flag; restore is refused while that server runs or without its data
// directory; the restored file serves what the snapshot held, and the file
// it replaced is kept aside beside it.
func TestRestoreToEndpoint(t *testing.T) {
	ctx := context.Background()
	dataDir := t.TempDir()
	database := filepath.Join(t.TempDir(), "elsewhere", "cluster.db")
	endpoint := "sqlite://" + database
	must(t, os.MkdirAll(filepath.Dir(database), 0o700))
	s := testserver.Start(t, "--data-dir", dataDir, "--datastore-endpoint", endpoint)
	cm := func(name string) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}
	}
	if _, err := s.Client.CoreV1().ConfigMaps("default").Create(ctx, cm("in-snapshot"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	out, code := s.Run(t, "snapshot", "save", "--data-dir", dataDir, "--datastore-endpoint", endpoint, "--name", "moved")
	if code != 0 {
		t.Fatalf("snapshot save: exit %d\n%s", code, out)
	}
	files, _ := filepath.Glob(filepath.Join(dataDir, "snapshots", "moved-*.db"))
	if len(files) != 1 {
		t.Fatalf("snapshot files %v\n%s", files, out)
	}
	if _, err := s.Client.CoreV1().ConfigMaps("default").Create(ctx, cm("after-snapshot"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Refused while the server runs, and without the server's data
	// directory, whose lock is what tells.
	out, code = runBinary(t, "snapshot", "restore", "--data-dir", dataDir, "--datastore-endpoint", endpoint, files[0])
	if code == 0 || !strings.Contains(out, "restore needs the server stopped") {
		t.Errorf("restore --datastore-endpoint into a running server: exit %d\n%s", code, out)
	}
	out, code = runBinary(t, "snapshot", "restore", "--datastore-endpoint", endpoint, files[0])
	if code == 0 || !strings.Contains(out, "pass the server's --data-dir too") {
		t.Errorf("restore --datastore-endpoint without --data-dir: exit %d\n%s", code, out)
	}
	s.Stop(t)

	out, code = runBinary(t, "snapshot", "restore", "--data-dir", dataDir, "--datastore-endpoint", endpoint, files[0])
	if code != 0 {
		t.Fatalf("snapshot restore --datastore-endpoint: exit %d\n%s", code, out)
	}
	aside, _ := filepath.Glob(database + ".pre-restore-*")
	if !strings.Contains(out, "into "+database) || len(aside) == 0 {
		t.Errorf("restore did not write %s or keep the old file aside beside it (%v):\n%s", database, aside, out)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "db", "state.db")); !os.IsNotExist(err) {
		t.Errorf("restore wrote the data directory's default database too: %v", err)
	}
	r := testserver.Start(t, "--data-dir", dataDir, "--datastore-endpoint", endpoint)
	if _, err := r.Client.CoreV1().ConfigMaps("default").Get(ctx, "in-snapshot", metav1.GetOptions{}); err != nil {
		t.Errorf("ConfigMap saved in the snapshot: %v", err)
	}
	if _, err := r.Client.CoreV1().ConfigMaps("default").Get(ctx, "after-snapshot", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("ConfigMap created after the snapshot: %v, want not found", err)
	}
}

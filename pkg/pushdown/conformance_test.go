package pushdown

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"k8s.io/apimachinery/pkg/api/apitesting"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apiserver/pkg/apis/example"
	examplev1 "k8s.io/apiserver/pkg/apis/example/v1"
	"k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/etcd3"
	etcdfeature "k8s.io/apiserver/pkg/storage/feature"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
	"k8s.io/apiserver/pkg/storage/value"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/component-base/featuregate"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
	"k8s.io/utils/clock"

	"github.com/harikube/harikube/pkg/datastore"
	"github.com/harikube/harikube/pkg/index"
	"github.com/harikube/harikube/tests/pgserver"
)

var (
	scheme = runtime.NewScheme()
	codecs = serializer.NewCodecFactory(scheme)
)

func TestMain(m *testing.M) {
	logrus.SetLevel(logrus.WarnLevel)
	os.Exit(m.Run())
}

func init() {
	metav1.AddToGroupVersion(scheme, metav1.SchemeGroupVersion)
	utilruntime.Must(example.AddToScheme(scheme))
	utilruntime.Must(examplev1.AddToScheme(scheme))
}

// podAttrs yields every label and field the suite's predicates select on,
// like a real resource's attribute function does.
func podAttrs(obj runtime.Object) (labels.Set, fields.Set, error) {
	pod := obj.(*example.Pod)
	return labels.Set(pod.Labels), fields.Set{
		"metadata.name":      pod.Name,
		"metadata.namespace": pod.Namespace,
		"spec.nodeName":      pod.Spec.NodeName,
	}, nil
}

// valuePrefix is what the store's transformer puts before every value, as
// in upstream's own etcd3 tests; the test resource's extractor removes it,
// the way a production extractor reads what the transformer stored.
const valuePrefix = "test!"

// switchingTransformer is the store's transformer, which the suites that
// take InterfaceWithPrefixTransformer or InterfaceWithTransformerOverride
// replace for a while (upstream's tests swap the field of their store).
type switchingTransformer struct {
	mu      sync.RWMutex
	current value.Transformer
}

func (s *switchingTransformer) get() value.Transformer {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.current
}

// swap installs next and returns what puts the previous one back.
func (s *switchingTransformer) swap(next value.Transformer) func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.current
	s.current = next
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.current = prev
	}
}

func (s *switchingTransformer) TransformFromStorage(ctx context.Context, data []byte, dataCtx value.Context) ([]byte, bool, error) {
	return s.get().TransformFromStorage(ctx, data, dataCtx)
}

func (s *switchingTransformer) TransformToStorage(ctx context.Context, data []byte, dataCtx value.Context) ([]byte, error) {
	return s.get().TransformToStorage(ctx, data, dataCtx)
}

// failingCodec is the store's codec, made to fail decoding on demand by the
// suites that test deleting undecodable objects.
type failingCodec struct {
	runtime.Codec
	fail atomic.Bool
}

func (c *failingCodec) setFailing(fail bool) { c.fail.Store(fail) }

func (c *failingCodec) Decode(data []byte, defaults *schema.GroupVersionKind, into runtime.Object) (runtime.Object, *schema.GroupVersionKind, error) {
	if c.fail.Load() {
		return nil, nil, errors.New("synthetic decode error")
	}
	return c.Codec.Decode(data, defaults, into)
}

type fixture struct {
	// raw is the upstream etcd3 store over the datastore; store is the same
	// with selectors pushed down, which the suites run against.
	raw         storage.Interface
	store       storage.Interface
	client      *kubernetes.Client
	codec       *failingCodec
	prefix      *storagetesting.PrefixTransformer
	transformer *switchingTransformer
}

// datastores are the databases the suite runs against: SQLite, and a
// private PostgreSQL (skipped when it is not installed).
// Each returns a source of fresh endpoints: one PostgreSQL server serves
// every test of a run, each test in a database of its own.
var datastores = map[string]func(t *testing.T) func() string{
	"sqlite":   func(*testing.T) func() string { return func() string { return "" } },
	"postgres": func(t *testing.T) func() string { return pgserver.Start(t).DSN },
}

// newFixture runs the harikube datastore on endpoint (SQLite in a temp dir
// when empty), with Kine flags kineArgs, and returns the upstream etcd3 store
// over it, wrapped by the pushdown storage.
func newFixture(t *testing.T, endpoint string, kineArgs ...string) *fixture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	registry := index.NewRegistry()
	extractCodec := apitesting.TestCodec(codecs, examplev1.SchemeGroupVersion)
	registry.Register(index.Resource{
		Name:       "pods",
		Prefix:     "/pods/",
		Fields:     []string{"metadata.name", "metadata.namespace", "spec.nodeName"},
		Definition: "conformance",
		Extract: func(v []byte) (labels.Set, fields.Set, error) {
			obj := &example.Pod{}
			if err := runtime.DecodeInto(extractCodec, bytes.TrimPrefix(v, []byte(valuePrefix)), obj); err != nil {
				return nil, nil, err
			}
			return podAttrs(obj)
		},
	})
	ds, err := datastore.Start(ctx, datastore.Options{DataDir: t.TempDir(), Endpoint: endpoint, Registry: registry,
		KineArgs: append([]string{"--compact-min-retain=0"}, kineArgs...)})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); ds.Wait() })
	client, err := kubernetes.New(clientv3.Config{Endpoints: []string{ds.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	compactor := etcd3.NewCompactor(client.Client, 0, clock.RealClock{}, nil)
	t.Cleanup(compactor.Stop)
	f := &fixture{
		client: client,
		codec:  &failingCodec{Codec: apitesting.TestCodec(codecs, examplev1.SchemeGroupVersion)},
		prefix: storagetesting.NewPrefixTransformer([]byte(valuePrefix), false),
	}
	f.transformer = &switchingTransformer{current: f.prefix}
	versioner := storage.APIObjectVersioner{}
	raw, err := etcd3.New(client, compactor, f.codec, func() runtime.Object { return &example.Pod{} }, func() runtime.Object { return &example.PodList{} },
		"", "/pods/", schema.GroupResource{Resource: "pods"}, f.transformer, etcd3.NewDefaultLeaseManagerConfig(), etcd3.NewDefaultDecoder(f.codec, versioner), versioner)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(raw.Close)
	f.raw = raw
	f.store = &selectorStorage{Interface: raw, resource: "pods"}
	return f
}

// compact compacts the datastore to resourceVersion and, as upstream's
// compaction helper does, waits until the store has observed it.
func (f *fixture) compact(ctx context.Context, t *testing.T, resourceVersion string) {
	rv, err := storage.APIObjectVersioner{}.ParseResourceVersion(resourceVersion)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := etcd3.Compact(ctx, f.client.Client, 0, int64(rv)); err != nil {
		t.Fatal(err)
	}
	if !utilfeature.DefaultFeatureGate.Enabled(features.ListFromCacheSnapshot) {
		return
	}
	for f.store.CompactRevision() < int64(rv) {
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// atMostUpstreamReads replaces the suite's exact call-count check: with
// selectors answered in the datastore the store may decode fewer objects
// than upstream, never more.
func (f *fixture) atMostUpstreamReads(t *testing.T, _ uint64, estimatedProcessedObjects uint64) {
	if reads := f.prefix.GetReadsAndReset(); reads > estimatedProcessedObjects {
		t.Errorf("store decoded %d objects, upstream decodes %d", reads, estimatedProcessedObjects)
	}
}

// stored checks what upstream's checkStorageInvariants checks: a created
// key reached the datastore, with neither resourceVersion nor selfLink.
func (f *fixture) stored(ctx context.Context, t *testing.T, key string) {
	resp, err := f.client.KV.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 {
		t.Fatalf("key %s: got %d values from the datastore, want 1", key, len(resp.Kvs))
	}
	obj := &example.Pod{}
	if err := runtime.DecodeInto(f.codec, bytes.TrimPrefix(resp.Kvs[0].Value, []byte(valuePrefix)), obj); err != nil {
		t.Fatalf("key %s: stored value does not decode: %v", key, err)
	}
	if obj.ResourceVersion != "" || obj.SelfLink != "" {
		t.Errorf("key %s: stored object has resourceVersion %q and selfLink %q, want both empty", key, obj.ResourceVersion, obj.SelfLink)
	}
}

func (f *fixture) increaseRV(ctx context.Context, t *testing.T) int64 {
	resp, err := f.client.KV.Put(ctx, "/increase-rv", "x")
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

// keys lists the resource's keys, as the etcd3 store's own size estimator
// source does (it is unexported).
func (f *fixture) keys(ctx context.Context) ([]string, error) {
	resp, err := f.client.KV.Get(ctx, "/pods/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	return keys, nil
}

// transformerStore is a store with the hooks the suites use to replace its
// transformer for a while.
type transformerStore struct {
	storage.Interface
	f *fixture
}

func (s transformerStore) UpdatePrefixTransformer(modify storagetesting.PrefixTransformerModifier) func() {
	next := *s.f.prefix
	return s.f.transformer.swap(modify(&next))
}

func (s transformerStore) UpdateTransformer(modify storagetesting.TransformerModifier) func() {
	return s.f.transformer.swap(modify(s.f.transformer.get()))
}

// corruptObjectErr is the error the etcd3 store makes of a value its
// transformer cannot read (its type is unexported): what upstream's tests
// inject to stand for a corrupt object.
func corruptObjectErr(t *testing.T) error {
	_, _, err := etcd3.WithCorruptObjErrorHandlingTransformer(storagetesting.NewPrefixTransformer([]byte("unmatched!"), false)).
		TransformFromStorage(context.Background(), []byte("bits flipped"), value.DefaultContext(""))
	if err == nil {
		t.Fatal("a value without its prefix transformed without error")
	}
	return err
}

// continueTokenCases are the four RunTestList cases that expect a continue
// token after the last match: upstream's store must hand one out because it
// cannot know whether more keys match, while with pushdown the datastore
// knows none does, and a continue token only means "more may exist".
var continueTokenCases = map[string]bool{
	"test List with filter returning only one item, ensure only a single page returned":                                                      true,
	"test List with filter returning only one item, ensure only a single page returned with current resource version and match=NotOlderThan": true,
	"test List with filter returning two items, more pages possible":                                                                         true,
	"test List with filter returning two items, more pages possible with current resource version and match=NotOlderThan":                    true,
}

// continueTokenStore runs RunTestList in full against pushdown. On the four
// continueTokenCases (told apart by the test name upstream puts in the
// list context) it shows the answer equivalent to upstream's: the same
// items at the same resourceVersion, and following upstream's continue token
// to its end yields no further item. Only then does it pass upstream's token
// on, so the suite's own checks of the case (items, resourceVersion,
// remaining count) run on pushdown's answer.
type continueTokenStore struct {
	storage.Interface
	raw  storage.Interface
	seen *sync.Map // the cases seen, by name: whether pushdown omitted the token
}

func (s continueTokenStore) GetList(ctx context.Context, key string, opts storage.ListOptions, listObj runtime.Object) error {
	if err := s.Interface.GetList(ctx, key, opts, listObj); err != nil {
		return err
	}
	name, _ := ctx.Value(storagetesting.RecorderContextKey).(string)
	name = name[strings.LastIndex(name, "/")+1:]
	if !continueTokenCases[strings.ReplaceAll(name, "_", " ")] {
		return nil
	}
	got := listObj.(*example.PodList)
	s.seen.Store(name, got.Continue == "")
	if got.Continue != "" {
		return nil // pushdown gave a token itself: nothing to show
	}
	upstream := &example.PodList{}
	if err := s.raw.GetList(ctx, key, opts, upstream); err != nil {
		return fmt.Errorf("upstream list: %w", err)
	}
	if a, b := podNames(got.Items), podNames(upstream.Items); a != b || got.ResourceVersion != upstream.ResourceVersion {
		return fmt.Errorf("pushdown listed %s at %s, upstream %s at %s", a, got.ResourceVersion, b, upstream.ResourceVersion)
	}
	if upstream.Continue == "" {
		return fmt.Errorf("upstream gave no continue token either: the case no longer differs")
	}
	token := upstream.Continue
	for pages := 0; token != ""; pages++ {
		if pages > 100 {
			return fmt.Errorf("upstream's continuation does not end")
		}
		pred := opts.Predicate
		pred.Continue = token
		page := &example.PodList{}
		if err := s.raw.GetList(ctx, key, storage.ListOptions{Predicate: pred, Recursive: opts.Recursive}, page); err != nil {
			return fmt.Errorf("follow upstream's continue token: %w", err)
		}
		if len(page.Items) > 0 {
			return fmt.Errorf("upstream's continuation lists %s, which pushdown's answer lacks", podNames(page.Items))
		}
		token = page.Continue
	}
	got.Continue = upstream.Continue
	got.RemainingItemCount = upstream.RemainingItemCount
	return nil
}

func podNames(pods []example.Pod) string {
	names := make([]string, len(pods))
	for i, p := range pods {
		names[i] = p.Namespace + "/" + p.Name + "@" + p.ResourceVersion
	}
	return "[" + strings.Join(names, " ") + "]"
}

// suite is one of upstream's Run* functions with the feature gates and Kine
// flags upstream's etcd3 tests run it with.
type suite struct {
	gates    map[featuregate.Feature]bool
	kineArgs []string
	run      func(context.Context, *testing.T, *fixture)
}

func (s suite) with(gate featuregate.Feature, on bool) suite {
	gates := map[featuregate.Feature]bool{gate: on}
	for g, v := range s.gates {
		gates[g] = v
	}
	s.gates = gates
	return s
}

// conformanceSuites are all of k8s.io/apiserver/pkg/storage/testing's Run*
// suites, called as upstream's etcd3 store_test.go and watcher_test.go call
// them; none is left out. RangeStream variants run as upstream runs them.
func conformanceSuites() map[string]suite {
	progressNotify := []string{"--watch-progress-notify-interval=1s"}
	suites := map[string]suite{
		"Create": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestCreate(ctx, t, f.store, f.stored)
		}},
		"CreateWithTTL": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestCreateWithTTL(ctx, t, f.store)
		}},
		"CreateWithKeyExist": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestCreateWithKeyExist(ctx, t, f.store)
		}},
		"Get": {run: func(ctx context.Context, t *testing.T, f *fixture) { storagetesting.RunTestGet(ctx, t, f.store) }},
		"UnconditionalDelete": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestUnconditionalDelete(ctx, t, f.store)
		}},
		"ConditionalDelete": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestConditionalDelete(ctx, t, f.store)
		}},
		"DeleteWithSuggestion": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestDeleteWithSuggestion(ctx, t, f.store)
		}},
		"DeleteWithSuggestionAndConflict": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestDeleteWithSuggestionAndConflict(ctx, t, f.store)
		}},
		"DeleteWithSuggestionOfDeletedObject": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestDeleteWithSuggestionOfDeletedObject(ctx, t, f.store)
		}},
		"ValidateDeletionWithSuggestion": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestValidateDeletionWithSuggestion(ctx, t, f.store)
		}},
		"ValidateDeletionWithOnlySuggestionValid": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestValidateDeletionWithOnlySuggestionValid(ctx, t, f.store)
		}},
		"DeleteWithConflict": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestDeleteWithConflict(ctx, t, f.store)
		}},
		"DeleteWithConflictAndMissingExpectedTransformOrDecodeError": suite{run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestDeleteWithConflictAndMissingExpectedTransformOrDecodeError(ctx, t, f.store, f.codec.setFailing)
		}}.with(features.AllowUnsafeMalformedObjectDeletion, true),
		"DeleteWithConflictAndExpectedTransformError": suite{run: func(ctx context.Context, t *testing.T, f *fixture) {
			failing := &failingTransformer{Transformer: f.transformer.get()}
			defer f.transformer.swap(failing)()
			storagetesting.RunTestDeleteExpectedTransformOrDecodeError(ctx, t, f.store, failing.setFailing)
		}}.with(features.AllowUnsafeMalformedObjectDeletion, true),
		"DeleteWithConflictAndExpectedDecodeError": suite{run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestDeleteExpectedTransformOrDecodeError(ctx, t, f.store, f.codec.setFailing)
		}}.with(features.AllowUnsafeMalformedObjectDeletion, true),
		"DeleteWithSuggestionAndMissingExpectedTransformOrDecodeError": suite{run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestDeleteWithSuggestionAndMissingExpectedTransformOrDecodeError(ctx, t, f.store)
		}}.with(features.AllowUnsafeMalformedObjectDeletion, true),
		"PreconditionalDeleteWithSuggestion": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestPreconditionalDeleteWithSuggestion(ctx, t, f.store)
		}},
		"PreconditionalDeleteWithOnlySuggestionPass": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestPreconditionalDeleteWithOnlySuggestionPass(ctx, t, f.store)
		}},
		"ListPaging": {run: func(ctx context.Context, t *testing.T, f *fixture) { storagetesting.RunTestListPaging(ctx, t, f.store) }},
		"GetListNonRecursive": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestGetListNonRecursive(ctx, t, f.increaseRV, f.store)
		}},
		"GetListRecursivePrefix": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestGetListRecursivePrefix(ctx, t, f.store)
		}},
		"KeySchema": {run: func(ctx context.Context, t *testing.T, f *fixture) { storagetesting.RunTestKeySchema(ctx, t, f.store) }},
		"GetListWithErrorAggregation": suite{run: func(ctx context.Context, t *testing.T, f *fixture) {
			store := etcd3.NewStoreWithUnsafeCorruptObjectDeletion(f.store, schema.GroupResource{Resource: "pods"})
			storagetesting.RunTestGetListWithErrorAggregation(ctx, t, transformerStore{Interface: store, f: f}, corruptObjectErr(t))
		}}.with(features.AllowUnsafeMalformedObjectDeletion, true),
		"GetListWithoutErrorAggregation": suite{run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestGetListWithoutErrorAggregation(ctx, t, transformerStore{Interface: f.store, f: f}, corruptObjectErr(t))
		}}.with(features.AllowUnsafeMalformedObjectDeletion, false),
		"GuaranteedUpdate": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestGuaranteedUpdate(ctx, t, transformerStore{Interface: f.store, f: f}, f.stored)
		}},
		"GuaranteedUpdateWithTTL": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestGuaranteedUpdateWithTTL(ctx, t, f.store)
		}},
		"GuaranteedUpdateChecksStoredData": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestGuaranteedUpdateChecksStoredData(ctx, t, transformerStore{Interface: f.store, f: f})
		}},
		"GuaranteedUpdateWithConflict": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestGuaranteedUpdateWithConflict(ctx, t, f.store)
		}},
		"GuaranteedUpdateWithSuggestionAndConflict": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestGuaranteedUpdateWithSuggestionAndConflict(ctx, t, f.store)
		}},
		"TransformationFailure": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestTransformationFailure(ctx, t, transformerStore{Interface: f.store, f: f})
		}},
		"CompactRevision": suite{run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestCompactRevision(ctx, t, f.store, f.increaseRV, f.compact)
		}}.with(features.ListFromCacheSnapshot, true),
		"ListContinuation": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestListContinuation(ctx, t, f.store, f.atMostUpstreamReads)
		}},
		"ListPaginationRareObject": suite{run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestListPaginationRareObject(ctx, t, f.store, f.atMostUpstreamReads)
		}}.with(features.ListFromCacheSnapshot, false),
		"ListContinuationWithFilter": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestListContinuationWithFilter(ctx, t, f.store, f.atMostUpstreamReads)
		}},
		"NamespaceScopedList": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestNamespaceScopedList(ctx, t, f.store)
		}},
		"ListInconsistentContinuation": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestListInconsistentContinuation(ctx, t, f.store, f.compact)
		}},
		"ListResourceVersionMatch": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestListResourceVersionMatch(ctx, t, transformerStore{Interface: f.store, f: f})
		}},
		"Watch": {run: func(ctx context.Context, t *testing.T, f *fixture) { storagetesting.RunTestWatch(ctx, t, f.store) }},
		"ClusterScopedWatch": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestClusterScopedWatch(ctx, t, f.store)
		}},
		"NamespaceScopedWatch": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestNamespaceScopedWatch(ctx, t, f.store)
		}},
		"DeleteTriggerWatch": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestDeleteTriggerWatch(ctx, t, f.store)
		}},
		"WatchFromZero": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestWatchFromZero(ctx, t, f.store, f.compact)
		}},
		"WatchFromNonZero": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestWatchFromNonZero(ctx, t, f.store)
		}},
		"DelayedWatchDelivery": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestDelayedWatchDelivery(ctx, t, f.store)
		}},
		"WatchError": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestWatchError(ctx, t, transformerStore{Interface: f.store, f: f})
		}},
		"WatchContextCancel": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestWatchContextCancel(ctx, t, f.store)
		}},
		"WatcherTimeout": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestWatcherTimeout(ctx, t, f.store)
		}},
		"WatchDeleteEventObjectHaveLatestRV": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestWatchDeleteEventObjectHaveLatestRV(ctx, t, f.store)
		}},
		"WatchInitializationSignal": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestWatchInitializationSignal(ctx, t, f.store)
		}},
		"ProgressNotify": {kineArgs: progressNotify, run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunOptionalTestProgressNotify(ctx, t, f.store, f.increaseRV)
		}},
		"WatchWithUnsafeDelete": suite{run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestWatchWithUnsafeDelete(ctx, t, transformerStore{Interface: f.store, f: f}, corruptObjectErr(t))
		}}.with(features.AllowUnsafeMalformedObjectDeletion, true),
		"WatchDispatchBookmarkEvents": {kineArgs: progressNotify, run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestWatchDispatchBookmarkEvents(ctx, t, f.store, false)
		}},
		"SendInitialEventsBackwardCompatibility": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunSendInitialEventsBackwardCompatibility(ctx, t, f.store)
		}},
		"WatchErrorIsBlockingFurtherEvents": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunWatchErrorIsBlockingFurtherEvents(ctx, t, transformerStore{Interface: f.store, f: f})
		}},
		"Stats": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			storagetesting.RunTestStats(ctx, t, f.store, f.codec, f.transformer, false)
		}},
		"StatsWithSizeEstimate": {run: func(ctx context.Context, t *testing.T, f *fixture) {
			if err := f.store.EnableResourceSizeEstimation(f.keys); err != nil {
				t.Fatal(err)
			}
			storagetesting.RunTestStats(ctx, t, f.store, f.codec, f.transformer, true)
		}},
	}
	for _, rangeStream := range []bool{false, true} {
		for name, s := range map[string]suite{
			"List": {run: func(ctx context.Context, t *testing.T, f *fixture) {
				seen := &sync.Map{}
				// The cases are parallel subtests: they run after RunTestList
				// returns, and have all ended when cleanup runs.
				t.Cleanup(func() {
					n, omitted := 0, 0
					seen.Range(func(_, v any) bool {
						n++
						if v.(bool) {
							omitted++
						}
						return true
					})
					if n != len(continueTokenCases) {
						t.Errorf("%d of the %d continue-token cases were listed: upstream's suite changed", n, len(continueTokenCases))
					}
					t.Logf("continue-token cases: pushdown omitted the token in %d of %d, each shown equivalent to upstream's answer", omitted, n)
				})
				storagetesting.RunTestList(ctx, t, continueTokenStore{Interface: f.store, raw: f.raw, seen: seen}, f.compact, false, nil)
			}},
			"ConsistentList": {run: func(ctx context.Context, t *testing.T, f *fixture) {
				storagetesting.RunTestConsistentList(ctx, t, f.store, f.increaseRV, false, true, false)
			}},
			"WatchSemantics": {run: func(ctx context.Context, t *testing.T, f *fixture) {
				storagetesting.RunWatchSemantics(ctx, t, f.store)
			}},
			"WatchSemanticsWithConcurrentDecode": suite{run: func(ctx context.Context, t *testing.T, f *fixture) {
				storagetesting.RunWatchSemantics(ctx, t, f.store)
			}}.with(features.ConcurrentWatchObjectDecode, true),
			"WatchSemanticInitialEventsExtended": {run: func(ctx context.Context, t *testing.T, f *fixture) {
				storagetesting.RunWatchSemanticInitialEventsExtended(ctx, t, f.store)
			}},
			"WatchListMatchSingle": {run: func(ctx context.Context, t *testing.T, f *fixture) {
				storagetesting.RunWatchListMatchSingle(ctx, t, f.store)
			}},
		} {
			suites[fmt.Sprintf("%s/rangeStream=%v", name, rangeStream)] = s.with(features.EtcdRangeStream, rangeStream)
		}
	}
	return suites
}

// failingTransformer fails reading values on demand.
type failingTransformer struct {
	value.Transformer
	fail atomic.Bool
}

func (f *failingTransformer) setFailing(fail bool) { f.fail.Store(fail) }

func (f *failingTransformer) TransformFromStorage(ctx context.Context, data []byte, dataCtx value.Context) ([]byte, bool, error) {
	if f.fail.Load() {
		return nil, false, errors.New("synthetic transform error")
	}
	return f.Transformer.TransformFromStorage(ctx, data, dataCtx)
}

// setGates sets feature gates for the rest of the test. Changing
// EtcdRangeStream also resets the cached check of what the server supports,
// as upstream's tests do.
func setGates(t *testing.T, gates map[featuregate.Feature]bool) {
	for gate, on := range gates {
		featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, gate, on)
		if gate == features.EtcdRangeStream {
			orig := etcdfeature.DefaultFeatureSupportChecker
			etcdfeature.DefaultFeatureSupportChecker = etcdfeature.NewDefaultFeatureSupportChecker()
			t.Cleanup(func() { etcdfeature.DefaultFeatureSupportChecker = orig })
		}
	}
}

// TestStorageConformance runs every suite of k8s.io/apiserver's own storage
// tests against the etcd3 store over harikube's datastore, with selectors
// pushed down to SQL, on SQLite and PostgreSQL. RunTestList runs in full;
// see continueTokenStore for its four continue-token cases.
func TestStorageConformance(t *testing.T) {
	suites := conformanceSuites()
	names := make([]string, 0, len(suites))
	for name := range suites {
		names = append(names, name)
	}
	sort.Strings(names)
	for store, endpoints := range datastores {
		t.Run(store, func(t *testing.T) {
			endpoint := endpoints(t)
			for _, name := range names {
				s := suites[name]
				t.Run(name, func(t *testing.T) {
					setGates(t, s.gates)
					s.run(context.Background(), t, newFixture(t, endpoint(), s.kineArgs...))
				})
			}
		})
	}
}

// TestFilteredListEndsAtLastMatch: a limited, filtered list with pushdown
// returns the same items as upstream's store in the same order and, when no
// match is left, no continue token, where upstream hands out one whose
// page is empty: the difference RunTestList's four continue-token cases
// show (see continueTokenStore).
func TestFilteredListEndsAtLastMatch(t *testing.T) {
	for store, endpoint := range datastores {
		t.Run(store, func(t *testing.T) { testFilteredListEndsAtLastMatch(t, newFixture(t, endpoint(t)())) })
	}
}

func testFilteredListEndsAtLastMatch(t *testing.T, f *fixture) {
	ctx := context.Background()
	for _, name := range []string{"a", "b", "c", "d", "e"} {
		pod := &example.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Labels: map[string]string{"keep": map[bool]string{true: "yes", false: "no"}[name == "b" || name == "d"]}}}
		if err := f.store.Create(ctx, "/pods/ns/"+name, pod, &example.Pod{}, 0); err != nil {
			t.Fatal(err)
		}
	}
	sel := labels.SelectorFromSet(labels.Set{"keep": "yes"})
	pushdown := listPages(ctx, t, f.store, sel)
	upstream := listPages(ctx, t, f.raw, sel)
	if got, want := fmt.Sprint(pushdown), "[[b] [d]]"; got != want {
		t.Fatalf("pushdown pages %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(upstream), "[[b] [d] []]"; got != want {
		t.Fatalf("upstream pages %s, want %s (its token after the last match leads to an empty page)", got, want)
	}
}

// listPages lists the pods matching sel one page of one item at a time,
// following continue tokens, and returns the names on each page.
func listPages(ctx context.Context, t *testing.T, store storage.Interface, sel labels.Selector) [][]string {
	var pages [][]string
	continueToken := ""
	for {
		if len(pages) > 5 {
			t.Fatalf("too many pages: %v", pages)
		}
		out := &example.PodList{}
		pred := storage.SelectionPredicate{Label: sel, Field: fields.Everything(), GetAttrs: podAttrs, Limit: 1, Continue: continueToken}
		if err := store.GetList(ctx, "/pods/", storage.ListOptions{Predicate: pred, Recursive: true}, out); err != nil {
			t.Fatal(err)
		}
		page := []string{}
		for _, p := range out.Items {
			page = append(page, p.Name)
		}
		pages = append(pages, page)
		if out.Continue == "" {
			return pages
		}
		continueToken = out.Continue
	}
}

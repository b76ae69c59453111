// Package pushdown is harikube's storage decorator for the upstream
// kube-apiserver. It sits directly above each resource's etcd3 store, below
// the watch cache, and attaches the label and field selectors of LIST and
// WATCH requests to the etcd request as gRPC metadata, so the datastore can
// answer them in SQL. It also registers each resource's codec and attribute
// function with the datastore's index, so stored values are indexed with the
// same fields the resource's own field selectors use.
package pushdown

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"path"
	"reflect"
	"sort"
	"sync"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/apiserver/pkg/registry/generic"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	"k8s.io/apiserver/pkg/storage"
	cacherstorage "k8s.io/apiserver/pkg/storage/cacher"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	"k8s.io/apiserver/pkg/storage/storagebackend/factory"
	"k8s.io/client-go/tools/cache"
	utilversion "k8s.io/component-base/version"
	"k8s.io/klog/v2"

	"github.com/harikube/harikube/pkg/index"
	"github.com/harikube/harikube/pkg/selection"
)

// Options choose what the decorator does.
type Options struct {
	// Pushdown sends selectors to the datastore. Off, every other choice
	// (including the watch cache policy) stays the same, which gives the
	// upstream behaviour for side-by-side comparison.
	Pushdown bool
	// CacheCustomResources keeps the apiserver's watch cache in front of
	// custom resources, as upstream does. Off (harikube's default), custom
	// resources are served from the datastore, so their selector LISTs and
	// WATCHes are answered by the index instead of a full in-memory copy. A
	// custom resource listed in --watch-cache-sizes with a size above zero
	// keeps its cache either way.
	CacheCustomResources bool
	// Registry receives each resource's extractor.
	Registry *index.Registry
	// ReuseDecodes lets a custom resource's decodes right after a write
	// reuse what its extractor decoded: for a datastore in this process,
	// which runs the registered extractors on every write.
	ReuseDecodes bool
	// Route, when set, replaces Registry for processes with several
	// datastores: it is told where each resource's storage is configured
	// (its etcd servers and key prefix) and returns the registry of the
	// datastore there, or an error that fails the storage.
	Route func(resource schema.GroupResource, servers []string, prefix string) (*index.Registry, error)
	// NewRawStorage builds a resource's etcd3 store beneath the decorator;
	// nil is upstream's generic.NewRawStorage.
	NewRawStorage func(config *storagebackend.ConfigForResource, newFunc, newListFunc func() runtime.Object, resourcePrefix string) (storage.Interface, factory.DestroyFunc, error)
}

// CRDGetter reads a CustomResourceDefinition by name.
type CRDGetter = func(ctx context.Context, name string) (*apiextensionsv1.CustomResourceDefinition, error)

// Wrapper returns the function that wraps the apiserver's REST options
// getters; customResources marks the getter of custom resources, and crds
// reads their definitions.
func Wrapper(opts Options) func(inner generic.RESTOptionsGetter, customResources bool, crds CRDGetter) generic.RESTOptionsGetter {
	var decoded *decodedValues
	if opts.ReuseDecodes {
		decoded = newDecodedValues()
	}
	if opts.NewRawStorage == nil {
		opts.NewRawStorage = generic.NewRawStorage
	}
	return func(inner generic.RESTOptionsGetter, customResources bool, crds CRDGetter) generic.RESTOptionsGetter {
		return &getter{inner: inner, opts: opts, customResources: customResources, crds: crds, decoded: decoded}
	}
}

type getter struct {
	inner           generic.RESTOptionsGetter
	opts            Options
	customResources bool
	crds            CRDGetter
	// decoded lets custom resource storages reuse what indexing decoded.
	decoded *decodedValues
}

var undecorated = reflect.ValueOf(generic.UndecoratedStorage).Pointer()

func (g *getter) GetRESTOptions(resource schema.GroupResource, example runtime.Object) (generic.RESTOptions, error) {
	ro, err := g.inner.GetRESTOptions(resource, example)
	if err != nil {
		return ro, err
	}
	cached := ro.Decorator != nil && reflect.ValueOf(ro.Decorator).Pointer() != undecorated
	if g.customResources && cached && !g.opts.CacheCustomResources && !g.explicitlyCached(resource) {
		cached = false
	}
	ro.Decorator = g.decorator(cached)
	return ro, nil
}

// explicitlyCached reports whether --watch-cache-sizes names the resource
// with a positive size: the way to keep upstream caching for one resource.
func (g *getter) explicitlyCached(resource schema.GroupResource) bool {
	f, ok := g.inner.(*genericoptions.StorageFactoryRestOptionsFactory)
	if !ok {
		return false
	}
	sizes, err := genericoptions.ParseWatchCacheSizes(f.Options.WatchCacheSizes)
	if err != nil {
		return false
	}
	return sizes[resource] > 0
}

func (g *getter) decorator(cached bool) generic.StorageDecorator {
	return func(config *storagebackend.ConfigForResource, resourcePrefix string, keyFunc func(runtime.Object) (string, error),
		newFunc, newListFunc func() runtime.Object, getAttrs storage.AttrFunc, triggers storage.IndexerFuncs, indexers *cache.Indexers,
	) (storage.Interface, factory.DestroyFunc, error) {
		name := config.GroupResource.String()
		registry := g.opts.Registry
		if g.opts.Route != nil {
			var err error
			if registry, err = g.opts.Route(config.GroupResource, config.Transport.ServerList, keyPrefix(config, resourcePrefix)); err != nil {
				return nil, func() {}, err
			}
		}
		plain := attributesOf(newFunc, getAttrs, decodeWith(config.Codec))
		extract := plain
		if g.customResources && registry != nil && g.decoded != nil {
			reusing := g.decoded.codec(config.Codec, name)
			withReuse := *config
			withReuse.Codec = reusing
			config, extract = &withReuse, attributesOf(newFunc, getAttrs, reusing.decodeToKeep)
		}
		raw, destroy, err := g.opts.NewRawStorage(config, newFunc, newListFunc, resourcePrefix)
		if err != nil {
			return raw, destroy, err
		}
		res, trust := resourceIndex(name, config, resourcePrefix, newFunc, getAttrs, extract), trustAll
		if g.customResources {
			res, trust = g.customResourceIndex(res, newFunc, plain)
		}
		if registry != nil && getAttrs != nil && res.Definition != "" {
			registry.Register(res)
		}
		var s = raw
		if g.opts.Pushdown {
			s = &selectorStorage{Interface: raw, resource: name, trust: trust}
		}
		if !cached {
			return s, destroy, nil
		}
		// The same wiring as upstream's StorageWithCacher, with the
		// selector-aware store beneath the cache and behind its delegator.
		cacher, err := cacherstorage.NewCacherFromConfig(cacherstorage.Config{
			Storage:             s,
			Versioner:           storage.APIObjectVersioner{},
			GroupResource:       config.GroupResource,
			EventsHistoryWindow: config.EventsHistoryWindow,
			ResourcePrefix:      resourcePrefix,
			KeyFunc:             keyFunc,
			NewFunc:             newFunc,
			NewListFunc:         newListFunc,
			GetAttrsFunc:        getAttrs,
			IndexerFuncs:        triggers,
			Indexers:            indexers,
			Codec:               config.Codec,
		})
		if err != nil {
			destroy()
			return nil, func() {}, err
		}
		delegator := cacherstorage.NewCacheDelegator(cacher, s)
		var once sync.Once
		return delegator, func() {
			once.Do(func() {
				delegator.Stop()
				cacher.Stop()
				destroy()
			})
		}, nil
	}
}

// trust says which requirements of a request the index can answer for the
// version a store serves.
type trust int

const (
	trustAll    trust = iota
	trustLabels       // labels, metadata.name and metadata.namespace
	trustNames        // metadata.name and metadata.namespace only
)

// customResourceIndex indexes a custom resource in its storage version only,
// whichever version's storage is built last, under a definition derived from
// the CRD. A store of another version gets values that may be defaulted,
// pruned or (through a webhook) converted differently: its field selectors,
// and with a webhook its label selectors, are left to the apiserver. When the
// definition cannot be read, nothing is registered and only names are pushed.
func (g *getter) customResourceIndex(res index.Resource, newFunc func() runtime.Object, plain index.Extractor) (index.Resource, trust) {
	res.Definition = ""
	if g.crds == nil {
		return res, trustNames
	}
	crd, err := g.crds(context.Background(), res.Name)
	if err != nil {
		klog.InfoS("Selectors of this custom resource are filtered in the apiserver until its storage is built again", "resource", res.Name, "err", err)
		return res, trustNames
	}
	webhook := crd.Spec.Conversion != nil && crd.Spec.Conversion.Strategy == apiextensionsv1.WebhookConverter
	version := newFunc().GetObjectKind().GroupVersionKind().Version
	if version != storageVersion(crd) {
		if webhook {
			return res, trustNames
		}
		return res, trustLabels
	}
	res.Definition = crdDefinition(crd, version)
	res.Mutable = true
	res.LabelsConverted = webhook
	// The reduced value is not what is stored: nothing to keep for reuse.
	if reduced, ok := reducedExtractor(crd, version, plain); ok && !webhook {
		res.Extract = reduced
	}
	return res, trustAll
}

func storageVersion(crd *apiextensionsv1.CustomResourceDefinition) string {
	for _, v := range crd.Spec.Versions {
		if v.Storage {
			return v.Name
		}
	}
	return ""
}

// definitionScheme changes when harikube changes what it extracts, so that
// values indexed by an older harikube are extracted again.
const definitionScheme = "1"

// crdDefinition names everything of a CRD that what its storage version's
// extractor computes depends on: the version's schema (defaults, pruning),
// its selectable fields, unknown-field handling and conversion, and the
// Kubernetes version whose code applies them.
func crdDefinition(crd *apiextensionsv1.CustomResourceDefinition, version string) string {
	var v apiextensionsv1.CustomResourceDefinitionVersion
	for _, cand := range crd.Spec.Versions {
		if cand.Name == version {
			v = cand
		}
	}
	h := sha256.New()
	_ = json.NewEncoder(h).Encode(struct {
		Scheme, Kubernetes, Version string
		Schema                      *apiextensionsv1.CustomResourceValidation
		SelectableFields            []apiextensionsv1.SelectableField
		PreserveUnknownFields       bool
		Conversion                  *apiextensionsv1.CustomResourceConversion
	}{definitionScheme, utilversion.Get().GitVersion, v.Name, v.Schema, v.SelectableFields, crd.Spec.PreserveUnknownFields, crd.Spec.Conversion})
	return "crd/" + hex.EncodeToString(h.Sum(nil))
}

// builtinDefinition is the definition of every built-in resource: its code
// is the binary's.
func builtinDefinition() string {
	return "builtin/" + definitionScheme + "/" + utilversion.Get().GitVersion
}

// decoder decodes a stored value into into; keep, called once the caller is
// done reading the object, offers it for reuse.
type decoder func(value []byte, into runtime.Object) (keep func(), err error)

func decodeWith(codec runtime.Codec) decoder {
	return func(value []byte, into runtime.Object) (func(), error) {
		return func() {}, runtime.DecodeInto(codec, value, into)
	}
}

// attributesOf is the extractor of a resource's stored values: decoded
// with its storage codec, read with its own attribute function.
func attributesOf(newFunc func() runtime.Object, getAttrs storage.AttrFunc, decode decoder) index.Extractor {
	return func(value []byte) (labels.Set, fields.Set, error) {
		obj := newFunc()
		keep, err := decode(value, obj)
		if err != nil {
			return nil, nil, err
		}
		ls, fs, err := getAttrs(obj)
		if err == nil {
			keep()
		}
		return ls, fs, err
	}
}

// resourceIndex registers extract, so indexed fields are exactly the fields
// the resource's selectors can name.
func resourceIndex(name string, config *storagebackend.ConfigForResource, resourcePrefix string, newFunc func() runtime.Object, getAttrs storage.AttrFunc, extract index.Extractor) index.Resource {
	var names []string
	if getAttrs == nil {
		return index.Resource{Name: name}
	}
	if _, fs, err := getAttrs(newFunc()); err == nil {
		for f := range fs {
			names = append(names, f)
		}
		sort.Strings(names)
	} else {
		klog.V(2).InfoS("Field selectors will be filtered in the apiserver only", "resource", name, "err", err)
	}
	return index.Resource{Name: name, Prefix: keyPrefix(config, resourcePrefix), Extract: extract, Fields: names, Definition: builtinDefinition()}
}

// keyPrefix is where the etcd3 store keeps the resource's objects.
func keyPrefix(config *storagebackend.ConfigForResource, resourcePrefix string) string {
	return path.Join("/", config.Prefix, resourcePrefix) + "/"
}

// selectorStorage is the etcd3 store with selectors sent along on the two
// calls that take a predicate; every other call is the store's own.
type selectorStorage struct {
	storage.Interface
	resource string
	trust    trust
}

// withSelection attaches the predicate's selection to ctx; page marks it as
// GetList's (selection.Selection.Page).
func (s *selectorStorage) withSelection(ctx context.Context, p storage.SelectionPredicate, verb string, page bool) (context.Context, bool) {
	sel := selection.FromSelectors(p.Label, p.Field)
	sel.Page = page
	if s.trust != trustAll {
		fs := sel.Fields[:0:0]
		for _, r := range sel.Fields {
			if r.Key == index.FieldName || r.Key == index.FieldNamespace {
				fs = append(fs, r)
			}
		}
		sel.Fields = fs
	}
	if s.trust == trustNames {
		sel.Labels = nil
	}
	if sel.Empty() {
		return ctx, false
	}
	out, err := selection.NewOutgoingContext(ctx, sel)
	if err != nil {
		klog.V(2).InfoS("Selectors not pushed down", "resource", s.resource, "err", err)
		return ctx, false
	}
	metricRequests.WithLabelValues(s.resource, verb).Inc()
	return out, true
}

func (s *selectorStorage) GetList(ctx context.Context, key string, opts storage.ListOptions, listObj runtime.Object) error {
	// GetList (k8s.io/apiserver v0.37.2 storage/etcd3) reads a Range's
	// Count only to tell whether more rows follow a page.
	ctx, pushed := s.withSelection(ctx, opts.Predicate, "list", true)
	if err := s.Interface.GetList(ctx, key, opts, listObj); err != nil {
		return err
	}
	if pushed {
		metricItemsKept.WithLabelValues(s.resource).Add(float64(meta.LenList(listObj)))
	}
	return nil
}

func (s *selectorStorage) Watch(ctx context.Context, key string, opts storage.ListOptions) (watch.Interface, error) {
	ctx, _ = s.withSelection(ctx, opts.Predicate, "watch", false)
	return s.Interface.Watch(ctx, key, opts)
}

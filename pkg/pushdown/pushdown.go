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
	"path"
	"reflect"
	"sort"
	"sync"

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
}

// Wrapper returns the function that wraps the apiserver's REST options
// getters; customResources marks the getter of custom resources.
func Wrapper(opts Options) func(inner generic.RESTOptionsGetter, customResources bool) generic.RESTOptionsGetter {
	return func(inner generic.RESTOptionsGetter, customResources bool) generic.RESTOptionsGetter {
		return &getter{inner: inner, opts: opts, customResources: customResources}
	}
}

type getter struct {
	inner           generic.RESTOptionsGetter
	opts            Options
	customResources bool
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
		raw, destroy, err := generic.NewRawStorage(config, newFunc, newListFunc, resourcePrefix)
		if err != nil {
			return raw, destroy, err
		}
		name := config.GroupResource.String()
		if g.opts.Registry != nil && getAttrs != nil {
			g.opts.Registry.Register(resourceIndex(name, config, resourcePrefix, newFunc, getAttrs))
		}
		var s = raw
		if g.opts.Pushdown {
			s = &selectorStorage{Interface: raw, resource: name}
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

// resourceIndex builds the extractor the datastore indexes this resource's
// values with: the resource's storage codec and its own attribute function,
// so indexed fields are exactly the fields its selectors can name.
func resourceIndex(name string, config *storagebackend.ConfigForResource, resourcePrefix string, newFunc func() runtime.Object, getAttrs storage.AttrFunc) index.Resource {
	codec := config.Codec
	extract := func(value []byte) (labels.Set, fields.Set, error) {
		obj := newFunc()
		if err := runtime.DecodeInto(codec, value, obj); err != nil {
			return nil, nil, err
		}
		return getAttrs(obj)
	}
	var names []string
	if _, fs, err := getAttrs(newFunc()); err == nil {
		for f := range fs {
			names = append(names, f)
		}
		sort.Strings(names)
	} else {
		klog.V(2).InfoS("Field selectors will be filtered in the apiserver only", "resource", name, "err", err)
	}
	prefix := path.Join("/", config.Prefix, resourcePrefix) + "/"
	return index.Resource{Name: name, Prefix: prefix, Extract: extract, Fields: names}
}

// selectorStorage is the etcd3 store with selectors sent along on the two
// calls that take a predicate; every other call is the store's own.
type selectorStorage struct {
	storage.Interface
	resource string
}

func (s *selectorStorage) withSelection(ctx context.Context, p storage.SelectionPredicate, verb string) (context.Context, bool) {
	sel := selection.FromSelectors(p.Label, p.Field)
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
	ctx, pushed := s.withSelection(ctx, opts.Predicate, "list")
	if err := s.Interface.GetList(ctx, key, opts, listObj); err != nil {
		return err
	}
	if pushed {
		metricItemsKept.WithLabelValues(s.resource).Add(float64(meta.LenList(listObj)))
	}
	return nil
}

func (s *selectorStorage) Watch(ctx context.Context, key string, opts storage.ListOptions) (watch.Interface, error) {
	ctx, _ = s.withSelection(ctx, opts.Predicate, "watch")
	return s.Interface.Watch(ctx, key, opts)
}

package pushdown

import (
	"bytes"
	"fmt"
	"hash/maphash"
	"reflect"
	"sync/atomic"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/lru"
)

// Bounds of the decoded values kept for reuse: enough for the writes in
// flight and the watch events behind them; a larger value is decoded again.
const (
	reuseEntries  = 256
	reuseMaxBytes = 16 << 10
)

// decodedValues holds, for a little while, the custom resources the
// datastore's extraction decoded while indexing a write. The apiserver
// decodes the same bytes with the same codec right after: the store's answer
// to the write and each watch's event. Decoding is a function of the bytes,
// the codec and the target type, so a copy of the kept object is what the
// codec would have returned, at the cost of a copy instead of a JSON parse,
// schema coercion and defaulting.
type decodedValues struct {
	seed  maphash.Seed
	cache *lru.Cache
}

func newDecodedValues() *decodedValues {
	return &decodedValues{seed: maphash.MakeSeed(), cache: lru.New(reuseEntries)}
}

type decodedKey struct {
	codec *reusingCodec
	sum   uint64
}

type decodedValue struct {
	value []byte
	// kind is the target's kind before decoding (its version selects the
	// conversion); obj is the result and gvk the kind the bytes declared.
	kind schema.GroupVersionKind
	obj  *unstructured.Unstructured
	gvk  schema.GroupVersionKind
}

// reusingCodec is a custom resource storage's codec that answers a decode of
// bytes its extraction decoded with a copy of that object.
type reusingCodec struct {
	runtime.Codec
	values   *decodedValues
	resource string
	// kept turns lookups on once this codec has kept a value: a storage of
	// a version other than the storage version never does, and its decodes
	// skip the hash and the cache's lock.
	kept atomic.Bool
}

func (v *decodedValues) codec(inner runtime.Codec, resource string) *reusingCodec {
	return &reusingCodec{Codec: inner, values: v, resource: resource}
}

// decodeToKeep decodes value into into, as runtime.DecodeInto does; keep
// offers the result for the apiserver's decodes of the same bytes, once the
// caller no longer changes it.
func (c *reusingCodec) decodeToKeep(value []byte, into runtime.Object) (keep func(), err error) {
	u, ok := into.(*unstructured.Unstructured)
	if !ok || len(value) > reuseMaxBytes {
		return func() {}, runtime.DecodeInto(c.Codec, value, into)
	}
	kind := u.GroupVersionKind()
	out, gvk, err := c.Codec.Decode(value, nil, into)
	if err != nil {
		return nil, err
	}
	if out != into {
		return nil, fmt.Errorf("unable to decode %s into %v", kind, reflect.TypeOf(into))
	}
	decoded := decodedValue{value: bytes.Clone(value), kind: kind, obj: u, gvk: *gvk}
	return func() {
		c.values.cache.Add(c.key(value), decoded)
		c.kept.Store(true)
	}, nil
}

func (c *reusingCodec) key(value []byte) decodedKey {
	return decodedKey{codec: c, sum: maphash.Bytes(c.values.seed, value)}
}

// Decode answers from a kept object when the request is the one the
// extraction made: the same bytes, no default kind, and either no target
// (the watch's decode, which converts to the codec's decode version, the
// version of the target the extraction used) or a target of that same kind.
func (c *reusingCodec) Decode(data []byte, defaults *schema.GroupVersionKind, into runtime.Object) (runtime.Object, *schema.GroupVersionKind, error) {
	if defaults != nil || len(data) > reuseMaxBytes || !c.kept.Load() {
		return c.Codec.Decode(data, defaults, into)
	}
	kept, ok := c.values.cache.Get(c.key(data))
	if !ok {
		return c.Codec.Decode(data, defaults, into)
	}
	d := kept.(decodedValue)
	if !bytes.Equal(d.value, data) {
		return c.Codec.Decode(data, defaults, into)
	}
	gvk := d.gvk
	switch target := into.(type) {
	case nil:
		metricDecodedReused.WithLabelValues(c.resource).Inc()
		return d.obj.DeepCopy(), &gvk, nil
	case *unstructured.Unstructured:
		if target.GroupVersionKind() != d.kind {
			break
		}
		metricDecodedReused.WithLabelValues(c.resource).Inc()
		target.Object = runtime.DeepCopyJSON(d.obj.Object)
		return target, &gvk, nil
	}
	return c.Codec.Decode(data, defaults, into)
}

// Package index extracts what the datastore indexes from a stored value: the
// object's labels and its selectable fields. The apiserver side registers, per
// resource, an extractor built from the resource's own codec and attribute
// function; values of unregistered keys fall back to a generic decoder that
// understands object metadata only.
package index

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
)

// Field names every decodable object has, whatever its resource.
const (
	FieldName      = "metadata.name"
	FieldNamespace = "metadata.namespace"
)

// GenericFields are the fields the generic decoder yields.
var GenericFields = []string{FieldName, FieldNamespace}

// Extractor decodes a stored value into the labels and fields the resource's
// selectors are evaluated on.
type Extractor func(value []byte) (labels.Set, fields.Set, error)

// Resource is one registered key prefix, such as "/registry/pods/".
type Resource struct {
	// Name identifies the resource in metrics, e.g. "pods" or "widgets.example.com".
	Name    string
	Prefix  string
	Extract Extractor
	// Fields lists the field names Extract yields for every object; fields
	// missing from one object's set are indexed as "", which is how
	// upstream reads a missing field.
	Fields []string
	// Definition names what Extract computes (the resource's schema,
	// defaults, selectable fields, storage version, conversion and the
	// Kubernetes version): values indexed under another definition are not
	// trusted until they are extracted again. "" is never trusted.
	Definition string
	// Mutable marks resources whose definition can change while the server
	// runs (custom resources): each new registration re-indexes, since the
	// definition it names is read beside the storage that registers, not
	// from it.
	Mutable bool
	// LabelsConverted marks resources whose stored objects may reach Extract
	// through a conversion webhook, which may change labels: while such a
	// resource is re-indexed its labels are not filtered in SQL either.
	LabelsConverted bool
	// Generation is set by Register: it tells extractions by this
	// registration from those of the registrations before it.
	Generation int64
}

// Entry is what the index keeps for one stored value.
type Entry struct {
	Decoded bool
	Labels  map[string]string
	Fields  map[string]string
	// Prefix and Generation identify the registration that extracted the
	// entry ("" and 0 for the generic decoder).
	Prefix     string
	Generation int64
}

// Registry maps key prefixes to extractors. It is safe for concurrent use.
type Registry struct {
	mu         sync.RWMutex
	resources  map[string]Resource
	prefixes   []string // longest first
	watchers   []func(Resource)
	generation int64
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{resources: map[string]Resource{}}
}

// Register adds or replaces the extractor for res.Prefix and tells watchers.
func (r *Registry) Register(res Resource) {
	res.Fields = normalizeFields(res.Fields)
	r.mu.Lock()
	r.generation++
	res.Generation = r.generation
	if _, ok := r.resources[res.Prefix]; !ok {
		r.prefixes = append(r.prefixes, res.Prefix)
		sort.Slice(r.prefixes, func(i, j int) bool { return len(r.prefixes[i]) > len(r.prefixes[j]) })
	}
	r.resources[res.Prefix] = res
	watchers := append([]func(Resource){}, r.watchers...)
	r.mu.Unlock()
	for _, w := range watchers {
		w(res)
	}
}

// Watch calls fn for every registered resource, now and on each later
// registration.
func (r *Registry) Watch(fn func(Resource)) {
	r.mu.Lock()
	r.watchers = append(r.watchers, fn)
	existing := make([]Resource, 0, len(r.resources))
	for _, p := range r.prefixes {
		existing = append(existing, r.resources[p])
	}
	r.mu.Unlock()
	for _, res := range existing {
		fn(res)
	}
}

// Lookup returns the resource whose prefix is the longest prefix of key.
func (r *Registry) Lookup(key string) (Resource, bool) {
	if r == nil {
		return Resource{}, false
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, p := range r.prefixes {
		if strings.HasPrefix(key, p) {
			return r.resources[p], true
		}
	}
	return Resource{}, false
}

// Extract computes the index entry for a value stored at key. It never
// fails: a value it cannot decode gives an entry with Decoded false.
func (r *Registry) Extract(key string, value []byte) Entry {
	if res, ok := r.Lookup(key); ok {
		return res.Entry(value)
	}
	return extractGeneric(value)
}

// Entry computes the index entry of value with this registration's
// extractor; like Registry.Extract it never fails.
func (res Resource) Entry(value []byte) (entry Entry) {
	defer func() {
		// An extractor is upstream code run on arbitrary bytes; a panic
		// must cost the index entry, never the write.
		if recover() != nil {
			entry = Entry{Prefix: res.Prefix, Generation: res.Generation}
		}
	}()
	ls, fs, err := res.Extract(value)
	if err != nil {
		return Entry{Prefix: res.Prefix, Generation: res.Generation}
	}
	entry = Entry{Decoded: true, Labels: map[string]string(ls), Fields: map[string]string{}, Prefix: res.Prefix, Generation: res.Generation}
	for _, f := range res.Fields {
		entry.Fields[f] = fs[f]
	}
	for k, v := range fs {
		entry.Fields[k] = v
	}
	return entry
}

// protobufMagic prefixes values the apiserver stores as protobuf.
var protobufMagic = []byte("k8s\x00")

// extractGeneric reads labels, name and namespace from JSON or protobuf
// objects without knowing their type.
func extractGeneric(value []byte) Entry {
	meta, err := DecodeMetadata(value)
	if err != nil {
		return Entry{}
	}
	return Entry{
		Decoded: true,
		Labels:  meta.Labels,
		Fields:  map[string]string{FieldName: meta.Name, FieldNamespace: meta.Namespace},
	}
}

// DecodeMetadata returns the ObjectMeta of a JSON or protobuf encoded object.
func DecodeMetadata(value []byte) (*metav1.ObjectMeta, error) {
	switch {
	case bytes.HasPrefix(value, protobufMagic):
		var unknown runtime.Unknown
		if err := unknown.Unmarshal(value[len(protobufMagic):]); err != nil {
			return nil, fmt.Errorf("decode protobuf envelope: %w", err)
		}
		// Every top-level API object carries ObjectMeta as field 1, which
		// is all PartialObjectMetadata reads; the generated unmarshaller
		// skips the other fields.
		var partial metav1.PartialObjectMetadata
		if err := partial.Unmarshal(unknown.Raw); err != nil {
			return nil, fmt.Errorf("decode protobuf metadata: %w", err)
		}
		return &partial.ObjectMeta, nil
	case len(bytes.TrimSpace(value)) > 0 && bytes.TrimSpace(value)[0] == '{':
		var partial struct {
			Metadata metav1.ObjectMeta `json:"metadata"`
		}
		if err := json.Unmarshal(value, &partial); err != nil {
			return nil, fmt.Errorf("decode JSON metadata: %w", err)
		}
		return &partial.Metadata, nil
	}
	return nil, fmt.Errorf("unknown encoding")
}

func normalizeFields(fs []string) []string {
	seen := map[string]bool{}
	out := make([]string, 0, len(fs)+len(GenericFields))
	for _, f := range append(append([]string{}, fs...), GenericFields...) {
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out
}

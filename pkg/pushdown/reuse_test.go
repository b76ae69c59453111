package pushdown

import (
	"fmt"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// countingCodec counts the decodes that reach the real codec.
type countingCodec struct {
	runtime.Codec
	decodes int
}

func (c *countingCodec) Decode(data []byte, defaults *schema.GroupVersionKind, into runtime.Object) (runtime.Object, *schema.GroupVersionKind, error) {
	c.decodes++
	return c.Codec.Decode(data, defaults, into)
}

var widgetKind = schema.GroupVersionKind{Group: "example.com", Version: "v1", Kind: "Widget"}

func widgetValue(name string, size int) []byte {
	return fmt.Appendf(nil, `{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":%q},"spec":{"size":%d,"tags":["a","b"]}}`, name, size)
}

func newWidget() *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(widgetKind)
	return u
}

// The unit tests cover the cache's bookkeeping; tests/e2e
// TestDecodedValuesReused compares its answers with the CRD codec's.
func TestReusedDecodesAreIndependentCopies(t *testing.T) {
	inner := &countingCodec{Codec: unstructured.UnstructuredJSONScheme}
	c := newDecodedValues().codec(inner, "widgets.example.com")
	value := widgetValue("one", 1)
	kept := newWidget()
	keep, err := c.decodeToKeep(value, kept)
	if err != nil {
		t.Fatal(err)
	}
	// Nothing is offered while the extractor still reads the object.
	if _, _, err := c.Decode(value, nil, nil); err != nil || inner.decodes != 2 {
		t.Fatalf("decoded before the extractor was done: err %v, real decodes %d, want 2", err, inner.decodes)
	}
	keep()
	fresh, _, err := unstructured.UnstructuredJSONScheme.Decode(value, nil, newWidget())
	if err != nil {
		t.Fatal(err)
	}
	for _, into := range []runtime.Object{nil, newWidget()} {
		got, gvk, err := c.Decode(value, nil, into)
		if err != nil {
			t.Fatal(err)
		}
		if into != nil && got != into {
			t.Fatalf("decode into %T returned another object", into)
		}
		if *gvk != widgetKind || !equality.Semantic.DeepEqual(got, fresh) {
			t.Fatalf("reused decode = %v %v, want %v %v", gvk, got, widgetKind, fresh)
		}
		// The caller owns what it got: the versioner sets resourceVersion.
		got.(*unstructured.Unstructured).SetResourceVersion("7")
		unstructured.SetNestedStringSlice(got.(*unstructured.Unstructured).Object, []string{"changed"}, "spec", "tags")
	}
	again, _, _ := c.Decode(value, nil, nil)
	if !equality.Semantic.DeepEqual(again, fresh) || !equality.Semantic.DeepEqual(kept, fresh) {
		t.Fatalf("a caller's change reached the kept object: %v", again)
	}
	if inner.decodes != 2 {
		t.Fatalf("real decodes = %d, want 2: the extraction's and the one before keep", inner.decodes)
	}
}

func TestDecodesThatAreNotReused(t *testing.T) {
	values := newDecodedValues()
	inner := &countingCodec{Codec: unstructured.UnstructuredJSONScheme}
	c := values.codec(inner, "widgets.example.com")
	value := widgetValue("one", 1)
	keep, err := c.decodeToKeep(value, newWidget())
	if err != nil {
		t.Fatal(err)
	}
	keep()
	otherVersion := newWidget()
	otherVersion.SetGroupVersionKind(schema.GroupVersionKind{Group: "example.com", Version: "v2", Kind: "Widget"})
	large := widgetValue(strings.Repeat("x", reuseMaxBytes), 2)
	keep, err = c.decodeToKeep(large, newWidget())
	if err != nil {
		t.Fatal(err)
	}
	keep()
	otherCodec := values.codec(unstructured.UnstructuredJSONScheme, "widgets.example.com")
	cases := []struct {
		name     string
		codec    *reusingCodec
		value    []byte
		defaults *schema.GroupVersionKind
		into     runtime.Object
	}{
		{"other bytes", c, widgetValue("one", 2), nil, nil},
		{"a default kind", c, value, &widgetKind, nil},
		{"a target of another version", c, value, nil, otherVersion},
		{"a typed target", c, value, nil, &runtime.Unknown{}},
		{"a value over the size kept", c, large, nil, nil},
	}
	for _, tc := range cases {
		before := inner.decodes
		_, _, _ = tc.codec.Decode(tc.value, tc.defaults, tc.into)
		if inner.decodes != before+1 {
			t.Errorf("%s: not decoded by the real codec", tc.name)
		}
	}
	// Another storage's codec (another version of the resource) never
	// sees this one's objects.
	countOther := &countingCodec{Codec: unstructured.UnstructuredJSONScheme}
	otherCodec.Codec = countOther
	if _, _, err := otherCodec.Decode(value, nil, nil); err != nil || countOther.decodes != 1 {
		t.Fatalf("another codec's decode: err %v, real decodes %d, want 1", err, countOther.decodes)
	}
	// Having kept nothing, it does not look values up at all.
	if otherCodec.kept.Load() || !c.kept.Load() {
		t.Errorf("lookups on: %v for a codec that kept nothing, %v for one that kept values; want false, true", otherCodec.kept.Load(), c.kept.Load())
	}
}

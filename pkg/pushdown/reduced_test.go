package pushdown

import (
	"bytes"
	"maps"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
)

// TestMetadataOnlyExtractsWhatTheWholeObjectGives: the wrapped extractor
// yields the same labels and fields from the reduced value as from the whole
// object, and is never handed the object's spec.
func TestMetadataOnlyExtractsWhatTheWholeObjectGives(t *testing.T) {
	var handed [][]byte
	full := func(value []byte) (labels.Set, fields.Set, error) {
		handed = append(handed, value)
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(value); err != nil {
			return nil, nil, err
		}
		return u.GetLabels(), fields.Set{"metadata.name": u.GetName(), "metadata.namespace": u.GetNamespace()}, nil
	}
	value := []byte(`{"apiVersion":"example.com/v1","kind":"Thing","metadata":{"name":"a","namespace":"ns",` +
		`"labels":{"tier":"web","empty":""},"managedFields":[{"manager":"m","fieldsV1":{"f:spec":{}}}]},` +
		`"spec":{"size":3,"nested":{"deep":[1,2,3]},"name":"not-the-name"}}`)
	wantLabels, wantFields, err := full(value)
	if err != nil {
		t.Fatal(err)
	}
	handed = nil
	gotLabels, gotFields, err := metadataOnly(full)(value)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(gotLabels, wantLabels) || !maps.Equal(gotFields, wantFields) {
		t.Errorf("reduced value gives %v %v, the whole object %v %v", gotLabels, gotFields, wantLabels, wantFields)
	}
	if len(handed) != 1 || bytes.Contains(handed[0], []byte("spec")) || bytes.Contains(handed[0], []byte("managedFields")) {
		t.Errorf("the extractor was handed %q", handed)
	}

	// A value that is no JSON object (an encrypted one) fails as the codec
	// would: the datastore then treats the row as a candidate for every read.
	if _, _, err := metadataOnly(full)([]byte("k8s:enc:aescbc:v1:key:\x00\x01")); err == nil {
		t.Error("an encrypted value was extracted")
	}
}

package index

import (
	"bytes"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/kubernetes/scheme"
)

func protobufConfigMap(t testing.TB, name string, lbls map[string]string) []byte {
	t.Helper()
	cm := &corev1.ConfigMap{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"}, ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Labels: lbls}, Data: map[string]string{"k": "v"}}
	var buf bytes.Buffer
	if err := protobuf.NewSerializer(scheme.Scheme, scheme.Scheme).Encode(cm, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestGenericExtraction(t *testing.T) {
	r := NewRegistry()
	pb := r.Extract("/registry/configmaps/ns/a", protobufConfigMap(t, "a", map[string]string{"app": "web"}))
	js := r.Extract("/registry/example.com/widgets/ns/b", []byte(`{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"b","namespace":"ns","labels":{"app":"db"}}}`))
	enc := r.Extract("/registry/secrets/ns/c", []byte("k8s:enc:aescbc:v1:key1:\x01\x02"))
	if !pb.Decoded || pb.Labels["app"] != "web" || pb.Fields[FieldName] != "a" || pb.Fields[FieldNamespace] != "ns" {
		t.Errorf("protobuf: %+v", pb)
	}
	if !js.Decoded || js.Labels["app"] != "db" || js.Fields[FieldName] != "b" {
		t.Errorf("json: %+v", js)
	}
	if enc.Decoded {
		t.Errorf("encrypted value decoded: %+v", enc)
	}
}

func TestRegisteredExtractorFillsMissingFields(t *testing.T) {
	r := NewRegistry()
	r.Register(Resource{Name: "things", Prefix: "/registry/things/", Fields: []string{"spec.a", "spec.b"}, Extract: func([]byte) (labels.Set, fields.Set, error) {
		return labels.Set{"x": "1"}, fields.Set{"spec.a": "A", "metadata.name": "n"}, nil
	}})
	e := r.Extract("/registry/things/n", []byte("{}"))
	want := map[string]string{"spec.a": "A", "spec.b": "", FieldName: "n", FieldNamespace: ""}
	if !e.Decoded || !reflect.DeepEqual(e.Fields, want) {
		t.Fatalf("got %+v, want fields %v", e, want)
	}
	if res, ok := r.Lookup("/registry/things/n"); !ok || res.Name != "things" {
		t.Fatal("lookup by prefix failed")
	}
	if _, ok := r.Lookup("/registry/thingsX/n"); ok {
		t.Fatal("lookup matched a different resource")
	}
}

func TestPanickingExtractorCostsOnlyTheEntry(t *testing.T) {
	r := NewRegistry()
	r.Register(Resource{Prefix: "/p/", Extract: func([]byte) (labels.Set, fields.Set, error) { panic("boom") }})
	if e := r.Extract("/p/x", []byte("{}")); e.Decoded {
		t.Fatalf("got %+v", e)
	}
}

// FuzzExtract: no input makes extraction panic or fail loudly, and whatever
// the generic decoder reads from a protobuf or JSON object is its metadata.
func FuzzExtract(f *testing.F) {
	f.Add(protobufConfigMap(f, "a", map[string]string{"app": "web"}), "app", "web")
	f.Add([]byte(`{"metadata":{"name":"n","labels":{"k":"v"}}}`), "k", "v")
	f.Add([]byte("k8s\x00\x0a\x02"), "", "")
	f.Add([]byte("k8s:enc:aescbc:v1:"), "", "")
	f.Add([]byte(`{"metadata":{"labels":{"k":1}}}`), "", "")
	f.Fuzz(func(t *testing.T, value []byte, key, val string) {
		r := NewRegistry()
		e := r.Extract("/registry/x/y", value)
		if e.Decoded && (e.Fields == nil || len(e.Fields) != 2) {
			t.Fatalf("decoded entry without name and namespace: %+v", e)
		}
		for i := 0; i < len(value); i += 1 + len(value)/8 {
			_ = r.Extract("/registry/x/y", value[:i])
		}
		if errs := validLabel(key, val); errs {
			pb := protobufConfigMap(t, "n", map[string]string{key: val})
			if got := r.Extract("/registry/configmaps/ns/n", pb); !got.Decoded || got.Labels[key] != val {
				t.Fatalf("protobuf labels lost: %+v", got)
			}
		}
	})
}

func validLabel(k, v string) bool {
	_, err := labels.ValidatedSelectorFromSet(labels.Set{k: v})
	return err == nil
}

var _ runtime.Object = &corev1.ConfigMap{}

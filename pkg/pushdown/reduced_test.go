package pushdown

import (
	"bytes"
	"fmt"
	"maps"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/util/jsonpath"
)

// wholeObject stands in for the storage codec and attribute function: it
// decodes the whole value and reads labels, name, namespace and the
// selectable fields, and records what it was handed.
func wholeObject(t *testing.T, paths []string, handed *[][]byte) func([]byte) (labels.Set, fields.Set, error) {
	return func(value []byte) (labels.Set, fields.Set, error) {
		*handed = append(*handed, value)
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(value); err != nil {
			return nil, nil, err
		}
		fs := fields.Set{"metadata.name": u.GetName(), "metadata.namespace": u.GetNamespace()}
		for _, p := range paths {
			jp := jsonpath.New(p).AllowMissingKeys(true)
			if err := jp.Parse("{" + p + "}"); err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			if err := jp.Execute(&b, u.Object); err != nil {
				return nil, nil, err
			}
			fs[p[1:]] = b.String()
		}
		return u.GetLabels(), fs, nil
	}
}

// TestReducedExtractsWhatTheWholeObjectGives: the wrapped extractor yields
// the same labels and fields from the reduced value as from the whole
// object, and is handed neither the rest of the spec nor managed fields.
func TestReducedExtractsWhatTheWholeObjectGives(t *testing.T) {
	paths := []string{".spec.color", ".spec.shape.edges", ".status.phase", ".spec.missing.deep"}
	var handed [][]byte
	full := wholeObject(t, paths, &handed)
	for _, value := range []string{
		`{"apiVersion":"example.com/v1","kind":"Thing","metadata":{"name":"a","namespace":"ns",` +
			`"labels":{"tier":"web","empty":""},"managedFields":[{"manager":"m","fieldsV1":{"f:spec":{}}}]},` +
			`"spec":{"color":"red","shape":{"edges":4,"payload":"xxxxxxxx"},"payload":"yyyyyyyy"},"status":{"phase":"Ready"}}`,
		`{"apiVersion":"example.com/v1","kind":"Thing","metadata":{"name":"b"},"spec":{"shape":null,"payload":"zz"}}`,
		`{"apiVersion":"example.com/v1","kind":"Thing","metadata":{"name":"c","labels":{"x":"1"}}}`,
	} {
		wantLabels, wantFields, err := full([]byte(value))
		if err != nil {
			t.Fatal(err)
		}
		handed = nil
		gotLabels, gotFields, err := reduced(full, splitPaths(paths))([]byte(value))
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(gotLabels, wantLabels) || !maps.Equal(gotFields, wantFields) {
			t.Errorf("%s: reduced value gives %v %v, the whole object %v %v", value, gotLabels, gotFields, wantLabels, wantFields)
		}
		if len(handed) != 1 || bytes.Contains(handed[0], []byte("payload")) || bytes.Contains(handed[0], []byte("managedFields")) {
			t.Errorf("the extractor was handed %s", handed)
		}
	}

	// A value that is no JSON object (an encrypted one) fails as the codec
	// would: the datastore then treats the row as a candidate for every read.
	if _, _, err := reduced(full, nil)([]byte("k8s:enc:aescbc:v1:key:\x00\x01")); err == nil {
		t.Error("an encrypted value was extracted")
	}
}

func splitPaths(paths []string) [][]string {
	var out [][]string
	for _, p := range paths {
		var parts []string
		for _, s := range bytes.Split([]byte(p[1:]), []byte(".")) {
			parts = append(parts, string(s))
		}
		out = append(out, parts)
	}
	return out
}

// TestReducedOnlyForPlainPaths: a default, an embedded resource or
// preserved unknown fields on a selectable field's path keep the whole
// object decode, whose result depends on more than the path; so does a
// small schema.
func TestReducedOnlyForPlainPaths(t *testing.T) {
	str := apiextensionsv1.JSONSchemaProps{Type: "string"}
	withDefault := str
	withDefault.Default = &apiextensionsv1.JSON{Raw: []byte(`"grey"`)}
	yes := true
	// filler makes the schema large enough for the reduced value.
	filler := map[string]apiextensionsv1.JSONSchemaProps{}
	for i := range minReducedProperties {
		filler[fmt.Sprintf("p%d", i)] = str
	}
	crd := func(spec apiextensionsv1.JSONSchemaProps, paths ...string) *apiextensionsv1.CustomResourceDefinition {
		v := apiextensionsv1.CustomResourceDefinitionVersion{Name: "v1", Storage: true,
			Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
				Type: "object", Properties: map[string]apiextensionsv1.JSONSchemaProps{"spec": spec,
					"status": {Type: "object", Properties: filler}}}}}
		for _, p := range paths {
			v.SelectableFields = append(v.SelectableFields, apiextensionsv1.SelectableField{JSONPath: p})
		}
		return &apiextensionsv1.CustomResourceDefinition{Spec: apiextensionsv1.CustomResourceDefinitionSpec{Versions: []apiextensionsv1.CustomResourceDefinitionVersion{v}}}
	}
	object := func(props map[string]apiextensionsv1.JSONSchemaProps) apiextensionsv1.JSONSchemaProps {
		return apiextensionsv1.JSONSchemaProps{Type: "object", Properties: props}
	}
	embedded := object(map[string]apiextensionsv1.JSONSchemaProps{"color": str})
	embedded.XEmbeddedResource = true
	preserved := object(map[string]apiextensionsv1.JSONSchemaProps{"color": str})
	preserved.XPreserveUnknownFields = &yes
	extract := func([]byte) (labels.Set, fields.Set, error) { return nil, nil, nil }
	for _, c := range []struct {
		name string
		crd  *apiextensionsv1.CustomResourceDefinition
		want bool
	}{
		{"no selectable fields", crd(object(nil)), true},
		{"plain field", crd(object(map[string]apiextensionsv1.JSONSchemaProps{"color": str}), ".spec.color"), true},
		{"defaulted field", crd(object(map[string]apiextensionsv1.JSONSchemaProps{"color": withDefault}), ".spec.color"), false},
		{"embedded resource on the path", crd(embedded, ".spec.color"), false},
		{"preserved unknown fields on the path", crd(preserved, ".spec.color"), false},
		{"path not in the schema", crd(object(nil), ".spec.color"), false},
		{"bracketed path", crd(object(map[string]apiextensionsv1.JSONSchemaProps{"color": str}), ".spec['color']"), false},
	} {
		if _, ok := reducedExtractor(c.crd, "v1", extract); ok != c.want {
			t.Errorf("%s: reduced %v, want %v", c.name, ok, c.want)
		}
	}
	small := crd(object(map[string]apiextensionsv1.JSONSchemaProps{"color": str}), ".spec.color")
	small.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["status"] = apiextensionsv1.JSONSchemaProps{Type: "object"}
	if _, ok := reducedExtractor(small, "v1", extract); ok {
		t.Error("a 3-property schema is reduced; its whole-object decode is cheaper")
	}
}

package pushdown

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/harikube/harikube/pkg/index"
)

// reducedExtractor wraps the extractor of a custom resource's storage
// version (no conversion webhook) so that it is handed only what the
// version's selectors can see: the type, metadata.name, metadata.namespace,
// labels and the values at its selectable fields, with the objects on their
// paths. Decoding, pruning and defaulting a whole object against a schema of
// hundreds of properties was the largest cost harikube added to a create.
// The wrapped extractor (the storage codec and the resource's own attribute
// function) still computes the values. ok is false for a small schema,
// whose whole-object decode costs less CPU than reducing the value, and when
// a selectable field's path could come out differently from a part of the
// object: a default, an embedded resource, int-or-string or preserved unknown
// fields on the path.
func reducedExtractor(crd *apiextensionsv1.CustomResourceDefinition, version string, extract index.Extractor) (_ index.Extractor, ok bool) {
	var v *apiextensionsv1.CustomResourceDefinitionVersion
	for i := range crd.Spec.Versions {
		if crd.Spec.Versions[i].Name == version {
			v = &crd.Spec.Versions[i]
		}
	}
	if v == nil || v.Schema == nil || v.Schema.OpenAPIV3Schema == nil ||
		countProperties(v.Schema.OpenAPIV3Schema) < minReducedProperties {
		return nil, false
	}
	var paths [][]string
	for _, f := range v.SelectableFields {
		path, ok := plainPath(v.Schema.OpenAPIV3Schema, f.JSONPath)
		if !ok {
			return nil, false
		}
		paths = append(paths, path)
	}
	return reduced(extract, paths), true
}

// minReducedProperties: measured with harikube bench, reducing the value
// cost 8 % more CPU per create of a 1 KiB object of a 4-property schema, and
// 15 % less per request of a 612-property one (README, Performance).
const minReducedProperties = 64

// countProperties counts the properties a schema declares at every depth.
func countProperties(s *apiextensionsv1.JSONSchemaProps) int {
	n := len(s.Properties)
	for _, p := range s.Properties {
		n += countProperties(&p)
	}
	if s.Items != nil && s.Items.Schema != nil {
		n += countProperties(s.Items.Schema)
	}
	if s.AdditionalProperties != nil && s.AdditionalProperties.Schema != nil {
		n += countProperties(s.AdditionalProperties.Schema)
	}
	return n
}

// plainPath splits a selectable field's JSONPath (".spec.color") into
// property names whose schemas, root to leaf, have no default and nothing
// that makes the decoded value depend on the rest of the object.
func plainPath(root *apiextensionsv1.JSONSchemaProps, jsonPath string) ([]string, bool) {
	if !strings.HasPrefix(jsonPath, ".") || strings.ContainsAny(jsonPath, "[]'\"*\\@$ ") {
		return nil, false
	}
	path := strings.Split(strings.TrimPrefix(jsonPath, "."), ".")
	node := root
	for _, name := range path {
		if name == "" || !plainSchema(node) {
			return nil, false
		}
		child, found := node.Properties[name]
		if !found {
			return nil, false
		}
		node = &child
	}
	return path, plainSchema(node)
}

func plainSchema(s *apiextensionsv1.JSONSchemaProps) bool {
	return s.Default == nil && !s.XEmbeddedResource && !s.XIntOrString &&
		(s.XPreserveUnknownFields == nil || !*s.XPreserveUnknownFields)
}

// reduced hands extract a document of the value's type, name, namespace and
// labels, and the values (with their parent objects) at paths.
func reduced(extract index.Extractor, paths [][]string) index.Extractor {
	return func(value []byte) (labels.Set, fields.Set, error) {
		var top map[string]json.RawMessage
		if err := json.Unmarshal(value, &top); err != nil {
			return nil, nil, fmt.Errorf("decode object: %w", err)
		}
		var meta struct {
			Name      string            `json:"name,omitempty"`
			Namespace string            `json:"namespace,omitempty"`
			Labels    map[string]string `json:"labels,omitempty"`
		}
		if raw, ok := top["metadata"]; ok {
			if err := json.Unmarshal(raw, &meta); err != nil {
				return nil, nil, fmt.Errorf("decode metadata: %w", err)
			}
		}
		doc := map[string]any{"apiVersion": top["apiVersion"], "kind": top["kind"], "metadata": meta}
		for _, path := range paths {
			if err := copyPath(doc, top, path); err != nil {
				return nil, nil, err
			}
		}
		small, err := json.Marshal(doc)
		if err != nil {
			return nil, nil, err
		}
		return extract(small)
	}
}

// copyPath copies the value at path from src into dst, creating the objects
// on the way as they are in src; a missing, null or non-object step ends it
// as the whole object would.
func copyPath(dst map[string]any, src map[string]json.RawMessage, path []string) error {
	for i, name := range path {
		raw, ok := src[name]
		if !ok {
			return nil
		}
		trimmed := bytes.TrimSpace(raw)
		if i == len(path)-1 || len(trimmed) == 0 || trimmed[0] != '{' {
			dst[name] = raw
			return nil
		}
		var next map[string]json.RawMessage
		if err := json.Unmarshal(raw, &next); err != nil {
			return fmt.Errorf("decode %s: %w", strings.Join(path[:i+1], "."), err)
		}
		child, ok := dst[name].(map[string]any)
		if !ok {
			child = map[string]any{}
			dst[name] = child
		}
		dst, src = child, next
	}
	return nil
}

package pushdown

import (
	"encoding/json"
	"fmt"

	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/harikube/harikube/pkg/index"
)

// metadataOnly wraps the extractor of a custom resource version without
// selectable fields and without a conversion webhook. Its selectors see only
// labels, metadata.name and metadata.namespace, so the wrapped extractor (the
// storage codec and the resource's own attribute function) is handed just
// those: decoding, pruning and defaulting a whole object against a schema of
// hundreds of properties was the largest cost harikube added to a create.
func metadataOnly(extract index.Extractor) index.Extractor {
	return func(value []byte) (labels.Set, fields.Set, error) {
		var obj struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name      string            `json:"name,omitempty"`
				Namespace string            `json:"namespace,omitempty"`
				Labels    map[string]string `json:"labels,omitempty"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(value, &obj); err != nil {
			return nil, nil, fmt.Errorf("decode metadata: %w", err)
		}
		reduced, err := json.Marshal(obj)
		if err != nil {
			return nil, nil, err
		}
		return extract(reduced)
	}
}

package bench

import "testing"

// TestGadgetSchemaSize: the README's 612 properties are what the CRD's
// schema holds, counted by walking it, beside what gadgetCRD reports.
func TestGadgetSchemaSize(t *testing.T) {
	crd, reported := gadgetCRD()
	versions := crd.Object["spec"].(map[string]any)["versions"].([]any)
	root := versions[0].(map[string]any)["schema"].(map[string]any)["openAPIV3Schema"].(map[string]any)
	forProvider := root["properties"].(map[string]any)["spec"].(map[string]any)["properties"].(map[string]any)["forProvider"].(map[string]any)
	atProvider := root["properties"].(map[string]any)["status"].(map[string]any)["properties"].(map[string]any)["atProvider"].(map[string]any)
	walked := countProperties(forProvider) + countProperties(atProvider)
	if walked != reported || reported != 612 {
		t.Errorf("schema has %d properties below forProvider and atProvider, gadgetCRD reports %d; the README says 612", walked, reported)
	}
}

// countProperties counts the properties declared anywhere below s.
func countProperties(s map[string]any) int {
	props, _ := s["properties"].(map[string]any)
	n := len(props)
	for _, p := range props {
		n += countProperties(p.(map[string]any))
	}
	return n
}

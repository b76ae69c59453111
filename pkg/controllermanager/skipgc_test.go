package controllermanager

import (
	"encoding/json"
	"slices"
	"testing"

	apidiscoveryv2 "k8s.io/api/apidiscovery/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var skippedWidgets = map[schema.GroupResource]bool{{Group: "example.com", Resource: "widgets"}: true}

func TestFilterAggregatedDiscovery(t *testing.T) {
	list := apidiscoveryv2.APIGroupDiscoveryList{Items: []apidiscoveryv2.APIGroupDiscovery{
		{ObjectMeta: metav1.ObjectMeta{Name: "example.com"}, Versions: []apidiscoveryv2.APIVersionDiscovery{
			{Version: "v1", Resources: []apidiscoveryv2.APIResourceDiscovery{{Resource: "widgets"}, {Resource: "gadgets"}}},
			{Version: "v2", Resources: []apidiscoveryv2.APIResourceDiscovery{{Resource: "widgets"}}},
		}},
		// The same plural in another group stays.
		{ObjectMeta: metav1.ObjectMeta{Name: "other.com"}, Versions: []apidiscoveryv2.APIVersionDiscovery{
			{Version: "v1", Resources: []apidiscoveryv2.APIResourceDiscovery{{Resource: "widgets"}}},
		}},
	}}
	body, _ := json.Marshal(list)
	out, err := filterDiscovery("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList", "", body, skippedWidgets)
	if err != nil {
		t.Fatal(err)
	}
	var got apidiscoveryv2.APIGroupDiscoveryList
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, g := range got.Items {
		for _, v := range g.Versions {
			for _, r := range v.Resources {
				names = append(names, g.Name+"/"+v.Version+"/"+r.Resource)
			}
		}
	}
	if want := []string{"example.com/v1/gadgets", "other.com/v1/widgets"}; !slices.Equal(names, want) {
		t.Fatalf("resources after filtering: %v, want %v", names, want)
	}
	if _, err := filterDiscovery("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList", "", body, skippedWidgets); err == nil {
		t.Fatal("an aggregated discovery version the filter does not know passed unfiltered")
	}
}

func TestFilterResourceList(t *testing.T) {
	list := metav1.APIResourceList{TypeMeta: metav1.TypeMeta{Kind: "APIResourceList"}, GroupVersion: "example.com/v1",
		APIResources: []metav1.APIResource{{Name: "widgets"}, {Name: "widgets/status"}, {Name: "gadgets"}}}
	body, _ := json.Marshal(list)
	out, err := filterDiscovery("application/json", "example.com", body, skippedWidgets)
	if err != nil {
		t.Fatal(err)
	}
	var got metav1.APIResourceList
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.APIResources) != 1 || got.APIResources[0].Name != "gadgets" {
		t.Fatalf("resources after filtering: %v, want gadgets only", got.APIResources)
	}
	if _, err := filterDiscovery("application/vnd.kubernetes.protobuf", "example.com", body, skippedWidgets); err == nil {
		t.Fatal("a protobuf answer passed unfiltered")
	}
}

func TestDiscoveryPath(t *testing.T) {
	for path, want := range map[string]struct {
		group      string
		perVersion bool
		ok         bool
	}{
		"/api": {ok: true}, "/apis": {ok: true}, "/api/v1": {perVersion: true, ok: true},
		"/apis/example.com/v1": {group: "example.com", perVersion: true, ok: true},
		"/apis/example.com":    {}, "/api/v1/namespaces": {}, "/apis/example.com/v1/widgets": {}, "/healthz": {},
	} {
		group, perVersion, ok := discoveryPath(path)
		if group != want.group || perVersion != want.perVersion || ok != want.ok {
			t.Errorf("discoveryPath(%q) = %q, %v, %v; want %q, %v, %v", path, group, perVersion, ok, want.group, want.perVersion, want.ok)
		}
	}
}

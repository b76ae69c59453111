package bench

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// The custom resource the bench stores: namespaced widgets with a selectable
// spec.shard and a 1 KiB payload.
const (
	group     = "bench.harikube.io"
	crdName   = "widgets." + group
	namespace = "default"
	// payloadBytes is the size of spec.payload.
	payloadBytes = 1024
	// pageSize is the limit of every paginated LIST.
	pageSize = 500
)

var (
	widgets = schema.GroupVersionResource{Group: group, Version: "v1", Resource: "widgets"}
	crds    = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
)

func widgetCRD() *unstructured.Unstructured {
	return namespacedCRD("widgets", "Widget", []string{"shard", "payload"}, []string{".spec.shard"})
}

// namespacedCRD is the CRD of a namespaced resource of the bench's group
// whose spec has the given string properties and selectable fields.
func namespacedCRD(plural, kind string, specStrings, selectable []string) *unstructured.Unstructured {
	props := map[string]any{}
	for _, p := range specStrings {
		props[p] = map[string]any{"type": "string"}
	}
	var fields []any
	for _, f := range selectable {
		fields = append(fields, map[string]any{"jsonPath": f})
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1",
		"kind":       "CustomResourceDefinition",
		"metadata":   map[string]any{"name": plural + "." + group},
		"spec": map[string]any{
			"group": group,
			"scope": "Namespaced",
			"names": map[string]any{"plural": plural, "singular": strings.ToLower(kind), "kind": kind, "listKind": kind + "List"},
			"versions": []any{map[string]any{
				"name": "v1", "served": true, "storage": true,
				"schema": map[string]any{"openAPIV3Schema": map[string]any{
					"type":       "object",
					"properties": map[string]any{"spec": map[string]any{"type": "object", "properties": props}},
				}},
				"selectableFields": fields,
			}},
		},
	}}
}

// widgetName is the name of seeded object i; names sort in seeding order.
func widgetName(i int) string { return fmt.Sprintf("w-%07d", i) }

// widget is seeded object i. Its labels make selectors match one object
// (id), 0.1 % (permille) and 10 % (decile); spec.shard is unique.
func widget(i int) *unstructured.Unstructured {
	return newWidget(widgetName(i), map[string]any{
		"id":       strconv.Itoa(i),
		"permille": strconv.Itoa(i % 1000),
		"decile":   strconv.Itoa(i % 10),
	}, shard(i), payload(i))
}

// newWidget is a widget in the bench's namespace.
func newWidget(name string, labels map[string]any, shard, payload string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": group + "/v1",
		"kind":       "Widget",
		"metadata":   map[string]any{"name": name, "namespace": namespace, "labels": labels},
		"spec":       map[string]any{"shard": shard, "payload": payload},
	}}
}

func shard(i int) string { return "s" + strconv.Itoa(i) }

// payload is payloadBytes of text that differs between objects.
func payload(i int) string {
	seed := fmt.Sprintf("widget-%d-", i)
	return strings.Repeat(seed, payloadBytes/len(seed)+1)[:payloadBytes]
}

// watchWidget is the object created to time watch event k: it matches the
// watch's decile=7 selector and no LIST workload (which are all done by
// then).
func watchWidget(k int) *unstructured.Unstructured {
	return newWidget(fmt.Sprintf("watch-%04d", k), map[string]any{"decile": "7", "bench-watch": "true"},
		fmt.Sprintf("watch-%d", k), payload(-k-1))
}

// Workload is one timed LIST: its selectors, its page size (0: one
// request) and which seeded objects it must return.
type Workload struct {
	Key           string
	Title         string
	LabelSelector string
	FieldSelector string
	Limit         int64
	// Selective workloads match at most 0.1 % of the objects.
	Selective bool
	match     func(i int) bool
}

// Workloads are the LIST workloads, each selector with and without paging,
// and a paginated LIST of everything.
func Workloads() []Workload {
	base := []Workload{
		{Key: "label-1", Title: "label id=7 (1 object)", LabelSelector: "id=7", Selective: true,
			match: func(i int) bool { return i == 7 }},
		{Key: "label-0.1%", Title: "label permille=7 (0.1 %)", LabelSelector: "permille=7", Selective: true,
			match: func(i int) bool { return i%1000 == 7 }},
		{Key: "label-10%", Title: "label decile=7 (10 %)", LabelSelector: "decile=7",
			match: func(i int) bool { return i%10 == 7 }},
		{Key: "field-1", Title: "field spec.shard=s7 (1 object)", FieldSelector: "spec.shard=" + shard(7), Selective: true,
			match: func(i int) bool { return i == 7 }},
	}
	var out []Workload
	for _, w := range base {
		paged := w
		paged.Key += "-paged"
		paged.Title = strings.Replace(w.Title, " (", ", limit=500 (", 1)
		paged.Limit = pageSize
		out = append(out, w, paged)
	}
	return append(out, Workload{Key: "all-paged", Title: "all objects, limit=500 (100 %)", Limit: pageSize,
		match: func(int) bool { return true }})
}

// Matches counts the seeded objects among n that the workload returns.
func (w Workload) Matches(n int) int {
	count := 0
	for i := 0; i < n; i++ {
		if w.match(i) {
			count++
		}
	}
	return count
}

// Expected returns the sorted names the workload must return among n
// seeded objects.
func (w Workload) Expected(n int) []string {
	var names []string
	for i := 0; i < n; i++ {
		if w.match(i) {
			names = append(names, widgetName(i))
		}
	}
	sort.Strings(names)
	return names
}

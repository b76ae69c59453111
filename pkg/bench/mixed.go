package bench

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

// The mixed workload's custom resource: cluster-scoped gadgets whose CRD
// has an OpenAPI schema of several hundred properties, the size of a cloud
// provider's CRDs, so that decoding, validation and pruning cost what they
// cost there.
const (
	gadgetCRDName = "gadgets." + group
	// gadgetGroups × gadgetFields leaf properties under spec.forProvider,
	// and as many objects again under status.atProvider.
	gadgetGroups = 24
	gadgetFields = 16
	// gadgetFilledGroups of spec.forProvider are set in every object.
	gadgetFilledGroups = 8
)

var gadgets = schema.GroupVersionResource{Group: group, Version: "v1", Resource: "gadgets"}

// MixedOptions configure the mixed workload: Clients concurrent clients,
// each creating a gadget and reading it back by label, for Duration.
type MixedOptions struct {
	Clients  int
	Duration time.Duration
}

// MixedResult is the mixed workload in one mode.
type MixedResult struct {
	Mode     string  `json:"mode"`
	Clients  int     `json:"clients"`
	Seconds  float64 `json:"seconds"`
	Requests int     `json:"requests"`
	// PerSecond counts creates and LISTs together.
	PerSecond float64 `json:"requests_per_second"`
	All       Latency `json:"all"`
	Creates   Latency `json:"creates"`
	Lists     Latency `json:"lists"`
	// CPUSeconds is the server's user and system CPU time during the
	// workload (with etcd's in the etcd mode; PostgreSQL's is not counted).
	CPUSeconds         float64 `json:"cpu_seconds"`
	CPUSecondsPer1000  float64 `json:"cpu_seconds_per_1000_requests"`
	PropertiesInSchema int     `json:"properties_in_schema"`
}

// gadgetCRD is the CRD with the large schema.
func gadgetCRD() (*unstructured.Unstructured, int) {
	forProvider, count := gadgetSchemaGroups(gadgetGroups, "spec")
	atProvider, n := gadgetSchemaGroups(gadgetGroups/2, "status")
	count += n
	obj := func(desc string, props map[string]any) map[string]any {
		return map[string]any{"type": "object", "description": desc, "properties": props}
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1",
		"kind":       "CustomResourceDefinition",
		"metadata":   map[string]any{"name": gadgetCRDName},
		"spec": map[string]any{
			"group": group,
			"scope": "Cluster",
			"names": map[string]any{"plural": "gadgets", "singular": "gadget", "kind": "Gadget", "listKind": "GadgetList"},
			"versions": []any{map[string]any{
				"name": "v1", "served": true, "storage": true,
				"subresources": map[string]any{"status": map[string]any{}},
				"schema": map[string]any{"openAPIV3Schema": obj("A Gadget is a managed resource of a made-up cloud provider.", map[string]any{
					"spec": obj("GadgetSpec defines the desired state of a Gadget.", map[string]any{
						"forProvider":    obj("Parameters of the provider's resource.", forProvider),
						"deletionPolicy": map[string]any{"type": "string", "enum": []any{"Orphan", "Delete"}, "default": "Delete"},
					}),
					"status": obj("GadgetStatus is the observed state.", map[string]any{
						"atProvider": obj("Observed state of the provider's resource.", atProvider),
					}),
				})},
			}},
		},
	}}, count
}

// gadgetSchemaGroups are groups of gadgetFields properties of the kinds a
// provider's API has: strings with limits, enums, integers with ranges,
// booleans, string lists and string maps.
func gadgetSchemaGroups(groups int, prefix string) (map[string]any, int) {
	props := map[string]any{}
	count := 0
	for g := range groups {
		fields := map[string]any{}
		for f := range gadgetFields {
			fields[gadgetField(f)] = gadgetFieldSchema(f, fmt.Sprintf("%s setting %d of group %d of the provider's resource.", prefix, f, g))
			count++
		}
		props[gadgetGroup(g)] = map[string]any{"type": "object", "description": fmt.Sprintf("Settings group %d.", g), "properties": fields}
		count++
	}
	return props, count
}

func gadgetGroup(g int) string { return fmt.Sprintf("group%02d", g) }
func gadgetField(f int) string { return fmt.Sprintf("field%02d", f) }

func gadgetFieldSchema(f int, desc string) map[string]any {
	s := map[string]any{"description": desc}
	switch f % 6 {
	case 0:
		s["type"], s["maxLength"] = "string", int64(253)
	case 1:
		s["type"], s["enum"] = "string", []any{"Standard", "Premium", "Basic", "Archive"}
	case 2:
		s["type"], s["minimum"], s["maximum"], s["format"] = "integer", int64(0), int64(65535), "int64"
	case 3:
		s["type"] = "boolean"
	case 4:
		s["type"], s["maxItems"] = "array", int64(16)
		s["items"] = map[string]any{"type": "string", "maxLength": int64(63)}
	case 5:
		s["type"] = "object"
		s["additionalProperties"] = map[string]any{"type": "string"}
	}
	return s
}

// gadget is an object named name, labelled name=<name>, with the first
// gadgetFilledGroups groups of spec.forProvider set.
func gadget(name string, k int) *unstructured.Unstructured {
	forProvider := map[string]any{}
	for g := range gadgetFilledGroups {
		fields := map[string]any{}
		for f := range gadgetFields {
			fields[gadgetField(f)] = gadgetValue(f, k+g)
		}
		forProvider[gadgetGroup(g)] = fields
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": group + "/v1",
		"kind":       "Gadget",
		"metadata":   map[string]any{"name": name, "labels": map[string]any{"name": name}},
		"spec":       map[string]any{"forProvider": forProvider},
	}}
}

func gadgetValue(f, k int) any {
	switch f % 6 {
	case 0:
		return fmt.Sprintf("value-%d-%d", f, k)
	case 1:
		return []string{"Standard", "Premium", "Basic", "Archive"}[k%4]
	case 2:
		return int64(k % 65536)
	case 3:
		return k%2 == 0
	case 4:
		return []any{"a", fmt.Sprintf("b-%d", k), "c"}
	default:
		return map[string]any{"team": "bench", "index": fmt.Sprint(k)}
	}
}

// runMixed creates the gadget CRD and runs the mixed workload against the
// server: each client creates a gadget and then LISTs gadgets by its name
// label, which must return exactly that gadget.
func runMixed(ctx context.Context, opts MixedOptions, con *console, srv *server, cpu func() (float64, error), prof profiles, n int) (MixedResult, error) {
	crd, properties := gadgetCRD()
	res := MixedResult{Clients: opts.Clients, PropertiesInSchema: properties}
	if err := establish(ctx, srv.client, crd, gadgets, time.Minute); err != nil {
		return res, err
	}
	rc := srv.client.Resource(gadgets)
	probe := gadget("probe", 0)
	var retries atomic.Int64
	if err := createWithRetry(ctx, rc, probe, &retries); err != nil {
		return res, fmt.Errorf("create a first gadget: %w", err)
	}
	if err := deleteWithRetry(ctx, rc, probe.GetName(), &retries); err != nil {
		return res, fmt.Errorf("delete the first gadget: %w", err)
	}

	cpuBefore, err := cpu()
	if err != nil {
		return res, err
	}
	profiled := prof.cpu(ctx, srv, n, "mixed", opts.Duration)
	type clientResult struct {
		creates, lists []time.Duration
		err            error
	}
	results := make([]clientResult, opts.Clients)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	deadline := start.Add(opts.Duration)
	var wg sync.WaitGroup
	for c := range opts.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &results[c]
			for k := 0; time.Now().Before(deadline); k++ {
				created, listed, err := createAndRead(ctx, rc, gadget(fmt.Sprintf("g-%02d-%06d", c, k), k))
				if err != nil {
					r.err = err
					cancel()
					return
				}
				r.creates, r.lists = append(r.creates, created), append(r.lists, listed)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpuAfter, err := cpu()
	if err != nil {
		return res, err
	}
	if err := profiled(); err != nil {
		return res, err
	}
	var creates, lists []time.Duration
	for _, r := range results {
		if r.err != nil {
			return res, r.err
		}
		creates, lists = append(creates, r.creates...), append(lists, r.lists...)
	}
	res.Seconds = elapsed.Seconds()
	res.Requests = len(creates) + len(lists)
	res.PerSecond = float64(res.Requests) / res.Seconds
	res.Creates, res.Lists = summarizeOnly(creates), summarizeOnly(lists)
	res.All = summarizeOnly(slices.Concat(creates, lists))
	res.CPUSeconds = cpuAfter - cpuBefore
	if res.Requests > 0 {
		res.CPUSecondsPer1000 = res.CPUSeconds / float64(res.Requests) * 1000
	}
	con.printf("  mixed: %d clients for %.0fs: %d requests, %.0f req/s, p50 %.2f ms, p95 %.2f ms, %.2f CPU s per 1,000 requests\n",
		res.Clients, res.Seconds, res.Requests, res.PerSecond, res.All.P50Ms, res.All.P95Ms, res.CPUSecondsPer1000)
	return res, nil
}

// createAndRead creates obj and reads it back by its name label, checking
// that the LIST returns it and nothing else.
func createAndRead(ctx context.Context, rc dynamic.ResourceInterface, obj *unstructured.Unstructured) (created, listed time.Duration, err error) {
	start := time.Now()
	if _, err := rc.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		return 0, 0, fmt.Errorf("create gadget %s: %w", obj.GetName(), err)
	}
	created = time.Since(start)
	start = time.Now()
	l, err := rc.List(ctx, metav1.ListOptions{LabelSelector: "name=" + obj.GetName()})
	if err != nil {
		return 0, 0, fmt.Errorf("list gadget %s by label: %w", obj.GetName(), err)
	}
	listed = time.Since(start)
	if len(l.Items) != 1 || l.Items[0].GetName() != obj.GetName() {
		names := make([]string, len(l.Items))
		for i, item := range l.Items {
			names[i] = item.GetName()
		}
		return 0, 0, fmt.Errorf("list by label name=%s: wrong result %q", obj.GetName(), names)
	}
	return created, listed, nil
}

// summarizeOnly is summarize without the samples, which are thousands.
func summarizeOnly(samples []time.Duration) Latency {
	l := summarize(samples)
	l.SamplesMs = nil
	return l
}

// establish creates a CRD and waits until its resource can be listed.
func establish(ctx context.Context, c dynamic.Interface, crd *unstructured.Unstructured, gvr schema.GroupVersionResource, timeout time.Duration) error {
	if _, err := c.Resource(crds).Create(ctx, crd, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create CRD %s: %w", crd.GetName(), err)
	}
	deadline := time.Now().Add(timeout)
	for {
		got, err := c.Resource(crds).Get(ctx, crd.GetName(), metav1.GetOptions{})
		if err == nil && !established(got) {
			err = fmt.Errorf("CRD %s not established", crd.GetName())
		}
		if err == nil {
			_, err = c.Resource(gvr).List(ctx, metav1.ListOptions{Limit: 1})
		}
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not servable after %s: %w", gvr.Resource, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

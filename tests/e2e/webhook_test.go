package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	certutil "k8s.io/client-go/util/cert"

	"github.com/harikube/harikube/tests/testserver"
)

// conversionWebhook is a real CRD conversion webhook on loopback: it moves
// objects between versions by their apiVersion. While held, it answers
// nothing, like a webhook that hangs.
type conversionWebhook struct {
	url      string
	caBundle []byte
	mu       sync.Mutex
	held     chan struct{}
	calls    int
}

func startConversionWebhook(t *testing.T) *conversionWebhook {
	t.Helper()
	certPEM, keyPEM, err := certutil.GenerateSelfSignedCertKey("127.0.0.1", []net.IP{net.ParseIP("127.0.0.1")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	w := &conversionWebhook{url: "https://" + l.Addr().String() + "/convert", caBundle: certPEM}
	srv := &http.Server{Handler: http.HandlerFunc(w.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() {
		w.release()
		_ = srv.Close()
	})
	return w
}

func (w *conversionWebhook) hold() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.held == nil {
		w.held = make(chan struct{})
	}
}

func (w *conversionWebhook) release() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.held != nil {
		close(w.held)
		w.held = nil
	}
}

func (w *conversionWebhook) callCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.calls
}

func (w *conversionWebhook) serve(rw http.ResponseWriter, r *http.Request) {
	w.mu.Lock()
	w.calls++
	held := w.held
	w.mu.Unlock()
	if held != nil {
		select {
		case <-held:
		case <-r.Context().Done():
			return
		}
	}
	var review apiextensionsv1.ConversionReview
	if err := json.NewDecoder(r.Body).Decode(&review); err != nil || review.Request == nil {
		http.Error(rw, "bad ConversionReview", http.StatusBadRequest)
		return
	}
	resp := &apiextensionsv1.ConversionResponse{UID: review.Request.UID, Result: metav1.Status{Status: metav1.StatusSuccess}}
	for _, raw := range review.Request.Objects {
		var o map[string]any
		if err := json.Unmarshal(raw.Raw, &o); err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		o["apiVersion"] = review.Request.DesiredAPIVersion
		b, _ := json.Marshal(o)
		resp.ConvertedObjects = append(resp.ConvertedObjects, runtime.RawExtension{Raw: b})
	}
	review.Response, review.Request = resp, nil
	rw.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(rw).Encode(&review)
}

// TestConversionWebhookDoesNotHoldWrites: sprockets are stored in v1, then
// their storage version moves to v2, so indexing them again means converting
// each through a conversion webhook — which hangs. The re-index waits for it
// outside the write gate: ConfigMaps, Leases and v2 sprockets (which need no
// conversion) are written meanwhile. Once the webhook answers, label and
// field selectors on sprockets return exactly the matches.
func TestConversionWebhookDoesNotHoldWrites(t *testing.T) {
	hook := startConversionWebhook(t)
	s := testserver.Start(t)
	ctx := context.Background()
	ext := apiextensionsclient.NewForConfigOrDie(s.Config)
	version := func(name string, storage bool) apiextensionsv1.CustomResourceDefinitionVersion {
		return gizmoVersion(name, storage, "", "color")
	}
	crd := &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: "sprockets." + gizmoGroup},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group:    gizmoGroup,
			Names:    apiextensionsv1.CustomResourceDefinitionNames{Plural: "sprockets", Kind: "Sprocket", ListKind: "SprocketList"},
			Scope:    apiextensionsv1.NamespaceScoped,
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{version("v1", true), version("v2", false)},
			Conversion: &apiextensionsv1.CustomResourceConversion{Strategy: apiextensionsv1.WebhookConverter, Webhook: &apiextensionsv1.WebhookConversion{
				ConversionReviewVersions: []string{"v1"},
				ClientConfig:             &apiextensionsv1.WebhookClientConfig{URL: &hook.url, CABundle: hook.caBundle},
			}},
		},
	}
	// Both versions have the same selectable fields and schema: the
	// apiserver accepts that.
	crd, err := ext.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, crd, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gvr := func(v string) schema.GroupVersionResource {
		return schema.GroupVersionResource{Group: gizmoGroup, Version: v, Resource: "sprockets"}
	}
	v1 := dynamic.NewForConfigOrDie(s.Config).Resource(gvr("v1")).Namespace("default")
	v2 := dynamic.NewForConfigOrDie(s.Config).Resource(gvr("v2")).Namespace("default")
	pollUntil(t, "sprockets served", func(ctx context.Context) bool {
		_, err := v1.List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil
	})
	for i := range 40 {
		color := []string{"red", "blue"}[i%2]
		o := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": gizmoGroup + "/v1", "kind": "Sprocket",
			"metadata": map[string]any{"name": fmt.Sprintf("s%02d", i), "labels": map[string]any{"color": color}},
			"spec":     map[string]any{"color": color},
		}}
		if _, err := v1.Create(ctx, o, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	hook.hold()
	before := hook.callCount()
	crd, err = ext.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, crd.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	crd.Spec.Versions = []apiextensionsv1.CustomResourceDefinitionVersion{version("v1", false), version("v2", true)}
	if _, err := ext.ApiextensionsV1().CustomResourceDefinitions().Update(ctx, crd, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A read that needs no conversion builds the new storage, whose
	// registration re-indexes every stored v1 sprocket through the webhook.
	pollUntil(t, "the v2 storage", func(ctx context.Context) bool {
		_, err := v2.Get(ctx, "absent", metav1.GetOptions{})
		return apierrors.IsNotFound(err) && hook.callCount() > before
	})

	// The webhook hangs; every write below must still complete.
	writeCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for i := range 20 {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("while-held-%d", i)}, Data: map[string]string{"i": fmt.Sprint(i)}}
		if _, err := s.Client.CoreV1().ConfigMaps("default").Create(writeCtx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatalf("ConfigMap write %d while the conversion webhook hangs: %v", i, err)
		}
	}
	o := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": gizmoGroup + "/v2", "kind": "Sprocket",
		"metadata": map[string]any{"name": "fresh", "labels": map[string]any{"color": "red"}},
		"spec":     map[string]any{"color": "red"},
	}}
	if _, err := v2.Create(writeCtx, o, metav1.CreateOptions{}); err != nil {
		t.Fatalf("a v2 sprocket (no conversion needed) while the webhook hangs: %v", err)
	}
	hook.release()

	for _, tc := range []struct{ label, field string }{{"color=red", ""}, {"", "spec.color=red"}, {"color=blue", "spec.color=blue"}} {
		want := []string{}
		all, err := v2.List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range all.Items {
			c, _, _ := unstructured.NestedString(it.Object, "spec", "color")
			if (tc.label == "" || "color="+it.GetLabels()["color"] == tc.label) && (tc.field == "" || "spec.color="+c == tc.field) {
				want = append(want, it.GetName())
			}
		}
		sort.Strings(want)
		pollUntil(t, fmt.Sprintf("v2 %q %q", tc.label, tc.field), func(ctx context.Context) bool {
			got, err := v2.List(ctx, metav1.ListOptions{LabelSelector: tc.label, FieldSelector: tc.field})
			if err != nil {
				return false
			}
			n := names(got.Items)
			if !containsEvery(n, want) {
				t.Fatalf("v2 label %q field %q: %v drops one of %v", tc.label, tc.field, n, want)
			}
			return slices.Equal(n, want)
		})
	}
}

func containsEvery(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

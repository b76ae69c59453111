package controllermanager

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"

	apidiscoveryv2 "k8s.io/api/apidiscovery/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	restclient "k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// SkipGCAndQuotaAnnotation, set to "true" on a CustomResourceDefinition,
// keeps its resource out of the garbage collector and the resource quota
// controller: neither keeps a metadata informer (a copy of every object's
// metadata) nor a dependency-graph node per object for it.
const SkipGCAndQuotaAnnotation = "harikube.io/skip-gc-and-quota"

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// discoveringControllers are the service accounts (or, without
// --use-service-account-credentials, client names) whose discovery decides
// which resources the garbage collector and the quota controller monitor.
// The RESTMapper the controllers resolve owners with uses another client
// ("controller-discovery") and keeps seeing every resource.
var discoveringControllers = []string{"generic-garbage-collector", "resourcequota-controller"}

// controllerManagerUser is the controller manager's own identity, which all
// its controllers share without --use-service-account-credentials.
const controllerManagerUser = "system:kube-controller-manager"

// aggregatedJSON asks for aggregated discovery v2 as JSON, as client-go does.
const aggregatedJSON = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"

// SkipGCAndQuota hides opted-out custom resources from the discovery
// answers the garbage collector and the resource quota controller get,
// which is how upstream decides what they monitor. It follows CRDs with a
// metadata informer (a few hundred small objects at most).
type SkipGCAndQuota struct {
	informer cache.SharedIndexInformer
}

// NewSkipGCAndQuota follows the CRDs of the apiserver config points at.
func NewSkipGCAndQuota(config *restclient.Config) (*SkipGCAndQuota, error) {
	cfg := restclient.CopyConfig(config)
	restclient.AddUserAgent(cfg, "harikube-skip-gc-and-quota")
	client, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("metadata client for CustomResourceDefinitions: %w", err)
	}
	informer := metadatainformer.NewFilteredMetadataInformer(client, crdResource, "", 0, cache.Indexers{}, nil).Informer()
	return &SkipGCAndQuota{informer: informer}, nil
}

// Run follows the CRDs until ctx is done.
func (s *SkipGCAndQuota) Run(ctx context.Context) { s.informer.RunWithContext(ctx) }

// WaitForSync waits until the CRDs have been listed once.
func (s *SkipGCAndQuota) WaitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), s.informer.HasSynced)
}

// resources are the opted-out resources. Until the informer has synced it
// is not known which these are, and discovery fails rather than guess.
func (s *SkipGCAndQuota) resources() (map[schema.GroupResource]bool, error) {
	if !s.informer.HasSynced() {
		return nil, errors.New("CustomResourceDefinitions not listed yet")
	}
	out := map[schema.GroupResource]bool{}
	for _, obj := range s.informer.GetStore().List() {
		crd, ok := obj.(*metav1.PartialObjectMetadata)
		if !ok || crd.Annotations[SkipGCAndQuotaAnnotation] != "true" {
			continue
		}
		// A CRD is named <plural>.<group>; a plural has no dots.
		plural, group, found := strings.Cut(crd.Name, ".")
		if found {
			out[schema.GroupResource{Group: group, Resource: plural}] = true
		}
	}
	return out, nil
}

// Wrap filters the discovery answers of the two controllers; next must run
// after authentication (the filter reads the request's user). Every other
// request passes unchanged.
func (s *SkipGCAndQuota) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.HasPrefix(r.URL.Path, "/api") {
			next.ServeHTTP(w, r)
			return
		}
		group, perVersion, isDiscovery := discoveryPath(r.URL.Path)
		if !isDiscovery || !fromDiscoveringController(r) {
			next.ServeHTTP(w, r)
			return
		}
		skipped, err := s.resources()
		if err != nil {
			http.Error(w, fmt.Sprintf("which resources skip garbage collection and quota (%s): %v", SkipGCAndQuotaAnnotation, err), http.StatusServiceUnavailable)
			return
		}
		if len(skipped) == 0 {
			next.ServeHTTP(w, r)
			return
		}
		r = r.Clone(r.Context())
		// A plain JSON answer, whole: the filter decodes it.
		r.Header.Del("Accept-Encoding")
		r.Header.Del("If-None-Match")
		// JSON, which the filter reads: aggregated discovery (v2) for /api
		// and /apis, a plain list otherwise.
		accept := "application/json"
		if !perVersion {
			accept = aggregatedJSON + "," + accept
		}
		r.Header.Set("Accept", accept)
		buf := &bufferedResponse{header: http.Header{}, status: http.StatusOK}
		next.ServeHTTP(buf, r)
		body := buf.body.Bytes()
		if buf.status == http.StatusOK {
			if body, err = filterDiscovery(buf.header.Get("Content-Type"), group, body, skipped); err != nil {
				http.Error(w, fmt.Sprintf("filter discovery answer %s: %v", r.URL.Path, err), http.StatusInternalServerError)
				return
			}
		}
		for k, v := range buf.header {
			w.Header()[k] = v
		}
		w.Header().Del("ETag")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(buf.status)
		_, _ = w.Write(body)
	})
}

func fromDiscoveringController(r *http.Request) bool {
	u, ok := request.UserFrom(r.Context())
	if !ok {
		return false
	}
	for _, name := range discoveringControllers {
		if u.GetName() == serviceaccount.MakeUsername(metav1.NamespaceSystem, name) {
			return true
		}
		// client-go's clientbuilder appends "/<name>" to the user agent.
		if u.GetName() == controllerManagerUser && strings.HasSuffix(r.UserAgent(), "/"+name) {
			return true
		}
	}
	return false
}

// bufferedResponse holds an answer until the filter has read it.
type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header         { return b.header }
func (b *bufferedResponse) WriteHeader(status int)      { b.status = status }
func (b *bufferedResponse) Write(p []byte) (int, error) { return b.body.Write(p) }

// discoveryPath tells the discovery documents that list resources: /api and
// /apis (aggregated discovery), /api/v1 and /apis/GROUP/VERSION. group is
// the per-version list's group.
func discoveryPath(path string) (group string, perVersion, ok bool) {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	switch {
	case len(parts) == 1 && (parts[0] == "api" || parts[0] == "apis"):
		return "", false, true
	case len(parts) == 2 && parts[0] == "api":
		return "", true, true
	case len(parts) == 3 && parts[0] == "apis":
		return parts[1], true, true
	}
	return "", false, false
}

// filterDiscovery drops the skipped resources (and their subresources) from
// an aggregated discovery list or a per-version resource list; other
// documents (APIVersions, APIGroupList) are returned as they are.
func filterDiscovery(contentType, group string, body []byte, skipped map[schema.GroupResource]bool) ([]byte, error) {
	mediaType, params, err := mime.ParseMediaType(contentType)
	if err != nil || mediaType != "application/json" {
		return nil, fmt.Errorf("unexpected content type %q", contentType)
	}
	if params["as"] == "APIGroupDiscoveryList" {
		if params["v"] != "v2" {
			return nil, fmt.Errorf("unexpected aggregated discovery version %q", params["v"])
		}
		var list apidiscoveryv2.APIGroupDiscoveryList
		if err := json.Unmarshal(body, &list); err != nil {
			return nil, err
		}
		for i := range list.Items {
			g := &list.Items[i]
			for j := range g.Versions {
				v := &g.Versions[j]
				kept := v.Resources[:0]
				for _, r := range v.Resources {
					if !skipped[schema.GroupResource{Group: g.Name, Resource: r.Resource}] {
						kept = append(kept, r)
					}
				}
				v.Resources = kept
			}
		}
		return json.Marshal(&list)
	}
	var kind metav1.TypeMeta
	if err := json.Unmarshal(body, &kind); err != nil {
		return nil, err
	}
	if kind.Kind != "APIResourceList" {
		return body, nil
	}
	var list metav1.APIResourceList
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, err
	}
	kept := list.APIResources[:0]
	for _, r := range list.APIResources {
		resource, _, _ := strings.Cut(r.Name, "/")
		if !skipped[schema.GroupResource{Group: group, Resource: resource}] {
			kept = append(kept, r)
		}
	}
	list.APIResources = kept
	return json.Marshal(&list)
}

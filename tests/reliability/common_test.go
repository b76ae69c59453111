// Package reliability tests what harikube keeps when things go wrong: a
// server killed with SIGKILL while it writes, compaction under sustained
// churn, and bad input (oversized and hostile selectors, a corrupt, locked or
// full database). Every test runs the real binary (tests/testserver).
package reliability

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"

	corev1 "k8s.io/api/core/v1"

	"github.com/harikube/harikube/pkg/datastore"
	"github.com/harikube/harikube/tests/testserver"
)

// api issues raw JSON requests without client-side retries: a retried
// create or update whose first attempt was applied would come back as
// "already exists" or "conflict", and the test would wrongly count a write
// that is stored as rejected.
type api struct{ rc *rest.RESTClient }

func newAPI(t testing.TB, cfg *rest.Config) *api {
	t.Helper()
	c := rest.CopyConfig(cfg)
	c.NegotiatedSerializer = scheme.Codecs.WithoutConversion()
	c.Timeout = 60 * time.Second
	c.QPS, c.Burst = 1000, 1000
	rc, err := rest.UnversionedRESTClientFor(c)
	if err != nil {
		t.Fatalf("REST client: %v", err)
	}
	return &api{rc: rc}
}

// do sends one request and decodes a JSON object answer (nil for an empty
// body). A non-2xx answer is returned as the *StatusError client-go makes.
func (a *api) do(ctx context.Context, verb, path string, query url.Values, body any) (map[string]any, error) {
	req := a.rc.Verb(verb).AbsPath(path).MaxRetries(0)
	for k, vs := range query {
		for _, v := range vs {
			req = req.Param(k, v)
		}
	}
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		req = req.Body(b).SetHeader("Content-Type", "application/json")
	}
	raw, err := req.Do(ctx).Raw()
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, nil
	}
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("decode answer to %s %s: %w", verb, path, err)
	}
	return out, nil
}

// listed is one object of a LIST answer.
type listed struct {
	Name   string
	RV     int64
	Labels map[string]string
	Obj    map[string]any
}

// list returns the items of a LIST by name and the list's resourceVersion.
func (a *api) list(ctx context.Context, path string, query url.Values) (map[string]listed, int64, error) {
	out, err := a.do(ctx, "GET", path, query, nil)
	if err != nil {
		return nil, 0, err
	}
	meta, _ := out["metadata"].(map[string]any)
	rv, err := strconv.ParseInt(fmt.Sprint(meta["resourceVersion"]), 10, 64)
	if err != nil {
		return nil, 0, fmt.Errorf("list %s: resourceVersion %v: %w", path, meta["resourceVersion"], err)
	}
	items, _ := out["items"].([]any)
	got := make(map[string]listed, len(items))
	for _, it := range items {
		obj, _ := it.(map[string]any)
		l, err := toListed(obj)
		if err != nil {
			return nil, 0, err
		}
		got[l.Name] = l
	}
	return got, rv, nil
}

func toListed(obj map[string]any) (listed, error) {
	meta, _ := obj["metadata"].(map[string]any)
	rv, err := strconv.ParseInt(fmt.Sprint(meta["resourceVersion"]), 10, 64)
	if err != nil {
		return listed{}, fmt.Errorf("object %v: resourceVersion: %w", meta["name"], err)
	}
	l := listed{Name: fmt.Sprint(meta["name"]), RV: rv, Labels: map[string]string{}, Obj: obj}
	if ls, ok := meta["labels"].(map[string]any); ok {
		for k, v := range ls {
			l.Labels[k] = fmt.Sprint(v)
		}
	}
	return l, nil
}

// definitelyRejected reports whether err is an answer saying the write was
// not applied. Anything else (no answer, a timeout, a 5xx) leaves the
// outcome unknown.
func definitelyRejected(err error) bool {
	return apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) || apierrors.IsNotFound(err) ||
		apierrors.IsInvalid(err) || apierrors.IsBadRequest(err) || apierrors.IsForbidden(err)
}

// createCRD installs a namespaced CRD group/plural with spec.value (string)
// as a selectable field and waits until it is served in namespace ns.
func createCRD(t testing.TB, cfg *rest.Config, group, plural, kind, ns string) string {
	t.Helper()
	ctx := context.Background()
	ext := apiextensionsclient.NewForConfigOrDie(cfg)
	crd := &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: plural + "." + group},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: group,
			Names: apiextensionsv1.CustomResourceDefinitionNames{Plural: plural, Singular: strings.ToLower(kind), Kind: kind, ListKind: kind + "List"},
			Scope: apiextensionsv1.NamespaceScoped,
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{
				Name: "v1", Served: true, Storage: true,
				SelectableFields: []apiextensionsv1.SelectableField{{JSONPath: ".spec.value"}},
				Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
					Type: "object",
					Properties: map[string]apiextensionsv1.JSONSchemaProps{
						"spec": {Type: "object", Properties: map[string]apiextensionsv1.JSONSchemaProps{
							"value":   {Type: "string"},
							"payload": {Type: "string"},
						}},
					},
				}},
			}},
		},
	}
	if _, err := ext.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, crd, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create CRD: %v", err)
	}
	path := "/apis/" + group + "/v1/namespaces/" + ns + "/" + plural
	a := newAPI(t, cfg)
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := a.do(ctx, "GET", path, url.Values{"limit": {"1"}}, nil)
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("CRD %s.%s not served", plural, group)
	}
	return path
}

func createNamespace(t testing.TB, s *testserver.Server, ns string) {
	t.Helper()
	_, err := s.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace %s: %v", ns, err)
	}
}

// datastoreCheck runs `harikube datastore check` on a stopped server's data
// directory and fails the test unless it exits 0.
func datastoreCheck(t testing.TB, dataDir string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, testserver.Binary(t), "datastore", "check", "--data-dir", dataDir).CombinedOutput()
	if err != nil {
		t.Fatalf("harikube datastore check --data-dir %s: %v\n%s", dataDir, err, out)
	}
	return strings.TrimSpace(string(out))
}

// etcdClient connects to the server's Kine socket.
func etcdClient(t testing.TB, dataDir string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{"unix://" + datastore.SocketPath(dataDir)},
		DialTimeout: 10 * time.Second,
		// Large values (bulk churn) and large ranges.
		MaxCallRecvMsgSize: 256 << 20,
	})
	if err != nil {
		t.Fatalf("connect to the etcd API at %s: %v", datastore.SocketPath(dataDir), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

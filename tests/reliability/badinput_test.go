package reliability

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"

	"github.com/harikube/harikube/tests/testserver"
)

// TestBadInput runs the bad-input cases that need a working server on one
// server, which must keep serving after each.
func TestBadInput(t *testing.T) {
	t.Parallel()
	s := testserver.Start(t)
	createNamespace(t, s, "bad")
	path := createCRD(t, s.Config, "reliability.harikube.io", "oddities", "Oddity", "bad")
	a := newAPI(t, s.Config)
	// HTTP/1.1, so that a request larger than the server takes is sent and
	// answered (an HTTP/2 client refuses to send headers beyond the limit
	// the server advertises).
	tlsConfig, err := rest.TLSConfigFor(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		TLSClientConfig: tlsConfig,
		TLSNextProto:    map[string]func(string, *tls.Conn) http.RoundTripper{},
	}}
	get := func(t *testing.T, p string) (int, string) {
		t.Helper()
		resp, err := hc.Get(s.Config.Host + p)
		if err != nil {
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err // without the URL, which may be megabytes
			}
			t.Fatalf("GET %.200s: %v", p, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return resp.StatusCode, string(body)
	}
	serving := func(t *testing.T) {
		t.Helper()
		if code, body := get(t, "/readyz"); code != http.StatusOK {
			t.Fatalf("server unhealthy afterwards: /readyz %d %s", code, body)
		}
		if _, _, err := a.list(context.Background(), path, nil); err != nil {
			t.Fatalf("server cannot list afterwards: %v", err)
		}
	}

	t.Run("OversizedSelector", func(t *testing.T) {
		// A 1 MiB label selector: refused with a 4xx before it reaches
		// anything expensive.
		huge := "app in (" + strings.Repeat("v,", 512*1024) + "v)"
		code, body := get(t, path+"?labelSelector="+url.QueryEscape(huge))
		if code != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("1 MiB labelSelector: status %d, want 431; body %.300s", code, body)
		}
		t.Logf("1 MiB labelSelector: %d %.120s", code, strings.TrimSpace(body))
		// One that fits in the request but names 40,000 values, more than
		// SQLite takes as bind parameters in one statement: exact, never a
		// server error.
		// Short values (three base-36 digits) keep the encoded selection
		// under the 256 KiB the datastore takes, so it does reach SQL.
		short := func(i int) string { return fmt.Sprintf("%03s", strconv.FormatInt(int64(i), 36)) }
		for _, o := range []struct {
			name string
			i    int
		}{{"in-first", 0}, {"in-last", 39999}, {"out", 40000}} {
			if _, err := a.do(context.Background(), "POST", path, nil, oddity(o.name, map[string]string{"app": short(o.i)}, "x")); err != nil {
				t.Fatalf("create %s: %v", o.name, err)
			}
		}
		var vals []string
		for i := 0; i < 40000; i++ {
			vals = append(vals, short(i))
		}
		sel := "app in (" + strings.Join(vals, ",") + ")"
		before := s.Metric(t, "harikube_datastore_selection_requests_total", `resource="oddities.reliability.harikube.io"`)
		code, body = get(t, path+"?labelSelector="+url.QueryEscape(sel))
		if code != http.StatusOK {
			t.Fatalf("40,000-value labelSelector: status %d; body %.300s", code, body)
		}
		if got := itemNames(t, body); fmt.Sprint(got) != "[in-first in-last]" {
			t.Errorf("40,000-value labelSelector: %v, want [in-first in-last]", got)
		}
		// It reaches the datastore, which answers it unfiltered (more
		// values than SQL takes as parameters); the apiserver filters.
		if s.Metric(t, "harikube_datastore_selection_requests_total", `resource="oddities.reliability.harikube.io"`) <= before {
			t.Errorf("the 40,000-value selector did not reach the datastore")
		}
		t.Logf("40,000-value labelSelector (%d KiB): %d, exact", len(sel)/1024, code)
		serving(t)
	})

	t.Run("HostileLabelValues", func(t *testing.T) {
		// Label values may only hold [A-Za-z0-9._-]: what the API accepts
		// of SQL wildcards, keywords and numbers that parse oddly.
		values := []string{"a_c", "abc", "aXc", "a.c", "a-c", "A_C", "_x", "x_", "select", "SELECT", "or", "null",
			"NULL", "drop", "1", "01", "1.0", "1e3", "0x10", "-1", "9223372036854775807", "9223372036854775808", "true", "z"}
		keys := []string{"k", "sql.example.com/select", "a_b", "a.b"}
		for i, v := range values {
			lbls := map[string]string{"set": "hostile-labels"}
			for j, key := range keys {
				if (i+j)%2 == 0 {
					lbls[key] = v
				}
			}
			if _, err := a.do(context.Background(), "POST", path, nil, oddity(fmt.Sprintf("label-%02d", i), lbls, "x")); err != nil {
				if apierrors.IsInvalid(err) {
					t.Logf("label value %q not accepted by the API: skipped", v)
					continue
				}
				t.Fatalf("create with label value %q: %v", v, err)
			}
		}
		var selectors []string
		for _, v := range values {
			if validLabelValue(v) != nil {
				continue
			}
			for _, key := range keys {
				selectors = append(selectors, key+"="+v, key+"!="+v, key+" in ("+v+",z)", key+" notin ("+v+")")
			}
		}
		for _, key := range keys {
			selectors = append(selectors, key, "!"+key, key+">0", key+"<2", key+">-2", key+"<9223372036854775807")
		}
		for _, sel := range selectors {
			if _, err := labels.Parse(sel); err != nil {
				continue // a value the selector syntax does not take, e.g. "-1" in gt/lt
			}
			checkSelectorLists(context.Background(), t, a, &crashKind{name: "oddity", path: path}, "set=hostile-labels,"+sel, nil)
		}
		t.Logf("%d label selectors over %d values exact", len(selectors), len(values))
		serving(t)
	})

	t.Run("HostileFieldValues", func(t *testing.T) {
		// Selectable field values are arbitrary strings.
		long := strings.Repeat("L", 300)
		values := []string{"' OR 1=1 --", "' OR '1'='1", "%", "_", "a%", "%a", "a_c", "abc", `\`, `\\`, `\%`, `"`, "'", "''",
			"ünïcödé", "日本語", "🙂", "", " ", ";DROP TABLE kine;--", "NULL", "null", "x,y", "a=b", "a!=b", "(a)", "line\nbreak",
			"tab\tx", long + "1", long + "2", "ABC", "abc "}
		for i, v := range values {
			if _, err := a.do(context.Background(), "POST", path, nil, oddity(fmt.Sprintf("field-%02d", i), map[string]string{"set": "hostile-fields"}, v)); err != nil {
				t.Fatalf("create with spec.value %q: %v", v, err)
			}
		}
		full, rv, err := a.list(context.Background(), path, url.Values{"labelSelector": {"set=hostile-fields"}})
		if err != nil {
			t.Fatal(err)
		}
		checked := 0
		before := s.Metric(t, "harikube_datastore_selection_requests_total", `resource="oddities.reliability.harikube.io"`)
		for _, v := range values {
			for _, op := range []string{"=", "!="} {
				sel := "spec.value" + op + fields.EscapeValue(v)
				got, _, err := a.list(context.Background(), path, url.Values{
					"labelSelector": {"set=hostile-fields"}, "fieldSelector": {sel},
					"resourceVersion": {strconv.FormatInt(rv, 10)}, "resourceVersionMatch": {"Exact"},
				})
				if err != nil {
					t.Errorf("fieldSelector %q: %v", sel, err)
					continue
				}
				want := map[string]bool{}
				for name, l := range full {
					if (tokenOf(&crashKind{name: "oddity"}, l.Obj) == v) == (op == "=") {
						want[name] = true
					}
				}
				have := map[string]bool{}
				for name := range got {
					have[name] = true
				}
				if !maps.Equal(want, have) {
					t.Errorf("fieldSelector %q: %v, want %v", sel, sortedKeys(have), sortedKeys(want))
				}
				checked++
			}
		}
		if pushed := s.Metric(t, "harikube_datastore_selection_requests_total", `resource="oddities.reliability.harikube.io"`) - before; pushed < float64(checked) {
			t.Errorf("%v of the %d field-selector lists reached the datastore", pushed, checked)
		}
		t.Logf("%d field selectors over %d hostile values exact, all answered in the datastore", checked, len(values))
		serving(t)
	})

	t.Run("UnknownFieldSelector", func(t *testing.T) {
		// 400 with upstream's message, for a LIST and a WATCH, built-in
		// and custom resources. Upstream words it per resource: types with
		// a field-label conversion say "field label not supported", the
		// others (ConfigMaps) name the fields they do know.
		cases := []struct{ path, field, want string }{
			{"/api/v1/namespaces/bad/pods", "spec.unknown", "field label not supported: spec.unknown"},
			{"/api/v1/namespaces/bad/secrets", "data.password", "field label not supported: data.password"},
			{"/api/v1/namespaces/bad/configmaps", "spec.unknown", `\"spec.unknown\" is not a known field selector`},
			{path, "spec.payload", "field label not supported: spec.payload"}, // in the schema, not selectable
			{path, "spec.nothing", "field label not supported: spec.nothing"},
		}
		for _, c := range cases {
			for _, extra := range []string{"", "&watch=true&timeoutSeconds=1"} {
				code, body := get(t, c.path+"?fieldSelector="+url.QueryEscape(c.field+"=x")+extra)
				if code != http.StatusBadRequest || !strings.Contains(body, c.want) {
					t.Errorf("%s fieldSelector %s=x%s: %d %.300s; want 400 with %s", c.path, c.field, extra, code, body, c.want)
				}
			}
		}
		serving(t)
	})
}

func oddity(name string, lbls map[string]string, value string) map[string]any {
	return map[string]any{"apiVersion": "reliability.harikube.io/v1", "kind": "Oddity",
		"metadata": map[string]any{"name": name, "namespace": "bad", "labels": lbls},
		"spec":     map[string]any{"value": value}}
}

func validLabelValue(v string) error {
	if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// itemNames returns the sorted names in a LIST answer.
func itemNames(t *testing.T, body string) []string {
	t.Helper()
	var list struct {
		Items []struct {
			Metadata struct{ Name string }
		}
	}
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatalf("decode list: %v", err)
	}
	var out []string
	for _, it := range list.Items {
		out = append(out, it.Metadata.Name)
	}
	sort.Strings(out)
	return out
}

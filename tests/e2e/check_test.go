package e2e

import (
	"database/sql"
	"fmt"
	"net/http"
	"strings"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	_ "modernc.org/sqlite"

	"github.com/harikube/harikube/pkg/datastore"
	"github.com/harikube/harikube/pkg/server"
	"github.com/harikube/harikube/tests/pgserver"
	"github.com/harikube/harikube/tests/testserver"
)

// TestRunningCheckRecomputesFields: `harikube datastore check` beside a
// running server has the server recompute each custom resource's selectable
// field with the CRD as it is now, and names the object and field whose
// indexed value differs; on SQLite and PostgreSQL.
func TestRunningCheckRecomputesFields(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		s := testserver.Start(t)
		testRunningCheck(t, s, nil, "sqlite", "file://"+datastore.DatabasePath(s.DataDir))
	})
	t.Run("postgres", func(t *testing.T) {
		dsn := pgserver.Start(t).DSN()
		s := testserver.Start(t, "--datastore-endpoint="+dsn)
		testRunningCheck(t, s, []string{"--datastore-endpoint=" + dsn}, "pgx", dsn)
	})
}

func testRunningCheck(t *testing.T, s *testserver.Server, datastoreArgs []string, driver, dsn string) {
	dyn := createGadgetCRD(t, s.Config)
	var objs []*unstructured.Unstructured
	for i := range 40 {
		objs = append(objs, gadget(fmt.Sprintf("g%02d", i), map[string]string{"n": fmt.Sprint(i % 3)}, []string{"red", "blue"}[i%2]))
	}
	createAll(t, dyn, objs)

	check := append([]string{"datastore", "check", "--data-dir", s.DataDir}, datastoreArgs...)
	out, code := s.Run(t, check...)
	if code != 0 || !strings.HasPrefix(out, "ok: ") || !strings.Contains(out, "recomputed from the current definitions") {
		t.Fatalf("check of a consistent index: exit %d\n%s", code, out)
	}

	// An indexed value no longer what the definition computes: the check
	// names it.
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	res, err := db.Exec("UPDATE harikube_index SET value = 'green' WHERE kind = 'f' AND name = 'spec.color' AND key = '/registry/pushdown.harikube.io/gadgets/default/g07' AND id = (SELECT MAX(id) FROM kine WHERE name = '/registry/pushdown.harikube.io/gadgets/default/g07')")
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		t.Fatalf("tampered %d index rows, want 1", n)
	}
	out, code = s.Run(t, check...)
	want := `gadgets/default/g07): spec.color is "blue" by the current definition of gadgets.pushdown.harikube.io, "green" in the index`
	if code == 0 || !strings.Contains(out, want) || !strings.HasPrefix(out, "1 problems in ") {
		t.Fatalf("check of a tampered field: exit %d, want a report with\n%s\ngot:\n%s", code, want, out)
	}

	// The check is a cluster-admin's: anonymous users are refused.
	anonymous, err := rest.HTTPClientFor(rest.AnonymousClientConfig(s.Config))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := anonymous.Get(s.Config.Host + server.CheckPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
		t.Fatalf("anonymous GET %s: %s", server.CheckPath, resp.Status)
	}
	// So is an authenticated user without cluster-admin.
	user := rest.CopyConfig(s.Config)
	user.Impersonate = rest.ImpersonationConfig{UserName: "not-an-admin", Groups: []string{"system:authenticated"}}
	userClient, err := rest.HTTPClientFor(user)
	if err != nil {
		t.Fatal(err)
	}
	resp, err = userClient.Get(s.Config.Host + server.CheckPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("GET %s as an authenticated user without RBAC rights: %s, want 403", server.CheckPath, resp.Status)
	}
}

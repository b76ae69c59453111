package sharedetcd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"go/ast"
	"go/format"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/harikube/harikube/pkg/datastore"
	"github.com/harikube/harikube/tests/testserver"
)

// upstreamFactoryHash is the SHA-256 of upstream's newETCD3Client,
// blockUntilReady and newETCD3Storage (k8s.io/apiserver v0.37.2), formatted.
const upstreamFactoryHash = "be86e71f53803296e21eca326d0c15cea1405e85f27536d5e896d8193724db84"

// TestUpstreamFactoryUnchanged fails when the storage factory this package
// repeats changes upstream: compare NewStorage and open with the new code,
// then update upstreamFactoryHash.
func TestUpstreamFactoryUnchanged(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}} {{.Version}}", "k8s.io/apiserver").Output()
	if err != nil {
		t.Fatalf("go list -m k8s.io/apiserver: %v", err)
	}
	dir, version, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
	file := filepath.Join(dir, "pkg/storage/storagebackend/factory/etcd3.go")
	fset := token.NewFileSet()
	parsed, err := parser.ParseFile(fset, file, nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	wanted := map[string]bool{"newETCD3Client": true, "blockUntilReady": true, "newETCD3Storage": true}
	var src bytes.Buffer
	for _, decl := range parsed.Decls {
		var name string
		switch d := decl.(type) {
		case *ast.FuncDecl:
			name = d.Name.Name
		case *ast.GenDecl:
			if v, ok := d.Specs[0].(*ast.ValueSpec); ok && d.Tok == token.VAR {
				name = v.Names[0].Name
			}
		}
		if !wanted[name] {
			continue
		}
		delete(wanted, name)
		if err := format.Node(&src, fset, decl); err != nil {
			t.Fatal(err)
		}
	}
	if len(wanted) > 0 {
		t.Fatalf("k8s.io/apiserver %s: %s no longer declares %v; review this package against its storage factory", version, file, wanted)
	}
	sum := sha256.Sum256(src.Bytes())
	if got := hex.EncodeToString(sum[:]); got != upstreamFactoryHash {
		t.Fatalf("k8s.io/apiserver %s changed its storage factory (%s): review NewStorage and open against newETCD3Storage and newETCD3Client, then set upstreamFactoryHash to %s", version, file, got)
	}
}

// TestStoresShareOneConnection runs two stores against a real datastore: they
// share one connection, a store's destroy func may run twice, the other store
// keeps working after it, and the connection closes with the last store.
func TestStoresShareOneConnection(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	dataDir := t.TempDir()
	ds, err := datastore.Start(ctx, datastore.Options{DataDir: dataDir})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); ds.Wait() })
	socket := datastore.SocketPath(dataDir)
	listenerOnly := testserver.UnixSocketEnds(t, socket)
	// Connections are compared once they settle: the check is that an
	// extra one does not stay.
	settlesAt := func(want int, what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for testserver.UnixSocketEnds(t, socket)-listenerOnly != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d datastore connections, want %d", what, testserver.UnixSocketEnds(t, socket)-listenerOnly, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	clients := New()
	newStore := func(resource string) (storage.Interface, func()) {
		t.Helper()
		config := storagebackend.NewDefaultConfig("/registry", scheme.Codecs.LegacyCodec(corev1.SchemeGroupVersion))
		config.Transport.ServerList = []string{ds.Endpoint}
		config.CompactionInterval = time.Minute
		s, destroy, err := clients.NewStorage(config.ForResource(schema.GroupResource{Resource: resource}),
			func() runtime.Object { return &corev1.ConfigMap{} }, func() runtime.Object { return &corev1.ConfigMapList{} }, "/"+resource)
		if err != nil {
			t.Fatalf("store for %s: %v", resource, err)
		}
		return s, destroy
	}
	first, destroyFirst := newStore("configmaps")
	second, destroySecond := newStore("others")
	settlesAt(1, "two stores")
	create(t, first, "/configmaps/default/a")
	create(t, second, "/others/default/a")

	destroyFirst()
	destroyFirst()
	create(t, second, "/others/default/b")
	settlesAt(1, "one store left")
	destroySecond()
	settlesAt(0, "every store destroyed")
}

func create(t *testing.T, s storage.Interface, key string) {
	t.Helper()
	name := key[strings.LastIndex(key, "/")+1:]
	in := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}, Data: map[string]string{"k": "v"}}
	out := &corev1.ConfigMap{}
	if err := s.Create(context.Background(), key, in, out, 0); err != nil {
		t.Fatalf("create %s: %v", key, err)
	}
	got := &corev1.ConfigMap{}
	if err := s.Get(context.Background(), key, storage.GetOptions{}, got); err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if got.Data["k"] != "v" || got.ResourceVersion != out.ResourceVersion {
		t.Fatalf("get %s: %+v, want what was created (resourceVersion %s)", key, got, out.ResourceVersion)
	}
}

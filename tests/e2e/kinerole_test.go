package e2e

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"k8s.io/apimachinery/pkg/util/wait"
	_ "modernc.org/sqlite"

	"github.com/harikube/harikube/pkg/childguard"
	"github.com/harikube/harikube/tests/testserver"
)

// kineRoleKey holds a ConfigMap in JSON, which the kine role indexes
// without knowing its type: labels, metadata.name and metadata.namespace.
const (
	kineRoleKey   = "/registry/configmaps/default/kine-role"
	kineRoleValue = `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"kine-role","namespace":"default","labels":{"app":"kine-role"}},"data":{"k":"v"}}`
)

// TestKineRoleEndpoints: the kine role (vCluster's per-component
// /binaries/kine) serves its default endpoint, ./db/state.db in its working
// directory, with harikube's indexing driver, and a scheme harikube has no
// index for (memory://) with Kine's stock driver.
func TestKineRoleEndpoints(t *testing.T) {
	t.Parallel()
	t.Run("default", func(t *testing.T) {
		dir := t.TempDir()
		k := startKineRole(t, dir)
		k.create(t)
		k.stop(t)

		log := k.log(t)
		if want := "Kine (harikube indexing driver) serving " + k.endpoint; !strings.Contains(log, want) {
			t.Errorf("the kine role's log does not say %q:\n%s", want, log)
		}
		path := filepath.Join(dir, "db", "state.db")
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("the kine role's default database: %v", err)
		}
		db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		// The index rows of the object, written with it.
		rows, err := db.Query(`SELECT i.kind, i.name, i.value FROM harikube_index AS i JOIN kine AS k ON k.id = i.id
			WHERE k.name = ? ORDER BY i.kind, i.name`, kineRoleKey)
		if err != nil {
			t.Fatalf("read harikube_index of %s: %v", path, err)
		}
		defer rows.Close()
		var got []string
		for rows.Next() {
			var kind, name, value string
			if err := rows.Scan(&kind, &name, &value); err != nil {
				t.Fatal(err)
			}
			got = append(got, kind+" "+name+"="+value)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		want := []string{"f metadata.name=kine-role", "f metadata.namespace=default", "l app=kine-role"}
		if strings.Join(got, ", ") != strings.Join(want, ", ") {
			t.Errorf("index rows of %s in %s: %q, want %q", kineRoleKey, path, got, want)
		}
	})
	t.Run("stock driver", func(t *testing.T) {
		dir := t.TempDir()
		k := startKineRole(t, dir, "--endpoint=memory://")
		k.create(t)
		k.stop(t)

		log := k.log(t)
		for _, want := range []string{`Kine endpoint scheme \"memory\" has no harikube index: selectors are filtered by the apiserver`, "using in-memory backend"} {
			if !strings.Contains(log, want) {
				t.Errorf("the kine role's log does not say %q:\n%s", want, log)
			}
		}
		if strings.Contains(log, "indexing driver") {
			t.Errorf("the kine role served memory:// with the indexing driver:\n%s", log)
		}
		if _, err := os.Stat(filepath.Join(dir, "db")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the kine role on memory:// made %s/db: %v", dir, err)
		}
	})
}

// kineRole is a running `harikube kine`.
type kineRole struct {
	endpoint, logPath string
	cmd               *exec.Cmd
	done              chan struct{} // closed when cmd has exited
	client            *clientv3.Client
}

// startKineRole runs `harikube kine` with args in dir, listening on a
// socket there, and waits until it answers an etcd client. It is killed
// when the test ends if it still runs.
func startKineRole(t *testing.T, dir string, args ...string) *kineRole {
	t.Helper()
	k := &kineRole{endpoint: "unix://" + filepath.Join(dir, "kine.sock"), logPath: filepath.Join(t.TempDir(), "kine.log"), done: make(chan struct{})}
	logf, err := os.Create(k.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	k.cmd = exec.Command(testserver.Binary(t), append([]string{"kine", "--listen-address=" + k.endpoint, "--metrics-bind-address=0"}, args...)...)
	k.cmd.Dir = dir
	k.cmd.Stdout, k.cmd.Stderr = logf, logf
	released, err := childguard.Start(k.cmd)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = k.cmd.Wait()
		released()
		close(k.done)
	}()
	t.Cleanup(func() {
		select {
		case <-k.done:
		default:
			_ = k.cmd.Process.Kill()
			<-k.done
		}
	})

	t.Cleanup(k.closeClient)
	socket := strings.TrimPrefix(k.endpoint, "unix://")
	var last error
	err = wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		select {
		case <-k.done:
			return false, errors.New("exited while starting")
		default:
		}
		// Dialled before the socket exists, gRPC logs each failed try.
		if _, last = os.Stat(socket); last != nil {
			return false, nil
		}
		if k.client == nil {
			client, err := clientv3.New(clientv3.Config{Endpoints: []string{k.endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
			if err != nil {
				return false, err
			}
			k.client = client
		}
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, last = k.client.Get(ctx, "/registry/health")
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("the kine role does not answer on %s: %v (last: %v)\n%s", k.endpoint, err, last, k.log(t))
	}
	return k
}

// create writes kineRoleKey as the apiserver creates an object, and reads
// it back.
func (k *kineRole) create(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	txn, err := k.client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(kineRoleKey), "=", 0)).
		Then(clientv3.OpPut(kineRoleKey, kineRoleValue)).Commit()
	if err != nil || !txn.Succeeded {
		t.Fatalf("create %s: %v, succeeded %v", kineRoleKey, err, txn != nil && txn.Succeeded)
	}
	resp, err := k.client.Get(ctx, kineRoleKey)
	if err != nil {
		t.Fatalf("get %s: %v", kineRoleKey, err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != kineRoleValue || resp.Kvs[0].ModRevision != txn.Header.Revision {
		t.Fatalf("get %s: %v, want the value created at revision %d", kineRoleKey, resp.Kvs, txn.Header.Revision)
	}
}

// closeClient closes the etcd client, which would otherwise keep dialling
// the stopped role.
func (k *kineRole) closeClient() {
	if k.client != nil {
		k.client.Close()
		k.client = nil
	}
}

// stop sends SIGTERM and expects the role to exit 0, saying so.
func (k *kineRole) stop(t *testing.T) {
	t.Helper()
	k.closeClient()
	if err := k.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-k.done:
	case <-time.After(time.Minute):
		t.Fatalf("the kine role still runs a minute after SIGTERM:\n%s", k.log(t))
	}
	if code := k.cmd.ProcessState.ExitCode(); code != 0 || !strings.Contains(k.log(t), "kine stopped") {
		t.Fatalf("the kine role stopped with exit code %d, want 0 and \"kine stopped\":\n%s", code, k.log(t))
	}
}

func (k *kineRole) log(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(k.logPath)
	if err != nil {
		t.Fatalf("read the kine role's log: %v", err)
	}
	return string(b)
}

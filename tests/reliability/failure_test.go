package reliability

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/harikube/harikube/pkg/childguard"
	"github.com/harikube/harikube/pkg/datastore"
	"github.com/harikube/harikube/tests/testserver"
)

// seeded is a data directory of a server that ran once and was stopped,
// holding the ConfigMap default/seed; tests copy it.
var (
	seedOnce sync.Once
	seedDir  string
	seedErr  error
)

func seededDataDir(t *testing.T) string {
	t.Helper()
	seedOnce.Do(func() {
		seedErr = errors.New("the seed server failed (see the first test that needed it)")
		dir, err := os.MkdirTemp("", "harikube-seed-")
		if err != nil {
			seedErr = err
			return
		}
		seedDir = dir
		s := testserver.Start(t, "--data-dir", dir)
		_, seedErr = s.Client.CoreV1().ConfigMaps("default").Create(context.Background(),
			&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "seed"}, Data: map[string]string{"k": "seeded"}}, metav1.CreateOptions{})
		if code := s.Stop(t); code != 0 && seedErr == nil {
			seedErr = fmt.Errorf("seed server exited with %d", code)
		}
	})
	if seedErr != nil {
		t.Fatalf("seed data directory: %v", seedErr)
	}
	dst := t.TempDir()
	if out, err := exec.Command("cp", "-a", seedDir+"/.", dst).CombinedOutput(); err != nil {
		t.Fatalf("copy seed data directory: %v %s", err, out)
	}
	os.Remove(filepath.Join(dst, "kine.sock"))
	return dst
}

func TestMain(m *testing.M) {
	code := m.Run()
	if seedDir != "" {
		os.RemoveAll(seedDir)
	}
	os.Exit(code)
}

// runServer runs `harikube server` on dataDir until it exits (or timeout)
// and returns its output, exit code and run time.
func runServer(t *testing.T, dataDir string, timeout time.Duration, extraArgs ...string) (string, int, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	began := time.Now()
	args := append([]string{"server", "--data-dir", dataDir,
		"--https-listen-port", strconv.Itoa(testserver.FreePort(t)), "--bind-address", "127.0.0.1"}, extraArgs...)
	cmd := exec.CommandContext(ctx, testserver.Binary(t), args...)
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	released, err := childguard.Start(cmd)
	if err == nil {
		err = cmd.Wait()
		released()
	}
	out := output.Bytes()
	if ctx.Err() != nil {
		t.Fatalf("harikube server on %s still running after %s; output:\n%s", dataDir, timeout, tail(out, 20))
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Fatalf("harikube server: %v", err)
	}
	return string(out), cmd.ProcessState.ExitCode(), time.Since(began)
}

func tail(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// TestCorruptDatabase: a database file that is not SQLite, or whose schema
// is damaged, stops the start with one clear line naming the file and exit
// status 1, in seconds, and the file is left byte for byte as it was.
// A file damaged beyond the schema (truncated) may only be found when the
// data is read: the start must then fail too, or serve — but never rewrite
// the file into something else silently.
func TestCorruptDatabase(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		damage func(t *testing.T, path string)
		want   string // in the last line of the output
	}{
		{"NotSQLite", func(t *testing.T, path string) {
			garbage := make([]byte, 64<<10)
			rand.Read(garbage)
			writeFile(t, path, garbage)
		}, "is not a SQLite database"},
		{"TextFile", func(t *testing.T, path string) {
			writeFile(t, path, []byte("this is not a database\n"))
		}, "is not a SQLite database"},
		{"DamagedSchema", func(t *testing.T, path string) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			garbage := make([]byte, 3000)
			rand.Read(garbage)
			copy(b[100:], garbage) // the schema table, after the 100-byte header
			writeFile(t, path, b)
		}, "is corrupt"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := seededDataDir(t)
			path := datastore.DatabasePath(dir)
			c.damage(t, path)
			before := fileHash(t, path)
			out, code, took := runServer(t, dir, 2*time.Minute)
			last := tail([]byte(out), 1)
			if code != 1 || !strings.Contains(last, c.want) || !strings.Contains(last, path) {
				t.Errorf("exit code %d after %.1fs; last line %q; want 1 and a line naming %s with %q", code, took.Seconds(), last, path, c.want)
			}
			if took > time.Minute {
				t.Errorf("took %s to fail", took)
			}
			if fileHash(t, path) != before {
				t.Errorf("the damaged database file was modified")
			}
			t.Logf("exit %d after %.1fs: %s", code, took.Seconds(), last)
		})
	}
	// The same check guards a database named with --datastore-endpoint.
	t.Run("ExplicitEndpoint", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "elsewhere.db")
		writeFile(t, path, []byte("this is not a database\n"))
		before := fileHash(t, path)
		out, code, took := runServer(t, t.TempDir(), 2*time.Minute, "--datastore-endpoint", "sqlite://"+path+"?_journal=WAL")
		last := tail([]byte(out), 1)
		if code != 1 || !strings.Contains(last, "is not a SQLite database") || !strings.Contains(last, path) || took > time.Minute {
			t.Errorf("exit code %d after %.1fs; last line %q; want 1 within a minute and a line naming %s", code, took.Seconds(), last, path)
		}
		if fileHash(t, path) != before {
			t.Errorf("the file was modified")
		}
	})
	t.Run("Truncated", func(t *testing.T) {
		dir := seededDataDir(t)
		path := datastore.DatabasePath(dir)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, path, b[:len(b)/2])
		before := fileHash(t, path)
		out, code, took := runServer(t, dir, 3*time.Minute)
		last := tail([]byte(out), 1)
		if code == 0 || !strings.Contains(last, "malformed") && !strings.Contains(last, "corrupt") {
			t.Errorf("exit code %d after %.1fs; last line %q; want non-zero and a message about the damaged database", code, took.Seconds(), last)
		}
		if fileHash(t, path) != before {
			t.Errorf("the damaged database file was modified")
		}
		t.Logf("exit %d after %.1fs: %s", code, took.Seconds(), last)
	})
}

// waitControllersStarted waits until kube-controller-manager has created
// the service accounts of its controllers (no new one for three seconds).
func waitControllersStarted(t *testing.T, s *testserver.Server) {
	t.Helper()
	last, stable := -1, 0
	pollFor(t, "the controller manager's controllers", func(ctx context.Context) bool {
		sas, err := s.Client.CoreV1().ServiceAccounts("kube-system").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false
		}
		if n := len(sas.Items); n != last {
			last, stable = n, 0
			return false
		}
		stable++
		return last >= 20 && stable >= 15 // 15 polls of 200 ms
	})
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		os.Remove(path + suffix)
	}
}

// TestLockedDatabase: another process holds the database in a write
// transaction (BEGIN EXCLUSIVE through modernc.org/sqlite, as the sqlite3
// shell or a backup tool would). What is right: the server waits as long as
// SQLite's busy timeout (30 s) for a lock that goes away — then starts and
// works — and otherwise exits non-zero with one line saying the database is
// locked by another process, without touching the file.
func TestLockedDatabase(t *testing.T) {
	t.Parallel()
	lock := func(t *testing.T, path string) (release func()) {
		t.Helper()
		db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
		if err != nil {
			t.Fatal(err)
		}
		conn, err := db.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.ExecContext(context.Background(), "BEGIN EXCLUSIVE"); err != nil {
			t.Fatalf("BEGIN EXCLUSIVE: %v", err)
		}
		var once sync.Once
		release = func() {
			once.Do(func() {
				_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
				conn.Close()
				db.Close()
			})
		}
		t.Cleanup(release)
		return release
	}

	t.Run("HeldThroughout", func(t *testing.T) {
		dir := seededDataDir(t)
		path := datastore.DatabasePath(dir)
		lock(t, path)
		before := fileHash(t, path)
		out, code, took := runServer(t, dir, 3*time.Minute)
		last := tail([]byte(out), 1)
		if code != 1 || !strings.Contains(last, "is locked by another process") || !strings.Contains(last, path) {
			t.Errorf("exit code %d after %.1fs; last line %q; want 1 and a line saying %s is locked by another process", code, took.Seconds(), last, path)
		}
		if took < 25*time.Second || took > 100*time.Second {
			t.Errorf("gave up after %s; want about the 30 s busy timeout", took)
		}
		if fileHash(t, path) != before {
			t.Errorf("the locked database file was modified")
		}
		t.Logf("exit %d after %.1fs: %s", code, took.Seconds(), last)
	})
	t.Run("ReleasedWhileWaiting", func(t *testing.T) {
		dir := seededDataDir(t)
		release := lock(t, datastore.DatabasePath(dir))
		go func() {
			time.Sleep(5 * time.Second)
			release()
		}()
		began := time.Now()
		s := testserver.Start(t, "--data-dir", dir)
		cm, err := s.Client.CoreV1().ConfigMaps("default").Get(context.Background(), "seed", metav1.GetOptions{})
		if err != nil || cm.Data["k"] != "seeded" {
			t.Fatalf("seeded ConfigMap after the lock went away: %v %v", cm, err)
		}
		if _, err := s.Client.CoreV1().ConfigMaps("default").Create(context.Background(),
			&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "after-lock"}}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("write after the lock went away: %v", err)
		}
		t.Logf("ready %.1fs after start, the lock released after 5s", time.Since(began).Seconds())
	})
}

// TestDiskFull: the data directory is a 64 MiB tmpfs; writers create
// ConfigMaps while a filler file takes all the free space. Writes must fail
// with an error (not be acknowledged and lost), the server must stay up,
// every acknowledged write must be kept, and writes must work again once
// the filler is deleted. Needs root and mount(8); skipped otherwise.
//
// The disk fills only after the controller manager has started its
// controllers: one that cannot create its service account while starting
// stops kube-controller-manager, and harikube then exits as a whole (as
// upstream's controller manager exits; not changed here).
func TestDiskFull(t *testing.T) {
	t.Parallel()
	mnt := t.TempDir()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs as the data directory")
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (%v: %s); the disk-full test needs mount permission", err, bytes.TrimSpace(out))
	}
	// Unmount after the server has stopped: cleanups run last-in
	// first-out, and the server's is registered by Start below.
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", mnt, err, out)
		}
	})
	dataDir := filepath.Join(mnt, "data")
	s := testserver.Start(t, "--data-dir", dataDir)
	createNamespace(t, s, "full")
	waitControllersStarted(t, s)
	cms := s.Client.CoreV1().ConfigMaps("full")
	ctx := context.Background()
	payload := strings.Repeat("p", 32<<10)
	var mu sync.Mutex
	var acked, failedFull, unknown []string
	write := func(name string) error {
		_, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string]string{"p": payload, "name": name}}, metav1.CreateOptions{})
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err == nil:
			acked = append(acked, name)
		case strings.Contains(err.Error(), "database or disk is full"):
			failedFull = append(failedFull, name)
		default:
			unknown = append(unknown, name)
		}
		return err
	}
	for i := 0; i < 20; i++ {
		if err := write(fmt.Sprintf("before-%03d", i)); err != nil {
			t.Fatalf("write before the disk fills: %v", err)
		}
	}

	// Writers keep going while the filler takes the space.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var firstErr sync.Once
	var sample error
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := write(fmt.Sprintf("during-%d-%04d", w, i)); err != nil {
					firstErr.Do(func() { sample = err })
					time.Sleep(100 * time.Millisecond)
				}
			}
		}(w)
	}
	filler := filepath.Join(mnt, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	var filled int64
	for {
		n, err := f.Write(chunk)
		filled += int64(n)
		if err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill: %v", err)
			}
			break
		}
	}
	f.Close()
	time.Sleep(5 * time.Second) // writes against a full disk
	close(stop)
	wg.Wait()
	mu.Lock()
	fullCount := len(failedFull)
	mu.Unlock()
	if fullCount == 0 {
		t.Fatalf("no write failed with the disk full (filler %d MiB; first error %v)", filled>>20, sample)
	}
	t.Logf("disk full after a %d MiB filler: %d writes failed, e.g. %v", filled>>20, fullCount, sample)

	// Still up, and reads work.
	if _, err := s.Client.CoreV1().Namespaces().Get(ctx, "full", metav1.GetOptions{}); err != nil {
		t.Fatalf("read with the disk full: %v", err)
	}
	var status int
	s.Client.Discovery().RESTClient().Get().AbsPath("/livez").Do(ctx).StatusCode(&status)
	if status != 200 {
		t.Errorf("/livez with the disk full: %d", status)
	}

	// Space returns: writes work again.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	recovered := time.Now()
	pollFor(t, "a write after the space returned", func(ctx context.Context) bool {
		return write(fmt.Sprintf("after-%d", time.Now().UnixNano())) == nil
	})
	t.Logf("writes work again %.1fs after the filler was deleted", time.Since(recovered).Seconds())

	// Nothing acknowledged was lost; nothing refused was stored.
	list, err := cms.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]string{}
	for _, cm := range list.Items {
		stored[cm.Name] = cm.Data["name"]
	}
	mu.Lock()
	defer mu.Unlock()
	for _, name := range acked {
		if stored[name] != name {
			t.Errorf("acknowledged ConfigMap %s lost", name)
		}
	}
	for _, name := range failedFull {
		if _, ok := stored[name]; ok {
			t.Errorf("ConfigMap %s stored although its create failed with the disk full", name)
		}
	}
	if code := s.Stop(t); code != 0 {
		t.Errorf("stop: exit code %d", code)
	}
	t.Logf("acknowledged %d (all kept), failed with the disk full %d (none stored), other errors %d; datastore check: %s",
		len(acked), len(failedFull), len(unknown), datastoreCheck(t, dataDir))
}

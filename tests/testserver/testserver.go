// Package testserver runs the real harikube binary for tests: it builds it
// once per test process, starts `harikube server` on a free port in a
// temporary data directory, and hands out clients for it.
package testserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/harikube/harikube/pkg/childguard"
)

const (
	readyTimeout = 90 * time.Second
	stopTimeout  = 60 * time.Second
	runTimeout   = 60 * time.Second
	logTailLines = 50
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary builds bin/harikube once per test process by running
// `make -C <repo root> build BIN=...` (the Makefile sets the version
// ldflags) and returns its path. HARIKUBE_BINARY names a ready binary and
// skips the build.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("HARIKUBE_BINARY"); p != "" {
		return p
	}
	buildOnce.Do(func() { binPath, buildErr = build() })
	if buildErr != nil {
		t.Fatalf("build harikube: %v", buildErr)
	}
	return binPath
}

// build writes the binary under a per-checkout directory in the system temp
// dir, so repeated test runs leave one binary behind rather than one each.
// Test processes of several packages build concurrently: each builds to its
// own name and renames it into place, which never disturbs a running copy.
func build() (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("harikube-test-%x", fnv(root)))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	final := filepath.Join(dir, "harikube")
	tmp := fmt.Sprintf("%s.%d", final, os.Getpid())
	out, err := exec.Command("make", "-C", root, "build", "BIN="+tmp).CombinedOutput()
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("make build: %v\n%s", err, out)
	}
	return final, os.Rename(tmp, final)
}

// repoRoot walks up from the working directory (the test's package
// directory) to the directory holding go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

func fnv(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return h
}

// Server is one running (or stopped) `harikube server` process.
type Server struct {
	DataDir, Kubeconfig string
	Port                int
	Config              *rest.Config // admin, from the kubeconfig
	Client              kubernetes.Interface
	LogPath             string   // the server's stdout and stderr, appended over restarts
	Args                []string // extra args given at Start, reused on Restart

	bin  string
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	code int           // exit code, valid once done is closed
}

// Start runs `harikube server --data-dir <t.TempDir()> --https-listen-port
// <free port> --bind-address 127.0.0.1 <args...>` (args may override the
// data dir, port and kubeconfig path), waits until /readyz answers ok and
// stops the server when the test ends.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	s := &Server{
		bin:     Binary(t),
		Args:    args,
		DataDir: flagValue(args, "--data-dir", "-d"),
		LogPath: filepath.Join(t.TempDir(), "server.log"),
	}
	if s.DataDir == "" {
		s.DataDir = t.TempDir()
	}
	s.Kubeconfig = flagValue(args, "--write-kubeconfig", "-o")
	if s.Kubeconfig == "" {
		s.Kubeconfig = filepath.Join(s.DataDir, "kubeconfig.yaml")
	}
	fixedPort := flagValue(args, "--https-listen-port", "")
	if fixedPort != "" {
		p, err := strconv.Atoi(fixedPort)
		if err != nil {
			t.Fatalf("--https-listen-port %q: %v", fixedPort, err)
		}
		s.Port = p
	}
	t.Cleanup(func() {
		if s.running() {
			if code := s.stop(); code != 0 {
				t.Errorf("harikube server exited with code %d at cleanup", code)
			}
		}
		if t.Failed() {
			t.Logf("harikube server log (%s), last lines:\n%s", s.LogPath, s.logTail())
			// The log goes with the test's temp dir; keep a copy where CI
			// or a developer asked for one.
			if dir := os.Getenv("HARIKUBE_TEST_LOGS"); dir != "" {
				if b, err := os.ReadFile(s.LogPath); err == nil && os.MkdirAll(dir, 0o755) == nil {
					_ = os.WriteFile(filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+".log"), b, 0o644)
				}
			}
		}
	})
	// Another process may take a port between FreePort and the server's
	// bind; then try another one.
	for attempt := 1; ; attempt++ {
		if fixedPort == "" {
			s.Port = FreePort(t)
		}
		err := s.launchAndWait(t)
		if err == nil {
			return s
		}
		if fixedPort != "" || attempt == 3 || !errors.Is(err, errPortTaken) {
			t.Fatalf("harikube server did not become ready: %v\nlast log lines (%s):\n%s", err, s.LogPath, s.logTail())
		}
	}
}

var errPortTaken = errors.New("port already in use")

// launchAndWait starts the process and waits for the kubeconfig and a ready
// /readyz. On error the process has exited.
func (s *Server) launchAndWait(t testing.TB) error {
	t.Helper()
	logf, err := os.OpenFile(s.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	logStart, _ := logf.Seek(0, io.SeekEnd)
	fmt.Fprintf(logf, "=== %s: harikube server on port %d, data dir %s\n", time.Now().Format(time.RFC3339), s.Port, s.DataDir)

	args := append([]string{"server",
		"--data-dir", s.DataDir,
		"--https-listen-port", strconv.Itoa(s.Port),
		"--bind-address", "127.0.0.1",
	}, s.Args...)
	cmd := exec.Command(s.bin, args...)
	// The server under test tunes Go's collector itself unless GOGC is set.
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GOGC=") })
	cmd.Stdout, cmd.Stderr = logf, logf
	// Do not outlive a test binary that panics or times out.
	released, err := childguard.Start(cmd)
	if err != nil {
		return err
	}
	s.cmd, s.done = cmd, make(chan struct{})
	go func(done chan struct{}) {
		_ = cmd.Wait()
		released()
		s.code = cmd.ProcessState.ExitCode()
		close(done)
	}(s.done)

	err = s.waitReady()
	if err == nil {
		return nil
	}
	if s.running() {
		s.cmd.Process.Kill()
		<-s.done
	} else if out, _ := os.ReadFile(s.LogPath); int64(len(out)) > logStart &&
		bytes.Contains(out[logStart:], []byte("address already in use")) {
		return fmt.Errorf("%w: %v", errPortTaken, err)
	}
	return err
}

func (s *Server) waitReady() error {
	deadline := time.Now().Add(readyTimeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return fmt.Errorf("harikube server exited with code %d while starting", s.code)
		case <-time.After(200 * time.Millisecond):
		}
		// Reload until it names this port: a kubeconfig left by an earlier
		// run in the same data dir may name another.
		if s.Config == nil || !strings.HasSuffix(s.Config.Host, ":"+strconv.Itoa(s.Port)) {
			if last = s.loadKubeconfig(); last != nil {
				continue
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var status int
		body, err := s.Client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&status).Raw()
		cancel()
		if err == nil && status == http.StatusOK && string(body) == "ok" {
			return nil
		}
		last = fmt.Errorf("GET /readyz: status %d, %v", status, err)
	}
	return fmt.Errorf("not ready after %s (last: %v)", readyTimeout, last)
}

func (s *Server) loadKubeconfig() error {
	cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	if err != nil {
		return err
	}
	// Tests create objects in bulk; client-side throttling only slows them.
	cfg.QPS, cfg.Burst = 500, 1000
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	s.Config, s.Client = cfg, client
	return nil
}

func (s *Server) running() bool {
	if s.done == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits; after stopTimeout it kills the process and
// returns -1.
func (s *Server) stop() int { return s.stopWith(syscall.SIGTERM) }

func (s *Server) stopWith(sig os.Signal) int {
	if !s.running() {
		return s.code
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.done:
		return s.code
	case <-time.After(stopTimeout):
		_ = s.cmd.Process.Kill()
		<-s.done
		return -1
	}
}

// Stop sends SIGTERM, waits for the process to exit and returns its exit
// code. A server still running after 60 s is killed and the test fails.
func (s *Server) Stop(t testing.TB) int {
	t.Helper()
	return s.StopWith(t, syscall.SIGTERM)
}

// StopWith is Stop with another signal.
func (s *Server) StopWith(t testing.TB, sig os.Signal) int {
	t.Helper()
	if !s.running() {
		t.Fatalf("harikube server is not running")
	}
	code := s.stopWith(sig)
	if code == -1 {
		t.Fatalf("harikube server did not stop within %s of %v; killed\nlast log lines:\n%s", stopTimeout, sig, s.logTail())
	}
	return code
}

// WaitExit waits up to timeout for the server to exit on its own and
// returns its exit code; the test fails if it is still running then.
func (s *Server) WaitExit(t testing.TB, timeout time.Duration) int {
	t.Helper()
	if s.done == nil {
		t.Fatalf("harikube server was never started")
	}
	select {
	case <-s.done:
		return s.code
	case <-time.After(timeout):
		t.Fatalf("harikube server still running after %s\nlast log lines:\n%s", timeout, s.logTail())
		return -1
	}
}

// Kill sends SIGKILL and waits for the process to exit.
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	if !s.running() {
		t.Fatalf("harikube server is not running")
	}
	_ = s.cmd.Process.Kill()
	<-s.done
}

// Restart starts the server again with the same data dir, port and args and
// waits until it is ready. It waits for the port to be free first.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if s.running() {
		t.Fatalf("Restart: harikube server is still running")
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))
	deadline := time.Now().Add(30 * time.Second)
	for {
		l, err := net.Listen("tcp", addr)
		if err == nil {
			l.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Restart: port %d still busy: %v", s.Port, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := s.launchAndWait(t); err != nil {
		t.Fatalf("harikube server did not become ready after restart: %v\nlast log lines (%s):\n%s", err, s.LogPath, s.logTail())
	}
}

// Run runs the binary with args (e.g. "kubectl", "get", "ns") and
// KUBECONFIG=s.Kubeconfig, and returns its stdout and exit code; stderr goes
// to the test log. It fails the test after 60 s.
func (s *Server) Run(t testing.TB, args ...string) (stdout string, exitCode int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.bin, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+s.Kubeconfig)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("harikube %s: still running after %s", strings.Join(args, " "), runTimeout)
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Fatalf("harikube %s: %v", strings.Join(args, " "), err)
	}
	if errOut.Len() > 0 {
		t.Logf("harikube %s: stderr:\n%s", strings.Join(args, " "), errOut.String())
	}
	return out.String(), cmd.ProcessState.ExitCode()
}

// logTail returns the last lines of the server log.
func (s *Server) logTail() string {
	data, err := os.ReadFile(s.LogPath)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > logTailLines {
		lines = lines[len(lines)-logTailLines:]
	}
	return strings.Join(lines, "\n")
}

var (
	portsMu sync.Mutex
	ports   = map[int]bool{}
)

// FreePort returns a TCP port free on 127.0.0.1, never the same one twice
// in a test process.
func FreePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for i := 0; i < 100; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("find a free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !ports[port] {
			ports[port] = true
			return port
		}
	}
	t.Fatalf("find a free port: no new port after 100 tries")
	return 0
}

// flagValue finds "--name value" or "--name=value" (or the short form) in
// args; the last one wins, as with the server's flag parsing.
func flagValue(args []string, long, short string) string {
	var v string
	for i, a := range args {
		for _, name := range []string{long, short} {
			if name == "" {
				continue
			}
			if a == name && i+1 < len(args) {
				v = args[i+1]
			} else if strings.HasPrefix(a, name+"=") {
				v = strings.TrimPrefix(a, name+"=")
			}
		}
	}
	return v
}

// Metric sums the samples of a metric from the apiserver's /metrics whose
// label text contains every one of lbls (0 when there are none).
func (s *Server) Metric(t testing.TB, name string, lbls ...string) float64 {
	t.Helper()
	body, err := s.Client.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatalf("read metrics: %v", err)
	}
	total, err := SumMetric(body, name, lbls...)
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// Package vcluster tests harikube as a vCluster "k8s" distro image without a
// host cluster: it builds the image daemonlessly (scripts/build-image),
// unpacks it, copies /kubernetes/. the way vCluster's init container does,
// and replays the syncer's start-up of the copied binaries with vCluster's
// exact argument lists, then makes every check the syncer makes.
package vcluster

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/harikube/harikube/pkg/childguard"
	"github.com/harikube/harikube/tests/testserver"
	"github.com/harikube/harikube/tests/vclusterimage"
)

// imageRef is what the tests tag the image with.
const imageRef = "ghcr.io/harikube/harikube:test"

var (
	workDir string // removed by TestMain

	imageOnce sync.Once
	imageErr  error
	img       vclusterimage.Image
)

func TestMain(m *testing.M) {
	var err error
	workDir, err = os.MkdirTemp("", "harikube-vcluster-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(workDir)
	os.Exit(code)
}

// repoRoot is two levels up from this package.
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// image builds the image from the harikube binary (HARIKUBE_BINARY, or one
// built with make) with scripts/build-image, unpacks it and runs the init
// container's copy. Later callers get the same result.
func image(t testing.TB) vclusterimage.Image {
	t.Helper()
	bin := testserver.Binary(t)
	root := repoRoot(t)
	imageOnce.Do(func() { imageErr = buildImage(root, bin) })
	if imageErr != nil {
		t.Fatalf("build the image: %v", imageErr)
	}
	return img
}

func buildImage(root, bin string) error {
	var err error
	img, err = vclusterimage.Build(root, bin, imageRef, workDir)
	return err
}

// k8sVersion is the k8s.io/kubernetes version in go.mod, which /version must
// report.
func k8sVersion(t testing.TB) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*k8s\.io/kubernetes (v\S+)`).FindSubmatch(data)
	if m == nil {
		t.Fatal("no k8s.io/kubernetes in go.mod")
	}
	return string(m[1])
}

// process is one child the way vCluster's command.RunCommand starts it:
// argv from the argument list, cwd /data, the environment plus
// _VCLUSTER_MANAGED=yes and PATH with the binaries appended. Cancelling sends
// SIGINT.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	code int
}

func startProcess(t *testing.T, name, dataDir, binaries string, args, env []string) *process {
	t.Helper()
	p := &process{name: name, log: filepath.Join(t.TempDir(), name+".log"), done: make(chan struct{})}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "$ %s\n", strings.Join(args, " "))
	p.cmd = exec.Command(args[0], args[1:]...)
	p.cmd.Dir = dataDir
	p.cmd.Env = append(append(os.Environ(), env...), "_VCLUSTER_MANAGED=yes", "PATH="+os.Getenv("PATH")+":"+binaries+":/usr/local/bin")
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	released, err := childguard.Start(p.cmd)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		released()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	t.Cleanup(func() {
		if p.running() {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s log (%s), last lines:\n%s", name, p.log, vclusterimage.Tail(p.log, 40))
		}
	})
	return p
}

func (p *process) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// exitedErr is non-nil once the process has exited.
func (p *process) exitedErr() error {
	if p.running() {
		return nil
	}
	return fmt.Errorf("%s exited with code %d:\n%s", p.name, p.code, vclusterimage.Tail(p.log, 30))
}

// stop is vCluster's cancel: SIGINT, and the process must exit 0.
func (p *process) stop(t *testing.T) {
	t.Helper()
	if !p.running() {
		t.Fatalf("%s is not running (exit code %d)", p.name, p.code)
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("%s did not stop within 60s of SIGINT", p.name)
	}
	if p.code != 0 {
		t.Errorf("%s exited with code %d after SIGINT, want 0:\n%s", p.name, p.code, vclusterimage.Tail(p.log, 30))
	}
}

// poll is vclusterimage.Poll, stopping early when one of procs exits.
func poll(t *testing.T, what string, interval, timeout time.Duration, cond func() (bool, error), procs ...*process) {
	t.Helper()
	alive := make([]func() error, len(procs))
	for i, p := range procs {
		alive[i] = p.exitedErr
	}
	vclusterimage.Poll(t, what, interval, timeout, cond, alive...)
}

// waitForEtcd is vCluster's etcd.WaitForEtcd: an etcd client on the
// endpoint and a MemberList, every second.
func waitForEtcd(t *testing.T, endpoint string, procs ...*process) {
	t.Helper()
	poll(t, "etcd MemberList on "+endpoint, time.Second, time.Minute, func() (bool, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, Context: ctx, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			return false, err
		}
		defer c.Close()
		res, err := c.MemberList(ctx)
		if err != nil {
			return false, err
		}
		return len(res.Members) > 0, nil
	}, procs...)
}

// restConfig loads a kubeconfig the way the syncer does.
func restConfig(t *testing.T, kubeconfig string) *rest.Config {
	t.Helper()
	raw, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.NewDefaultClientConfig(*raw, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Timeout = 10 * time.Second
	return cfg
}

// waitForAPI is the syncer's waitForAPI: GET /readyz with admin.conf until
// it succeeds.
func waitForAPI(t *testing.T, adminConf string, procs ...*process) {
	t.Helper()
	client := kubernetes.NewForConfigOrDie(restConfig(t, adminConf))
	poll(t, "/readyz with admin.conf", 500*time.Millisecond, 3*time.Minute, func() (bool, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil, err
	}, procs...)
}

// waitForClientConfig is the syncer's waitForClientConfig: admin.conf
// readable, /version answers and ServiceAccount default/default exists.
func waitForClientConfig(t *testing.T, adminConf string, procs ...*process) {
	t.Helper()
	poll(t, "/version and ServiceAccount default/default", time.Second, 2*time.Minute, func() (bool, error) {
		data, err := os.ReadFile(adminConf)
		if err != nil {
			return false, err
		}
		cc, err := clientcmd.NewClientConfigFromBytes(data)
		if err != nil {
			return false, err
		}
		cfg, err := cc.ClientConfig()
		if err != nil {
			return false, err
		}
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return false, err
		}
		if _, err := client.Discovery().ServerVersion(); err != nil {
			return false, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	}, procs...)
}

// anonymousGet is a request without credentials, as the kubelet's probes
// reach the apiserver before vCluster's proxy (v0.25 and earlier: this is
// also how waitForAPI checked).
func anonymousGet(url string) (int, string, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: insecureTLS()}}
	res, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(bytes.TrimSpace(body)), nil
}

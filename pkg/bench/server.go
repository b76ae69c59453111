package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// server is a `harikube server` child with its own data directory and port.
type server struct {
	*process
	dataDir string
	client  dynamic.Interface
	// http reaches the server's other endpoints (/debug/pprof) as the admin.
	http *http.Client
	host string
}

// errNotReady is wrapped by the error of a server that did not become
// ready within its start timeout.
var errNotReady = errors.New("start timed out")

// startServer runs `bin server` on a free loopback port and waits until its
// /readyz answers ok through the kubeconfig it writes.
func startServer(ctx context.Context, bin, dir string, extra []string, timeout time.Duration, memCap *memoryCap) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dataDir := filepath.Join(dir, "server")
	args := append([]string{"server", "--data-dir", dataDir, "--bind-address", "127.0.0.1",
		"--https-listen-port", strconv.Itoa(port)}, extra...)
	p, err := startProcess("harikube server", bin, args, filepath.Join(dir, "server.log"), memCap)
	if err != nil {
		return nil, err
	}
	s := &server{process: p, dataDir: dataDir}
	if err := s.waitReady(ctx, timeout); err != nil {
		err = memCap.markStalled(err)
		_ = p.stop(30 * time.Second)
		return nil, err
	}
	return s, nil
}

func (s *server) waitReady(ctx context.Context, timeout time.Duration) error {
	kubeconfig := filepath.Join(s.dataDir, "kubeconfig.yaml")
	deadline := time.Now().Add(timeout)
	var probe func() error
	last := fmt.Errorf("no kubeconfig at %s yet", kubeconfig)
	for time.Now().Before(deadline) {
		if s.exited() {
			return s.exitError()
		}
		if probe == nil {
			if _, err := os.Stat(kubeconfig); err == nil {
				probe, last = s.connect(ctx, kubeconfig)
			}
		}
		if probe != nil {
			if last = probe(); last == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("harikube server not ready after %s (last check: %v): %w\n%s", timeout, last, errNotReady, s.logTail(20))
}

// connect builds the bench's client from the server's kubeconfig and
// returns a /readyz probe.
func (s *server) connect(ctx context.Context, kubeconfig string) (func() error, error) {
	rc, err := restConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	if s.client, err = dynamic.NewForConfig(rc); err != nil {
		return nil, err
	}
	rt, err := rest.TransportFor(rc)
	if err != nil {
		return nil, err
	}
	s.http, s.host = &http.Client{Transport: rt}, rc.Host
	return func() error { return s.answers(ctx, 5*time.Second) }, nil
}

// answers checks that the server's /readyz answers ok within timeout.
func (s *server) answers(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.host+"/readyz", nil)
	if err != nil {
		return err
	}
	res, err := s.http.Do(req)
	if err != nil {
		return err
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("/readyz: %s", res.Status)
	}
	return nil
}

// restConfig is the admin kubeconfig with client-side rate limits high
// enough never to throttle the bench.
func restConfig(kubeconfig string) (*rest.Config, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.QPS, rc.Burst = 5000, 10000
	rc.Timeout = 10 * time.Minute
	return rc, nil
}

// timedOutRequests is how many requests the apiserver has timed out since it
// started (the timeout filter's apiserver_request_terminations_total with
// code 504).
func (s *server) timedOutRequests(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.host+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	res, err := s.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("/metrics: %s", res.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(res.Body)
	if err != nil {
		return 0, fmt.Errorf("/metrics: %w", err)
	}
	total := 0.0
	for _, m := range families["apiserver_request_terminations_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "code" && l.GetValue() == "504" {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return int(total), nil
}

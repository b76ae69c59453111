package bench

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

// DefaultEtcdQuota leaves room for 100k objects and their history between
// the apiserver's compactions; etcd's own default is 2 GiB.
const DefaultEtcdQuota = 8 << 30

// RunEtcd serves a single-member etcd with its data in dataDir, a backend
// quota of quota bytes and its client API on listenClient (host:port) until
// ctx ends. It is what the hidden `harikube bench etcd-server` command runs,
// so that the etcd of the etcd mode is a process of its own, like the
// server's datastore is not.
func RunEtcd(ctx context.Context, dataDir, listenClient string, quota int64) error {
	clientURL, err := url.Parse("http://" + listenClient)
	if err != nil {
		return fmt.Errorf("--listen-client %q: %w", listenClient, err)
	}
	peerPort, err := freePort()
	if err != nil {
		return err
	}
	peerURL, _ := url.Parse("http://127.0.0.1:" + strconv.Itoa(peerPort))

	cfg := embed.NewConfig()
	cfg.Name = "bench"
	cfg.Dir = dataDir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*clientURL}, []url.URL{*clientURL}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peerURL}, []url.URL{*peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{"stderr"}
	cfg.QuotaBackendBytes = quota

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return fmt.Errorf("etcd: %w", err)
	case <-time.After(time.Minute):
		return fmt.Errorf("etcd not ready after a minute")
	}
	fmt.Printf("etcd ready: %s\n", clientURL)
	select {
	case <-ctx.Done():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("etcd: %w", err)
	}
}

// startEtcd runs the etcd helper (`bin bench etcd-server`) with its data in
// dir/etcd and waits until its /health answers; it returns the helper and
// its client URL.
func startEtcd(ctx context.Context, bin, dir string, quota int64, timeout time.Duration, memCap *memoryCap) (*process, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	listen := "127.0.0.1:" + strconv.Itoa(port)
	p, err := startProcess("etcd", bin, []string{"bench", "etcd-server", "--data-dir", etcdDataDir(dir), "--listen-client", listen,
		"--quota-backend-bytes", strconv.FormatInt(quota, 10)},
		filepath.Join(dir, "etcd.log"), memCap)
	if err != nil {
		return nil, "", err
	}
	endpoint := "http://" + listen
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	for {
		if p.exited() {
			return nil, "", p.exitError()
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+"/health", nil)
		if res, err := hc.Do(req); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return p, endpoint, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			err := memCap.markStalled(fmt.Errorf("etcd not healthy after %s: %w\n%s", timeout, errNotReady, p.logTail(20)))
			_ = p.stop(10 * time.Second)
			return nil, "", err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func etcdDataDir(dir string) string { return filepath.Join(dir, "etcd") }

// checkEtcdHolds proves that the etcd mode stores the widgets in etcd (and
// not in the server's own datastore): etcd must hold n widget keys.
func checkEtcdHolds(ctx context.Context, endpoint string, n int) error {
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer c.Close()
	prefix := "/registry/" + group + "/widgets/"
	res, err := c.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("count widgets in etcd: %w", err)
	}
	if res.Count != int64(n) {
		return fmt.Errorf("etcd holds %d keys under %s, want %d: the apiserver does not store in etcd", res.Count, prefix, n)
	}
	return nil
}

package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// profilingArg turns on the apiserver's /debug/pprof, which profiles the
// whole process: apiserver, controller manager and datastore.
const profilingArg = "--kube-apiserver-arg=profiling=true"

// saveProfile writes the server's /debug/pprof/<name>?<query> to path.
func (s *server) saveProfile(ctx context.Context, path, name, query string) error {
	url := s.host + "/debug/pprof/" + name
	if query != "" {
		url += "?" + query
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	res, err := s.http.Do(req)
	if err != nil {
		return fmt.Errorf("profile %s: %w", name, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("profile %s: %s", name, res.Status)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, res.Body); err != nil {
		f.Close()
		return fmt.Errorf("profile %s: %w", name, err)
	}
	return f.Close()
}

// profiles names the files of one mode's profiles in Options.ProfileDir;
// a zero profiles saves none.
type profiles struct {
	dir, mode string
}

func (p profiles) path(n int, what string) string {
	return filepath.Join(p.dir, fmt.Sprintf("%s-n%d-%s.pb.gz", p.mode, n, what))
}

// heap saves a heap profile (in use and allocated since the start) after
// a forced collection.
func (p profiles) heap(ctx context.Context, s *server, n int) error {
	if p.dir == "" {
		return nil
	}
	return s.saveProfile(ctx, p.path(n, "heap"), "heap", "gc=1")
}

// cpu starts a CPU profile of the next d in the background; wait returns
// once it is saved.
func (p profiles) cpu(ctx context.Context, s *server, n int, what string, d time.Duration) (wait func() error) {
	if p.dir == "" {
		return func() error { return nil }
	}
	done := make(chan error, 1)
	secs := max(1, int(d.Seconds()))
	go func() {
		done <- s.saveProfile(ctx, p.path(n, what+"-cpu"), "profile", fmt.Sprintf("seconds=%d", secs))
	}()
	return func() error { return <-done }
}

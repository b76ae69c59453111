package datastore

import (
	"context"
	"strings"
	"testing"

	"github.com/harikube/harikube/tests/pgserver"
)

// Kine's --ca-file, --cert-file, --key-file and --skip-verify reach a
// PostgreSQL that accepts only TLS connections with a client certificate of
// its CA (pg_hba "hostssl … cert"), as Kine's own driver passes them.
func TestPostgresTLS(t *testing.T) {
	pg := pgserver.StartTLS(t)
	endpoint := pg.Endpoint("tls")

	try := func(endpoint string, args ...string) error {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ds, err := Start(ctx, Options{DataDir: t.TempDir(), Endpoint: endpoint, KineArgs: args})
		if err != nil {
			return err
		}
		cancel()
		ds.Wait()
		return nil
	}
	for _, c := range []struct {
		name     string
		endpoint string
		args     []string
		wantErr  string // "" for success
	}{
		{"CA, certificate and key files", endpoint, []string{"--ca-file=" + pg.CAFile, "--cert-file=" + pg.CertFile, "--key-file=" + pg.KeyFile}, ""},
		{"no TLS flags", endpoint, nil, "connection requires a valid client certificate"},
		{"a CA that did not sign the server", endpoint, []string{"--ca-file=" + pg.OtherCAFile, "--cert-file=" + pg.CertFile, "--key-file=" + pg.KeyFile}, "certificate signed by unknown authority"},
		{"server name not in its certificate", strings.Replace(endpoint, "127.0.0.1", "localhost", 1), []string{"--ca-file=" + pg.CAFile, "--cert-file=" + pg.CertFile, "--key-file=" + pg.KeyFile}, "wanted to match localhost"},
		{"skip-verify with a CA that did not sign the server", endpoint, []string{"--ca-file=" + pg.OtherCAFile, "--cert-file=" + pg.CertFile, "--key-file=" + pg.KeyFile, "--skip-verify"}, ""},
		{"the URL's own sslmode wins", endpoint + "?sslmode=disable", []string{"--ca-file=" + pg.CAFile, "--cert-file=" + pg.CertFile, "--key-file=" + pg.KeyFile}, "no encryption"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := try(c.endpoint, c.args...)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("start: %v", err)
			case c.wantErr != "" && err == nil:
				t.Fatalf("started, want an error with %q", c.wantErr)
			case c.wantErr != "" && !strings.Contains(err.Error(), c.wantErr):
				t.Fatalf("error %q lacks %q", err, c.wantErr)
			}
		})
	}
}

package datastore

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/harikube/harikube/pkg/pglocal"
)

// testCA issues certificates for the TLS test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a certificate and key in PEM for cn, valid for 127.0.0.1.
func (ca *testCA) issue(t *testing.T, cn string, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func writeFile(t *testing.T, dir, name string, content []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Kine's --ca-file, --cert-file, --key-file and --skip-verify reach a
// PostgreSQL that accepts only TLS connections with a client certificate of
// its CA (pg_hba "hostssl … cert"), as Kine's own driver passes them.
func TestPostgresTLS(t *testing.T) {
	if err := pglocal.Available(); errors.Is(err, pglocal.ErrNotInstalled) {
		t.Skipf("%v; skipping PostgreSQL tests", err)
	}
	ca := newTestCA(t, "harikube test CA")
	serverCert, serverKey := ca.issue(t, "127.0.0.1", x509.ExtKeyUsageServerAuth)
	port := freePort(t)
	pg, err := pglocal.StartWith("", pglocal.Config{
		Settings: []string{"listen_addresses=127.0.0.1", fmt.Sprintf("port=%d", port), "ssl=on",
			"ssl_cert_file=server.crt", "ssl_key_file=server.key", "ssl_ca_file=ca.crt"},
		// Over TCP only TLS with a client certificate; the local socket
		// (used to create nothing here) stays trusted.
		HBA:   "local all all trust\nhostssl all all 127.0.0.1/32 cert\n",
		Files: map[string][]byte{"server.crt": serverCert, "server.key": serverKey, "ca.crt": ca.pem},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })

	dir := t.TempDir()
	caFile := writeFile(t, dir, "ca.crt", ca.pem)
	clientCert, clientKey := ca.issue(t, "postgres", x509.ExtKeyUsageClientAuth)
	certFile := writeFile(t, dir, "client.crt", clientCert)
	keyFile := writeFile(t, dir, "client.key", clientKey)
	otherCA := newTestCA(t, "another CA")
	otherCAFile := writeFile(t, dir, "other-ca.crt", otherCA.pem)
	endpoint := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/tls", port)

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
		{"CA, certificate and key files", endpoint, []string{"--ca-file=" + caFile, "--cert-file=" + certFile, "--key-file=" + keyFile}, ""},
		{"no TLS flags", endpoint, nil, "connection requires a valid client certificate"},
		{"a CA that did not sign the server", endpoint, []string{"--ca-file=" + otherCAFile, "--cert-file=" + certFile, "--key-file=" + keyFile}, "certificate signed by unknown authority"},
		{"server name not in its certificate", strings.Replace(endpoint, "127.0.0.1", "localhost", 1), []string{"--ca-file=" + caFile, "--cert-file=" + certFile, "--key-file=" + keyFile}, "wanted to match localhost"},
		{"skip-verify with a CA that did not sign the server", endpoint, []string{"--ca-file=" + otherCAFile, "--cert-file=" + certFile, "--key-file=" + keyFile, "--skip-verify"}, ""},
		{"the URL's own sslmode wins", endpoint + "?sslmode=disable", []string{"--ca-file=" + caFile, "--cert-file=" + certFile, "--key-file=" + keyFile}, "no encryption"},
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

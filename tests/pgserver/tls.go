package pgserver

import (
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
	"testing"
	"time"

	"github.com/harikube/harikube/pkg/pglocal"
)

// TLSServer is a private PostgreSQL on 127.0.0.1 that accepts TCP
// connections only over TLS with a client certificate of its CA (pg_hba
// "hostssl … cert"), and the files a client needs for it.
type TLSServer struct {
	*pglocal.Server
	Port int
	// CAFile signed the server's certificate and the client's.
	CAFile string
	// CertFile and KeyFile are a client certificate for the user postgres.
	CertFile, KeyFile string
	// OtherCAFile is a CA that signed neither.
	OtherCAFile string
}

// Endpoint is a postgres:// endpoint of database on the server over TCP,
// without TLS parameters.
func (s *TLSServer) Endpoint(database string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s", s.Port, database)
}

// StartTLS runs a TLSServer until the test ends; it skips as Start does.
func StartTLS(t testing.TB) *TLSServer {
	t.Helper()
	ca := newTestCA(t, "harikube test CA")
	serverCert, serverKey := ca.issue(t, "127.0.0.1", x509.ExtKeyUsageServerAuth)
	port := freePort(t)
	pg, err := pglocal.StartWith("", pglocal.Config{
		Settings: []string{"listen_addresses=127.0.0.1", fmt.Sprintf("port=%d", port), "ssl=on",
			"ssl_cert_file=server.crt", "ssl_key_file=server.key", "ssl_ca_file=ca.crt"},
		// Over TCP only TLS with a client certificate; the local socket
		// stays trusted, for a test to look at the server from inside.
		HBA:   "local all all trust\nhostssl all all 127.0.0.1/32 cert\n",
		Files: map[string][]byte{"server.crt": serverCert, "server.key": serverKey, "ca.crt": ca.pem},
	})
	if errors.Is(err, pglocal.ErrNotInstalled) {
		t.Skipf("%v; skipping PostgreSQL tests", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.Stop(); err != nil {
			t.Logf("stop PostgreSQL: %v", err)
		}
	})

	dir := t.TempDir()
	// The user name is the certificate's common name (auth method cert).
	clientCert, clientKey := ca.issue(t, "postgres", x509.ExtKeyUsageClientAuth)
	return &TLSServer{
		Server:      pg,
		Port:        port,
		CAFile:      writeFile(t, dir, "ca.crt", ca.pem),
		CertFile:    writeFile(t, dir, "client.crt", clientCert),
		KeyFile:     writeFile(t, dir, "client.key", clientKey),
		OtherCAFile: writeFile(t, dir, "other-ca.crt", newTestCA(t, "another CA").pem),
	}
}

// testCA issues certificates for the TLS server and its clients.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t testing.TB, name string) *testCA {
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
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a certificate and key in PEM for cn, valid for 127.0.0.1.
func (ca *testCA) issue(t testing.TB, cn string, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
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

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func writeFile(t testing.TB, dir, name string, content []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

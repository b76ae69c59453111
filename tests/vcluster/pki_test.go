package vcluster

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

func insecureTLS() *tls.Config { return &tls.Config{InsecureSkipVerify: true} } //nolint:gosec // like the syncer's own /readyz check up to v0.25

type keyPair struct {
	cert *x509.Certificate
	key  *rsa.PrivateKey
}

// writePKI generates what vCluster's certs.Generate (kubeadm's phases with
// ControlPlaneEndpoint 127.0.0.1:<port>, ClusterName kubernetes) writes into
// /data/pki: ca, its copies server-ca and client-ca, apiserver,
// apiserver-kubelet-client, front-proxy-ca, front-proxy-client, sa.key/sa.pub,
// and admin.conf (kubeadm's super-admin, O=system:masters),
// controller-manager.conf and scheduler.conf. vCluster's port is 6443; the
// tests use a free one so they can run in parallel.
func writePKI(t *testing.T, dir string, port string, serviceIP net.IP) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ca := newCA(t, "kubernetes")
	for _, name := range []string{"ca", "server-ca", "client-ca"} {
		writePair(t, dir, name, ca)
	}
	writePair(t, dir, "apiserver", issue(t, ca, x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		DNSNames:    []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost", "kine", "kine.kine", "kine.kine.svc"},
		IPAddresses: []net.IP{serviceIP, net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}))
	writePair(t, dir, "apiserver-kubelet-client", issue(t, ca, x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"kubeadm:cluster-admins"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}))
	frontProxyCA := newCA(t, "front-proxy-ca")
	writePair(t, dir, "front-proxy-ca", frontProxyCA)
	writePair(t, dir, "front-proxy-client", issue(t, frontProxyCA, x509.Certificate{
		Subject:     pkix.Name{CommonName: "front-proxy-client"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}))

	sa, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, "sa.key"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(sa), 0o600)
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, "sa.pub"), "PUBLIC KEY", pub, 0o644)

	server := "https://127.0.0.1:" + port
	for file, subject := range map[string]pkix.Name{
		"admin.conf":              {CommonName: "kubernetes-super-admin", Organization: []string{"system:masters"}},
		"controller-manager.conf": {CommonName: "system:kube-controller-manager"},
		"scheduler.conf":          {CommonName: "system:kube-scheduler"},
	} {
		client := issue(t, ca, x509.Certificate{Subject: subject, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		writeKubeconfig(t, filepath.Join(dir, file), server, ca, client)
	}
}

func newCA(t *testing.T, cn string) keyPair {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{cert: cert, key: key}
}

func issue(t *testing.T, ca keyPair, tmpl x509.Certificate) keyPair {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial(t)
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(365 * 24 * time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{cert: cert, key: key}
}

func serial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func certPEM(kp keyPair) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: kp.cert.Raw})
}

func keyPEM(kp keyPair) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(kp.key)})
}

func writePair(t *testing.T, dir, name string, kp keyPair) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name+".crt"), certPEM(kp), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".key"), keyPEM(kp), 0o600); err != nil {
		t.Fatal(err)
	}
}

func writePEM(t *testing.T, path, typ string, der []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode); err != nil {
		t.Fatal(err)
	}
}

// writeKubeconfig writes a kubeadm-style kubeconfig with embedded data.
func writeKubeconfig(t *testing.T, path, server string, ca, client keyPair) {
	t.Helper()
	user := client.cert.Subject.CommonName
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubernetes"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: certPEM(ca)}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM(client), ClientKeyData: keyPEM(client)}
	cfg.Contexts[user+"@kubernetes"] = &clientcmdapi.Context{Cluster: "kubernetes", AuthInfo: user}
	cfg.CurrentContext = user + "@kubernetes"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
}

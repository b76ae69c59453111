package pki

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"
)

var serviceIP = net.ParseIP("10.43.0.1")

func testOptions(t *testing.T) Options {
	t.Helper()
	return Options{
		Dir:       filepath.Join(t.TempDir(), "tls"),
		ServiceIP: serviceIP,
	}
}

func mustEnsure(t *testing.T, opts Options) *Bundle {
	t.Helper()
	b, err := Ensure(opts)
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	return b
}

// files maps each Bundle field's path to whether it holds a private key.
func files(b *Bundle) map[string]bool {
	return map[string]bool{
		b.ServerCA: false, b.ServerCAKey: true,
		b.ClientCA: false, b.ClientCAKey: true,
		b.RequestHeaderCA: false, b.RequestHeaderCAKey: true,
		b.ProxyClientCert: false, b.ProxyClientKey: true,
		b.ServingCert: false, b.ServingKey: true,
		b.ServiceAccountKey: true, b.ServiceAccountPub: false,
		b.AdminCert: false, b.AdminKey: true,
		b.ControllerManagerCert: false, b.ControllerManagerKey: true,
	}
}

func readAll(t *testing.T, b *Bundle) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for p := range files(b) {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out[p] = data
	}
	return out
}

func loadCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	certs, err := cert.CertsFromFile(path)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	return certs[0]
}

func pool(t *testing.T, path string) *x509.CertPool {
	t.Helper()
	p, err := cert.NewPool(path)
	if err != nil {
		t.Fatalf("load pool %s: %v", path, err)
	}
	return p
}

func TestEnsureCreatesFilesWithModes(t *testing.T) {
	opts := testOptions(t)
	b := mustEnsure(t, opts)

	fi, err := os.Stat(opts.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o700 {
		t.Errorf("dir mode = %o, want 700", got)
	}
	all := files(b)
	if len(all) != 16 {
		t.Fatalf("bundle has %d distinct paths, want 16", len(all))
	}
	for p, isKey := range all {
		if filepath.Dir(p) != opts.Dir {
			t.Errorf("%s is not inside %s", p, opts.Dir)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Errorf("stat: %v", err)
			continue
		}
		want := certMode
		if isKey {
			want = keyMode
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s mode = %o, want %o", filepath.Base(p), got, want)
		}
	}
	entries, err := os.ReadDir(opts.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 16 {
		t.Errorf("directory holds %d entries, want 16 (temp files left behind?)", len(entries))
	}
}

func TestServingCertificate(t *testing.T) {
	opts := testOptions(t)
	opts.Hostnames = []string{"api.example.com", "192.0.2.7"}
	opts.IPs = []net.IP{net.ParseIP("198.51.100.1")}
	b := mustEnsure(t, opts)

	serving := loadCert(t, b.ServingCert)
	roots := pool(t, b.ServerCA)
	names := []string{
		"localhost", "127.0.0.1", "::1", "kubernetes", "kubernetes.default",
		"kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
		serviceIP.String(), "api.example.com", "192.0.2.7", "198.51.100.1",
	}
	if h, err := os.Hostname(); err == nil {
		names = append(names, h)
	}
	for _, name := range names {
		_, err := serving.Verify(x509.VerifyOptions{
			DNSName:   name,
			Roots:     roots,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		if err != nil {
			t.Errorf("serving cert does not verify for %q: %v", name, err)
		}
	}
	if _, err := serving.Verify(x509.VerifyOptions{DNSName: "localhost", Roots: pool(t, b.ClientCA)}); err == nil {
		t.Error("serving cert verifies against the client CA")
	}
	if serving.NotAfter.Sub(serving.NotBefore) > leafValidity+time.Hour {
		t.Errorf("serving cert valid from %s to %s, want about one year", serving.NotBefore, serving.NotAfter)
	}
	ca := loadCert(t, b.ServerCA)
	if d := ca.NotAfter.Sub(ca.NotBefore); d < caValidity-24*time.Hour {
		t.Errorf("CA valid for %s, want 10 years", d)
	}
}

func TestCustomClusterDomain(t *testing.T) {
	opts := testOptions(t)
	opts.ClusterDomain = "corp.internal."
	b := mustEnsure(t, opts)
	if err := loadCert(t, b.ServingCert).VerifyHostname("kubernetes.default.svc.corp.internal"); err != nil {
		t.Error(err)
	}
}

func TestClientCertificates(t *testing.T) {
	b := mustEnsure(t, testOptions(t))
	cases := []struct {
		cert, ca string
		cn       string
		orgs     []string
	}{
		{b.AdminCert, b.ClientCA, "system:admin", []string{"system:masters"}},
		{b.ControllerManagerCert, b.ClientCA, "system:kube-controller-manager", nil},
		{b.ProxyClientCert, b.RequestHeaderCA, ProxyClientCN, nil},
	}
	for _, c := range cases {
		crt := loadCert(t, c.cert)
		_, err := crt.Verify(x509.VerifyOptions{
			Roots:     pool(t, c.ca),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		})
		if err != nil {
			t.Errorf("%s does not verify against %s: %v", filepath.Base(c.cert), filepath.Base(c.ca), err)
		}
		if crt.Subject.CommonName != c.cn || !slices.Equal(crt.Subject.Organization, c.orgs) {
			t.Errorf("%s subject = %s, want CN=%s O=%v", filepath.Base(c.cert), crt.Subject, c.cn, c.orgs)
		}
		if slices.Contains(crt.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
			t.Errorf("%s can also serve", filepath.Base(c.cert))
		}
	}
}

func TestKeysMatchCertificates(t *testing.T) {
	b := mustEnsure(t, testOptions(t))
	pairs := [][2]string{
		{b.ServerCA, b.ServerCAKey}, {b.ClientCA, b.ClientCAKey},
		{b.RequestHeaderCA, b.RequestHeaderCAKey}, {b.ProxyClientCert, b.ProxyClientKey},
		{b.ServingCert, b.ServingKey}, {b.AdminCert, b.AdminKey},
		{b.ControllerManagerCert, b.ControllerManagerKey},
	}
	for _, p := range pairs {
		key, err := keyutil.PrivateKeyFromFile(p[1])
		if err != nil {
			t.Fatal(err)
		}
		if !publicKeysEqual(loadCert(t, p[0]).PublicKey, key.(crypto.Signer).Public()) {
			t.Errorf("%s does not match %s", p[0], p[1])
		}
	}
}

func TestServiceAccountKeyPair(t *testing.T) {
	b := mustEnsure(t, testOptions(t))
	priv, err := keyutil.PrivateKeyFromFile(b.ServiceAccountKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, ok := priv.(*rsa.PrivateKey)
	if !ok {
		t.Fatalf("service-account key is %T, want RSA", priv)
	}
	if rsaKey.N.BitLen() != serviceAccountKeyBits {
		t.Errorf("service-account key has %d bits", rsaKey.N.BitLen())
	}
	pubs, err := keyutil.PublicKeysFromFile(b.ServiceAccountPub)
	if err != nil {
		t.Fatal(err)
	}
	if len(pubs) != 1 || !rsaKey.PublicKey.Equal(pubs[0]) {
		t.Error("service-account public key does not match private key")
	}
	// The apiserver also accepts the private key file as verification key.
	if pubs, err := keyutil.PublicKeysFromFile(b.ServiceAccountKey); err != nil || len(pubs) != 1 {
		t.Errorf("private key file not usable as --service-account-key-file: %v", err)
	}
}

func TestEnsureReusesFiles(t *testing.T) {
	opts := testOptions(t)
	b := mustEnsure(t, opts)
	before := readAll(t, b)

	b2 := mustEnsure(t, opts)
	if *b2 != *b {
		t.Fatalf("bundle paths changed: %+v vs %+v", b2, b)
	}
	for p, data := range readAll(t, b2) {
		if !bytes.Equal(data, before[p]) {
			t.Errorf("%s changed on second Ensure", filepath.Base(p))
		}
	}
}

func TestNewHostnameRegeneratesOnlyServingCert(t *testing.T) {
	opts := testOptions(t)
	b := mustEnsure(t, opts)
	before := readAll(t, b)

	opts.Hostnames = append(opts.Hostnames, "new.example.com")
	mustEnsure(t, opts)
	for p, data := range readAll(t, b) {
		changed := !bytes.Equal(data, before[p])
		if p == b.ServingCert {
			if !changed {
				t.Error("serving cert was not regenerated")
			}
			continue
		}
		if changed {
			t.Errorf("%s changed, only the serving cert should", filepath.Base(p))
		}
	}
	serving := loadCert(t, b.ServingCert)
	if _, err := serving.Verify(x509.VerifyOptions{DNSName: "new.example.com", Roots: pool(t, b.ServerCA)}); err != nil {
		t.Errorf("regenerated cert does not verify for new name: %v", err)
	}

	// Dropping the name again keeps the (superset) certificate.
	regenerated := readAll(t, b)
	opts.Hostnames = nil
	mustEnsure(t, opts)
	if got, _ := os.ReadFile(b.ServingCert); !bytes.Equal(got, regenerated[b.ServingCert]) {
		t.Error("serving cert regenerated although it still covers every requested name")
	}
}

func TestExpiringLeafIsRenewed(t *testing.T) {
	opts := testOptions(t)
	b := mustEnsure(t, opts)
	now := time.Now()
	ca, err := ensureCA(b.ClientCA, b.ClientCAKey, "unused", now)
	if err != nil {
		t.Fatal(err)
	}
	key, err := keyutil.PrivateKeyFromFile(b.AdminKey)
	if err != nil {
		t.Fatal(err)
	}
	spec := leafSpec{commonName: AdminCN, organization: []string{AdminGroup}, usage: x509.ExtKeyUsageClientAuth}
	// Issued 11 months ago, so it expires in about a month.
	old, err := signLeaf(ca, key.(crypto.Signer).Public(), spec, now.Add(-335*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFileAtomic(b.AdminCert, old, certMode); err != nil {
		t.Fatal(err)
	}
	caBefore, _ := os.ReadFile(b.ClientCA)

	mustEnsure(t, opts)
	renewed := loadCert(t, b.AdminCert)
	if renewed.NotAfter.Before(now.Add(300 * 24 * time.Hour)) {
		t.Errorf("admin cert not renewed, expires %s", renewed.NotAfter)
	}
	if caAfter, _ := os.ReadFile(b.ClientCA); !bytes.Equal(caBefore, caAfter) {
		t.Error("client CA changed during leaf renewal")
	}
}

func TestLeafSignedByOtherCAIsReplaced(t *testing.T) {
	opts := testOptions(t)
	b := mustEnsure(t, opts)
	// Swap in a certificate from another bundle: same shape, wrong issuer.
	other := mustEnsure(t, testOptions(t))
	for _, p := range [][2]string{{other.AdminCert, b.AdminCert}, {other.AdminKey, b.AdminKey}} {
		data, err := os.ReadFile(p[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p[1], data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mustEnsure(t, opts)
	if _, err := loadCert(t, b.AdminCert).Verify(x509.VerifyOptions{
		Roots:     pool(t, b.ClientCA),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		t.Errorf("foreign admin cert was kept: %v", err)
	}
}

func TestLooseKeyModeIsRestricted(t *testing.T) {
	opts := testOptions(t)
	b := mustEnsure(t, opts)
	if err := os.Chmod(b.ServerCAKey, 0o644); err != nil {
		t.Fatal(err)
	}
	mustEnsure(t, opts)
	fi, err := os.Stat(b.ServerCAKey)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("CA key mode = %o after Ensure, want 600", got)
	}
}

func TestMissingCAKeyIsAnError(t *testing.T) {
	opts := testOptions(t)
	b := mustEnsure(t, opts)
	caCert, _ := os.ReadFile(b.ServerCA)
	if err := os.Remove(b.ServerCAKey); err != nil {
		t.Fatal(err)
	}
	_, err := Ensure(opts)
	if err == nil || !strings.Contains(err.Error(), b.ServerCAKey) {
		t.Fatalf("Ensure error = %v, want one naming %s", err, b.ServerCAKey)
	}
	if got, _ := os.ReadFile(b.ServerCA); !bytes.Equal(got, caCert) {
		t.Error("CA certificate was replaced")
	}
}

func TestUnwritableDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(file, "tls")
	_, err := Ensure(Options{Dir: dir})
	if err == nil {
		t.Fatal("Ensure succeeded below a regular file")
	}
	if !strings.Contains(err.Error(), dir) || !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("error %q should name %s and wrap ENOTDIR", err, dir)
	}

	if os.Geteuid() == 0 {
		return // root ignores permission bits
	}
	ro := filepath.Join(t.TempDir(), "ro")
	if err := os.Mkdir(ro, 0o500); err != nil {
		t.Fatal(err)
	}
	_, err = Ensure(Options{Dir: ro})
	if err == nil || !strings.Contains(err.Error(), ro) || !errors.Is(err, fs.ErrPermission) {
		t.Errorf("error %v should name %s and wrap a permission error", err, ro)
	}
}

func TestEmptyDir(t *testing.T) {
	if _, err := Ensure(Options{}); err == nil {
		t.Error("Ensure without Dir succeeded")
	}
}

func TestWriteKubeconfig(t *testing.T) {
	b := mustEnsure(t, testOptions(t))
	path := filepath.Join(t.TempDir(), "admin.kubeconfig")
	for range 2 { // the second write replaces the first
		if err := WriteKubeconfig(path, "https://127.0.0.1:6443", b.ServerCA, b.AdminCert, b.AdminKey, "admin"); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("kubeconfig mode = %o, want 600", got)
	}
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CurrentContext != "default" {
		t.Errorf("current context = %q", cfg.CurrentContext)
	}
	ctx := cfg.Contexts["default"]
	if ctx == nil || ctx.Cluster != "default" || ctx.AuthInfo != "admin" {
		t.Fatalf("context = %+v", ctx)
	}
	cluster := cfg.Clusters["default"]
	if cluster == nil || cluster.Server != "https://127.0.0.1:6443" {
		t.Fatalf("cluster = %+v", cluster)
	}
	want := readAll(t, b)
	if !bytes.Equal(cluster.CertificateAuthorityData, want[b.ServerCA]) {
		t.Error("CA data not embedded")
	}
	auth := cfg.AuthInfos["admin"]
	if auth == nil || !bytes.Equal(auth.ClientCertificateData, want[b.AdminCert]) || !bytes.Equal(auth.ClientKeyData, want[b.AdminKey]) {
		t.Error("client cert/key not embedded")
	}
	// The file must be usable as a client configuration as it stands.
	if _, err := clientcmd.NewDefaultClientConfig(*cfg, nil).ClientConfig(); err != nil {
		t.Errorf("kubeconfig not usable: %v", err)
	}

	err = WriteKubeconfig(path, "https://x", filepath.Join(t.TempDir(), "missing.crt"), b.AdminCert, b.AdminKey, "")
	if err == nil || !strings.Contains(err.Error(), "missing.crt") {
		t.Errorf("error %v should name the missing CA file", err)
	}
}

// Package security tests harikube's security defaults against the real
// binary: who may reach what without credentials, RBAC for users and
// service accounts, private files, no datastore port on the network, no
// secrets in the log, and Secrets encrypted at rest next to selector
// pushdown.
package security

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"
	_ "modernc.org/sqlite" // read the database read-only

	"github.com/harikube/harikube/pkg/datastore"
	"github.com/harikube/harikube/tests/testserver"
)

// TestSecurityDefaults runs the checks of harikube's defaults against one
// server started without security flags.
func TestSecurityDefaults(t *testing.T) {
	t.Parallel()
	// A data directory harikube creates itself (an existing one keeps
	// its mode).
	s := testserver.Start(t, "--data-dir", filepath.Join(t.TempDir(), "data"))
	t.Run("Anonymous", func(t *testing.T) { testAnonymous(t, s) })
	t.Run("RBACImpersonation", func(t *testing.T) { testImpersonation(t, s) })
	t.Run("RBACClientCertificate", func(t *testing.T) { testClientCertificate(t, s) })
	t.Run("ServiceAccountTokens", func(t *testing.T) { testServiceAccountTokens(t, s) })
	t.Run("PrivateFiles", func(t *testing.T) { testPrivateFiles(t, s.DataDir, false) })
	t.Run("NoDatastoreListener", func(t *testing.T) { testListeners(t, s) })
	t.Run("NoSecretsInLog", func(t *testing.T) { testNoSecretsInLog(t, s) })
}

func anonymousGet(t *testing.T, s *testserver.Server, method, path string) (int, string) {
	t.Helper()
	hc, err := rest.HTTPClientFor(rest.AnonymousClientConfig(s.Config))
	if err != nil {
		t.Fatal(err)
	}
	hc.Timeout = 20 * time.Second
	req, err := http.NewRequest(method, s.Config.Host+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(body)
}

// testAnonymous: without credentials only /healthz, /livez, /readyz and
// /version answer; everything else is 401 (403 would do too).
func testAnonymous(t *testing.T, s *testserver.Server) {
	for _, p := range []string{"/healthz", "/livez", "/readyz", "/version"} {
		code, body := anonymousGet(t, s, "GET", p)
		if code != http.StatusOK {
			t.Errorf("anonymous GET %s: %d %.200s, want 200", p, code, body)
		}
		if p != "/version" && body != "ok" {
			t.Errorf("anonymous GET %s: %q, want ok", p, body)
		}
		if p == "/version" && !strings.Contains(body, `"gitVersion"`) {
			t.Errorf("anonymous GET /version: %.200s", body)
		}
	}
	denied := []struct{ method, path string }{
		{"GET", "/"}, {"GET", "/api"}, {"GET", "/api/v1"}, {"GET", "/apis"}, {"GET", "/api/v1/namespaces"},
		{"GET", "/api/v1/secrets"}, {"GET", "/api/v1/namespaces/kube-system/secrets"}, {"GET", "/api/v1/nodes"},
		{"GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles"}, {"GET", "/metrics"}, {"GET", "/openapi/v2"},
		{"GET", "/openapi/v3"}, {"GET", "/logs/"}, {"GET", "/debug/pprof/"}, {"GET", "/configz"},
		{"GET", "/.well-known/openid-configuration"}, {"GET", "/openid/v1/jwks"},
		{"GET", "/healthz/etcd"}, {"GET", "/livez/ping"}, {"GET", "/readyz/etcd"}, {"GET", "/healthz/../api/v1/secrets"},
		{"GET", "/api/v1/namespaces?watch=true"}, {"POST", "/api/v1/namespaces"}, {"DELETE", "/api/v1/namespaces/default"},
		{"POST", "/healthz"}, {"PUT", "/version"},
	}
	for _, d := range denied {
		code, body := anonymousGet(t, s, d.method, d.path)
		if code != http.StatusUnauthorized && code != http.StatusForbidden {
			t.Errorf("anonymous %s %s: %d %.200s, want 401 or 403", d.method, d.path, code, body)
		}
	}
}

// testImpersonation: a user without RBAC rights, by impersonation.
func testImpersonation(t *testing.T, s *testserver.Server) {
	cfg := rest.CopyConfig(s.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "mallory", Groups: []string{"outsiders"}}
	c := kubernetes.NewForConfigOrDie(cfg)
	denyAll(t, c, "mallory")
}

// denyAll checks that a user without rights can read or write nothing.
func denyAll(t *testing.T, c kubernetes.Interface, user string) {
	t.Helper()
	ctx := context.Background()
	checks := map[string]error{}
	_, checks["list namespaces"] = c.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	_, checks["list secrets in kube-system"] = c.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
	_, checks["get configmap default/kube-root-ca.crt"] = c.CoreV1().ConfigMaps("default").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
	_, checks["create configmap"] = c.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "nope"}}, metav1.CreateOptions{})
	checks["delete namespace default"] = c.CoreV1().Namespaces().Delete(ctx, "default", metav1.DeleteOptions{})
	_, checks["list clusterrolebindings"] = c.RbacV1().ClusterRoleBindings().List(ctx, metav1.ListOptions{})
	_, checks["create clusterrolebinding"] = c.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "escalate"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects:   []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: user}},
	}, metav1.CreateOptions{})
	for what, err := range checks {
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), fmt.Sprintf("User %q", user)) {
			t.Errorf("%s as %s: %v, want 403 Forbidden for User %q", what, user, err, user)
		}
	}
}

// testClientCertificate: a client certificate signed by the cluster's
// client CA authenticates its CN and O; RBAC then decides. A certificate
// from another CA is not accepted.
func testClientCertificate(t *testing.T, s *testserver.Server) {
	ctx := context.Background()
	tlsDir := filepath.Join(s.DataDir, "tls")
	caCert, caKey := loadCA(t, filepath.Join(tlsDir, "client-ca.crt"), filepath.Join(tlsDir, "client-ca.key"))
	certPEM, keyPEM := issueClientCert(t, caCert, caKey, "eve", "dev-team")
	cfg := rest.AnonymousClientConfig(s.Config)
	cfg.CertData, cfg.KeyData = certPEM, keyPEM
	eve := kubernetes.NewForConfigOrDie(cfg)

	review, err := eve.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("who am I as eve: %v", err)
	}
	if u := review.Status.UserInfo; u.Username != "eve" || !contains(u.Groups, "dev-team") || !contains(u.Groups, "system:authenticated") {
		t.Errorf("eve's certificate authenticates as %+v", u)
	}
	denyAll(t, eve, "eve")

	// Granted: list ConfigMaps in one namespace, nothing else.
	ns := "cert-rbac"
	if _, err := s.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	grant(t, s, ns, "configmap-reader", rbacv1.Subject{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: "eve"})
	pollAllowed(t, "eve lists configmaps in "+ns, func(ctx context.Context) error {
		_, err := eve.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
		return err
	})
	_, err = eve.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
	forbidden(t, "eve creates a configmap (only get/list granted)", err)
	_, err = eve.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
	forbidden(t, "eve lists secrets in "+ns, err)
	_, err = eve.CoreV1().ConfigMaps("default").List(ctx, metav1.ListOptions{})
	forbidden(t, "eve lists configmaps in default", err)

	// Another CA's certificate for a privileged name is not accepted.
	otherCA, otherKey := newCA(t)
	certPEM, keyPEM = issueClientCert(t, otherCA, otherKey, "admin", "system:masters")
	cfg = rest.AnonymousClientConfig(s.Config)
	cfg.CertData, cfg.KeyData = certPEM, keyPEM
	_, err = kubernetes.NewForConfigOrDie(cfg).CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if !apierrors.IsUnauthorized(err) {
		t.Errorf("system:masters certificate from a foreign CA: %v, want 401 Unauthorized", err)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func forbidden(t *testing.T, what string, err error) {
	t.Helper()
	if !apierrors.IsForbidden(err) {
		t.Errorf("%s: %v, want 403 Forbidden", what, err)
	}
}

// grant gives subject get and list on ConfigMaps in ns.
func grant(t *testing.T, s *testserver.Server, ns, name string, subject rbacv1.Subject) {
	t.Helper()
	ctx := context.Background()
	if _, err := s.Client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{subject},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// pollAllowed waits until call succeeds: RBAC changes reach the authorizer
// through an informer.
func pollAllowed(t *testing.T, what string, call func(ctx context.Context) error) {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		last = call(ctx)
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("%s: still %v", what, last)
	}
}

func loadCA(t *testing.T, certPath, keyPath string) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	certs, err := certutil.CertsFromFile(certPath)
	if err != nil {
		t.Fatal(err)
	}
	key, err := keyutil.PrivateKeyFromFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		t.Fatalf("%s: %T is not a signer", keyPath, key)
	}
	return certs[0], signer
}

func newCA(t *testing.T) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "foreign-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func issueClientCert(t *testing.T, ca *x509.Certificate, caKey crypto.Signer, cn, org string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn, Organization: []string{org}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

// testServiceAccountTokens: a TokenRequest token authenticates the service
// account; RBAC allows what a RoleBinding grants and nothing more; a
// tampered token and a token of a deleted account are refused.
func testServiceAccountTokens(t *testing.T, s *testserver.Server) {
	ctx := context.Background()
	ns := "sa-tokens"
	if _, err := s.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "bot"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "readable"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	grant(t, s, ns, "bot-reader", rbacv1.Subject{Kind: "ServiceAccount", Name: "bot", Namespace: ns})
	exp := int64(600)
	tr, err := s.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "bot", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest: %v", err)
	}
	bearer := func(token string) kubernetes.Interface {
		cfg := rest.AnonymousClientConfig(s.Config)
		cfg.BearerToken = token
		return kubernetes.NewForConfigOrDie(cfg)
	}
	bot := bearer(tr.Status.Token)
	review, err := bot.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil || review.Status.UserInfo.Username != "system:serviceaccount:"+ns+":bot" {
		t.Fatalf("who am I with the token: %+v %v", review, err)
	}
	pollAllowed(t, "the token lists configmaps in "+ns, func(ctx context.Context) error {
		_, err := bot.CoreV1().ConfigMaps(ns).Get(ctx, "readable", metav1.GetOptions{})
		return err
	})
	_, err = bot.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
	forbidden(t, "the token creates a configmap", err)
	_, err = bot.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
	forbidden(t, "the token lists secrets", err)
	_, err = bot.CoreV1().ConfigMaps("kube-system").List(ctx, metav1.ListOptions{})
	forbidden(t, "the token lists configmaps in kube-system", err)

	// A tampered signature is refused.
	parts := strings.Split(tr.Status.Token, ".")
	sig := []byte(parts[2])
	sig[len(sig)/2] ^= 1
	tampered := parts[0] + "." + parts[1] + "." + string(sig)
	_, err = bearer(tampered).CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
	if !apierrors.IsUnauthorized(err) {
		t.Errorf("tampered token: %v, want 401", err)
	}
	// The token is bound to the account: deleting it ends the token.
	if err := s.Client.CoreV1().ServiceAccounts(ns).Delete(ctx, "bot", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := bot.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
		return apierrors.IsUnauthorized(err), nil
	})
	if err != nil {
		t.Errorf("token of a deleted service account still accepted")
	}
}

// testPrivateFiles: the socket, the database with its -wal and -shm, every
// private key, kubeconfig and credential file are 0600, their directories
// 0700.
func testPrivateFiles(t *testing.T, dataDir string, encryption bool) {
	check := func(path string, want os.FileMode) {
		t.Helper()
		fi, err := os.Lstat(path)
		if err != nil {
			t.Errorf("%v", err)
			return
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %o, want %o", path, fi.Mode().Perm(), want)
		}
	}
	sock := datastore.SocketPath(dataDir)
	if fi, err := os.Lstat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("%s is not a socket: %v", sock, err)
	}
	check(sock, 0o600)
	db := datastore.DatabasePath(dataDir)
	for _, f := range []string{db, db + "-wal", db + "-shm"} {
		check(f, 0o600)
	}
	check(filepath.Join(dataDir, "kubeconfig.yaml"), 0o600)
	for _, pattern := range []string{"tls/*.key", "cred/*"} {
		files, _ := filepath.Glob(filepath.Join(dataDir, pattern))
		if len(files) == 0 {
			t.Errorf("nothing matches %s in %s", pattern, dataDir)
		}
		for _, f := range files {
			check(f, 0o600)
		}
	}
	if encryption {
		check(filepath.Join(dataDir, "cred", "encryption-config.yaml"), 0o600)
	}
	check(dataDir, 0o700)
	for _, dir := range []string{"db", "tls", "cred"} {
		check(filepath.Join(dataDir, dir), 0o700)
	}
	// Private keys are only where they belong: nothing world-readable
	// anywhere in the data directory holds one.
	filepath.Walk(dataDir, func(path string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o077 == 0 {
			return nil
		}
		if b, err := os.ReadFile(path); err == nil && privateKeyPEM.Match(b) {
			t.Errorf("%s holds a private key with mode %o", path, fi.Mode().Perm())
		}
		return nil
	})
}

var privateKeyPEM = regexp.MustCompile(`BEGIN [A-Z ]*PRIVATE KEY`)

// testListeners: the server process listens on TCP on the apiserver's port
// only (no etcd API on 2379 or anywhere else), and on the Kine socket.
func testListeners(t *testing.T, s *testserver.Server) {
	pidText, err := os.ReadFile(filepath.Join(s.DataDir, "harikube.lock"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(pidText)))
	if err != nil {
		t.Fatalf("pid in harikube.lock: %q", pidText)
	}
	inodes := socketInodes(t, pid)
	if len(inodes) == 0 {
		t.Fatalf("no sockets found for pid %d", pid)
	}
	var tcpPorts []int
	for _, table := range []string{"tcp", "tcp6"} {
		for _, e := range procNet(t, table) {
			if e.state == "0A" && inodes[e.inode] { // LISTEN
				tcpPorts = append(tcpPorts, e.port)
			}
		}
	}
	for _, table := range []string{"udp", "udp6"} {
		for _, e := range procNet(t, table) {
			if inodes[e.inode] {
				t.Errorf("the server has a UDP socket on port %d", e.port)
			}
		}
	}
	sort.Ints(tcpPorts)
	if fmt.Sprint(tcpPorts) != fmt.Sprint([]int{s.Port}) {
		t.Errorf("TCP ports the server listens on: %v, want only the apiserver's %d", tcpPorts, s.Port)
	}
	// Unix sockets it listens on: the Kine socket only.
	var unixPaths []string
	for _, e := range procNetUnix(t) {
		if inodes[e.inode] && e.listening {
			unixPaths = append(unixPaths, e.path)
		}
	}
	if fmt.Sprint(unixPaths) != fmt.Sprint([]string{datastore.SocketPath(s.DataDir)}) {
		t.Errorf("unix sockets the server listens on: %q, want only %s", unixPaths, datastore.SocketPath(s.DataDir))
	}
	// And the etcd port is not served on the loopback address.
	if c, err := net.DialTimeout("tcp", "127.0.0.1:2379", time.Second); err == nil {
		c.Close()
		if contains(strings.Fields(fmt.Sprint(tcpPorts)), "2379") {
			t.Errorf("127.0.0.1:2379 accepts connections from the server")
		} else {
			t.Logf("127.0.0.1:2379 accepts connections, but not from the server's process (another program)")
		}
	}
	t.Logf("server pid %d: TCP listeners %v, unix listeners %q", pid, tcpPorts, unixPaths)
}

func socketInodes(t *testing.T, pid int) map[string]bool {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Skipf("cannot read the server's file descriptors: %v", err)
	}
	out := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			out[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	return out
}

type netEntry struct {
	port         int
	state, inode string
}

func procNet(t *testing.T, table string) []netEntry {
	t.Helper()
	f, err := os.Open("/proc/net/" + table)
	if err != nil {
		return nil // no IPv6, for example
	}
	defer f.Close()
	var out []netEntry
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		_, portHex, _ := strings.Cut(fields[1], ":")
		port, _ := strconv.ParseInt(portHex, 16, 32)
		out = append(out, netEntry{port: int(port), state: fields[3], inode: fields[9]})
	}
	return out
}

type unixEntry struct {
	inode, path string
	listening   bool
}

func procNetUnix(t *testing.T) []unixEntry {
	t.Helper()
	f, err := os.Open("/proc/net/unix")
	if err != nil {
		t.Skipf("cannot read /proc/net/unix: %v", err)
	}
	defer f.Close()
	var out []unixEntry
	sc := bufio.NewScanner(f)
	sc.Scan()
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 7 {
			continue
		}
		flags, _ := strconv.ParseUint(fields[3], 16, 32)
		e := unixEntry{inode: fields[6], listening: flags&0x10000 != 0} // __SO_ACCEPTCON
		if len(fields) > 7 {
			e.path = fields[7]
		}
		out = append(out, e)
	}
	return out
}

// testNoSecretsInLog: at the default log level the server's log holds no
// Secret value (plain or base64), no service-account token and no PEM
// private key, after a Secret was created, read, updated and listed.
func testNoSecretsInLog(t *testing.T, s *testserver.Server) {
	ctx := context.Background()
	canary := "harikube-canary-" + randomHex(t, 12)
	sec, err := s.Client.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "canary"},
		StringData: map[string]string{"password": canary},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sec.Data["password"] = []byte(canary + "-2")
	if _, err := s.Client.CoreV1().Secrets("default").Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client.CoreV1().Secrets("default").List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	// A bad write that the server may log, carrying the value.
	_, _ = s.Client.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "Invalid_Name"},
		StringData: map[string]string{"password": canary},
	}, metav1.CreateOptions{})
	tr, err := s.Client.CoreV1().ServiceAccounts("default").CreateToken(ctx, "default", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		// The default service account may not exist yet.
		if _, err2 := s.Client.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "logcheck"}}, metav1.CreateOptions{}); err2 != nil {
			t.Fatal(err2)
		}
		if tr, err = s.Client.CoreV1().ServiceAccounts("default").CreateToken(ctx, "logcheck", &authenticationv1.TokenRequest{}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * time.Second) // let the log catch up
	log, err := os.ReadFile(s.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	for what, needle := range map[string]string{
		"the Secret value":            canary,
		"the Secret value in base64":  base64.StdEncoding.EncodeToString([]byte(canary)),
		"the updated value in base64": base64.StdEncoding.EncodeToString([]byte(canary + "-2")),
		"a service-account token":     tr.Status.Token,
	} {
		if bytes.Contains(log, []byte(needle)) {
			t.Errorf("the server log (%s) contains %s", s.LogPath, what)
		}
	}
	if loc := privateKeyPEM.FindIndex(log); loc != nil {
		t.Errorf("the server log contains a private key: %q", log[max(0, loc[0]-80):min(len(log), loc[1]+80)])
	}
	t.Logf("checked %d KiB of log", len(log)/1024)
}

func randomHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// TestSecretsEncryptionWithPushdown: with --secrets-encryption, Secrets are
// stored as secretbox ciphertext (no plaintext anywhere in the database
// files), read back in plaintext, and label-selector lists — served by the
// datastore, not the watch cache — return exactly the matching Secrets.
func TestSecretsEncryptionWithPushdown(t *testing.T) {
	t.Parallel()
	s := testserver.Start(t, "--data-dir", filepath.Join(t.TempDir(), "data"), "--secrets-encryption", "--kube-apiserver-arg=watch-cache-sizes=secrets#0")
	ctx := context.Background()
	ns := "enc"
	if _, err := s.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	canary := "enc-canary-" + randomHex(t, 12)
	tiers := []string{"gold", "silver", "bronze"}
	values := map[string]string{}
	for i := 0; i < 30; i++ {
		name := fmt.Sprintf("s%02d", i)
		lbls := map[string]string{"tier": tiers[i%3], "idx": strconv.Itoa(i)}
		if i%4 == 0 {
			delete(lbls, "tier")
		}
		values[name] = fmt.Sprintf("%s-%02d", canary, i)
		if _, err := s.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls},
			StringData: map[string]string{"v": values[name]},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for name, v := range values {
		got, err := s.Client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil || string(got.Data["v"]) != v {
			t.Fatalf("GET %s: %q %v, want %q", name, got.Data["v"], err, v)
		}
	}

	// Selector lists against the predicate, through the datastore.
	full, err := s.Client.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before := s.Metric(t, "harikube_datastore_selection_requests_total", `resource="secrets"`)
	selectors := []string{"tier=gold", "tier!=gold", "tier in (silver,bronze)", "!tier", "tier", "idx>20", "idx<5,tier=silver", "tier notin (gold),idx>10"}
	for _, selector := range selectors {
		sel, _ := labels.Parse(selector)
		got, err := s.Client.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			t.Fatalf("list %q: %v", selector, err)
		}
		want, have := map[string]bool{}, map[string]bool{}
		for _, it := range full.Items {
			if sel.Matches(labels.Set(it.Labels)) {
				want[it.Name] = true
			}
		}
		for _, it := range got.Items {
			have[it.Name] = true
			if string(it.Data["v"]) != values[it.Name] {
				t.Errorf("list %q: %s holds %q", selector, it.Name, it.Data["v"])
			}
		}
		if !maps.Equal(want, have) || len(want) == 0 {
			t.Errorf("list %q: %v, the predicate gives %v", selector, keys(have), keys(want))
		}
	}
	if pushed := s.Metric(t, "harikube_datastore_selection_requests_total", `resource="secrets"`) - before; pushed < float64(len(selectors)) {
		t.Errorf("harikube_datastore_selection_requests_total{resource=\"secrets\"} rose by %v for %d selector lists", pushed, len(selectors))
	}

	// The stored values, read-only from the running server's database.
	db, err := sql.Open("sqlite", "file://"+datastore.DatabasePath(s.DataDir)+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query("SELECT k.name, k.value FROM kine AS k WHERE k.name LIKE '/registry/secrets/" + ns + "/%' AND k.deleted = 0 AND k.id = (SELECT MAX(id) FROM kine WHERE name = k.name)")
	if err != nil {
		t.Fatal(err)
	}
	stored := 0
	for rows.Next() {
		var name string
		var value []byte
		if err := rows.Scan(&name, &value); err != nil {
			t.Fatal(err)
		}
		stored++
		if !bytes.HasPrefix(value, []byte("k8s:enc:secretbox:v1:")) {
			t.Errorf("%s is stored as %q..., not secretbox ciphertext", name, value[:min(len(value), 24)])
		}
	}
	rows.Close()
	if stored != len(values) {
		t.Errorf("%d secrets in the database, want %d", stored, len(values))
	}
	// No plaintext anywhere in the files, index tables included.
	for _, f := range []string{"", "-wal"} {
		b, err := os.ReadFile(datastore.DatabasePath(s.DataDir) + f)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(canary)) || bytes.Contains(b, []byte(base64.StdEncoding.EncodeToString([]byte(canary))[:16])) {
			t.Errorf("state.db%s holds a Secret value in plaintext", f)
		}
	}
	testPrivateFiles(t, s.DataDir, true)
	t.Logf("%d secrets stored as secretbox ciphertext; %d selector lists exact through the datastore", stored, len(selectors))
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

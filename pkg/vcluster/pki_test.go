package vcluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

func TestLoadPKIIncomplete(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ServerCACert), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadPKI(dir)
	if err == nil {
		t.Fatal("want an error for an incomplete directory")
	}
	for _, name := range []string{AdminConf, FrontProxyClientCert, ServiceAccountKey} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error does not name %s: %v", name, err)
		}
	}
	if strings.Contains(err.Error(), ServerCACert+":") {
		t.Errorf("error names a file that exists: %v", err)
	}
}

func TestRewriteKubeconfig(t *testing.T) {
	dir := t.TempDir()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubernetes"] = &clientcmdapi.Cluster{Server: "https://127.0.0.1:6443", CertificateAuthority: "ca.crt"}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificate: "admin.crt", ClientKey: "admin.key"}
	cfg.Contexts["admin@kubernetes"] = &clientcmdapi.Context{Cluster: "kubernetes", AuthInfo: "admin"}
	cfg.CurrentContext = "admin@kubernetes"
	src := filepath.Join(dir, "admin.conf")
	if err := clientcmd.WriteToFile(*cfg, src); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "out", "kubeconfig.yaml")
	if err := RewriteKubeconfig(src, dst, "https://127.0.0.1:7443"); err != nil {
		t.Fatal(err)
	}
	got, err := clientcmd.LoadFromFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if s := got.Clusters["kubernetes"].Server; s != "https://127.0.0.1:7443" {
		t.Errorf("server %q", s)
	}
	if ca := got.Clusters["kubernetes"].CertificateAuthority; ca != filepath.Join(dir, "ca.crt") {
		t.Errorf("relative CA path not resolved against the source: %q", ca)
	}
	if fi, err := os.Stat(dst); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode: %v %v", fi.Mode(), err)
	}
}

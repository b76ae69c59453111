// Package vcluster is what harikube needs to run as the control plane of a
// vCluster ("k8s" distro): reading the kubeadm-style PKI directory the
// vCluster syncer generates (/data/pki), so that `harikube server
// --pki-dir=/data/pki` serves with the certificates and kubeconfigs the
// syncer already trusts instead of generating its own.
package vcluster

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/harikube/harikube/pkg/pki"
)

// File names of the kubeadm layout vCluster writes into /data/pki.
const (
	ServerCACert          = "server-ca.crt"
	ServerCAKey           = "server-ca.key"
	ClientCACert          = "client-ca.crt"
	ClientCAKey           = "client-ca.key"
	FrontProxyCACert      = "front-proxy-ca.crt"
	FrontProxyClientCert  = "front-proxy-client.crt"
	FrontProxyClientKey   = "front-proxy-client.key"
	APIServerCert         = "apiserver.crt"
	APIServerKey          = "apiserver.key"
	ServiceAccountKey     = "sa.key"
	ServiceAccountPub     = "sa.pub"
	AdminConf             = "admin.conf"
	ControllerManagerConf = "controller-manager.conf"
)

// PKI is an existing PKI directory in vCluster's layout.
type PKI struct {
	// Bundle names the files in harikube's terms. The admin and
	// controller-manager client certificates are not separate files in this
	// layout (they live inside the kubeconfigs), so those fields are empty.
	Bundle *pki.Bundle
	// ProxyClientCN is the common name of front-proxy-client.crt, which the
	// apiserver must accept as --requestheader-allowed-names
	// ("front-proxy-client" in vCluster).
	ProxyClientCN string
	// AdminKubeconfig (admin.conf, a system:masters client) and
	// ControllerManagerKubeconfig (controller-manager.conf).
	AdminKubeconfig, ControllerManagerKubeconfig string
}

// LoadPKI checks that dir holds every file harikube server needs and returns
// their paths. It never writes to dir: the syncer owns it.
func LoadPKI(dir string) (*PKI, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("PKI directory %s: %w", dir, err)
	}
	p := func(name string) string { return filepath.Join(abs, name) }
	var missing []error
	for _, name := range []string{ServerCACert, ServerCAKey, ClientCACert, ClientCAKey, FrontProxyCACert,
		FrontProxyClientCert, FrontProxyClientKey, APIServerCert, APIServerKey, ServiceAccountKey,
		ServiceAccountPub, AdminConf, ControllerManagerConf} {
		if _, err := os.Stat(p(name)); err != nil {
			missing = append(missing, err)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("PKI directory %s is incomplete (vCluster's /data/pki layout expected): %w", abs, errors.Join(missing...))
	}
	cn, err := commonName(p(FrontProxyClientCert))
	if err != nil {
		return nil, err
	}
	return &PKI{
		Bundle: &pki.Bundle{
			ServerCA:          p(ServerCACert),
			ServerCAKey:       p(ServerCAKey),
			ClientCA:          p(ClientCACert),
			ClientCAKey:       p(ClientCAKey),
			RequestHeaderCA:   p(FrontProxyCACert),
			ProxyClientCert:   p(FrontProxyClientCert),
			ProxyClientKey:    p(FrontProxyClientKey),
			ServingCert:       p(APIServerCert),
			ServingKey:        p(APIServerKey),
			ServiceAccountKey: p(ServiceAccountKey),
			ServiceAccountPub: p(ServiceAccountPub),
		},
		ProxyClientCN:               cn,
		AdminKubeconfig:             p(AdminConf),
		ControllerManagerKubeconfig: p(ControllerManagerConf),
	}, nil
}

// APIServerArgs are the kube-apiserver flags that must follow the PKI rather
// than harikube's own defaults.
func (p *PKI) APIServerArgs() []string {
	return []string{"--requestheader-allowed-names=" + p.ProxyClientCN}
}

func commonName(certFile string) (string, error) {
	data, err := os.ReadFile(certFile)
	if err != nil {
		return "", err
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return "", fmt.Errorf("%s: no PEM certificate", certFile)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return "", fmt.Errorf("%s: %w", certFile, err)
	}
	if cert.Subject.CommonName == "" {
		return "", fmt.Errorf("%s: certificate has no common name", certFile)
	}
	return cert.Subject.CommonName, nil
}

// RewriteKubeconfig copies the kubeconfig src to dst (mode 0600) with every
// cluster's server set to serverURL. The syncer's kubeconfigs name
// https://127.0.0.1:6443; harikube's own clients use the address it really
// listens on.
func RewriteKubeconfig(src, dst, serverURL string) error {
	cfg, err := clientcmd.LoadFromFile(src)
	if err != nil {
		return fmt.Errorf("load kubeconfig %s: %w", src, err)
	}
	// File references are relative to src; make them absolute so the copy
	// keeps working from another directory.
	if err := clientcmd.ResolveLocalPaths(cfg); err != nil {
		return fmt.Errorf("kubeconfig %s: %w", src, err)
	}
	if len(cfg.Clusters) == 0 {
		return fmt.Errorf("kubeconfig %s names no cluster", src)
	}
	for _, c := range cfg.Clusters {
		c.Server = serverURL
	}
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return fmt.Errorf("encode kubeconfig %s: %w", dst, err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", dst, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write kubeconfig %s: %w", dst, err)
	}
	return nil
}

// Package pki creates the cluster's certificate authorities, certificates and
// service-account signing key on first start and reuses them afterwards, so a
// restarted server keeps the identities its clients already trust.
package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const (
	// ProxyClientCN is the identity the apiserver presents to aggregated API
	// servers; they must trust it via the requestheader-allowed-names list.
	ProxyClientCN = "system:auth-proxy"
	// AdminCN and AdminGroup give the admin kubeconfig cluster-admin rights
	// through the built-in system:masters binding.
	AdminCN    = "system:admin"
	AdminGroup = "system:masters"
	// ControllerManagerCN is the user the default RBAC policy grants the
	// kube-controller-manager permissions to.
	ControllerManagerCN = "system:kube-controller-manager"
	// ServingCN is only informational: clients match SANs, not the CN.
	ServingCN = "kube-apiserver"

	// DefaultClusterDomain is used when Options.ClusterDomain is empty.
	DefaultClusterDomain = "cluster.local"

	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 365 * 24 * time.Hour
	// renewBefore matches k3s: renewing well before expiry leaves room for
	// servers that are restarted rarely.
	renewBefore = 90 * 24 * time.Hour
	// backdate tolerates clients whose clocks run slightly behind ours.
	backdate = 5 * time.Minute
)

// Options say which names the serving certificate must carry.
type Options struct {
	Dir           string   // e.g. <data-dir>/tls ; created with mode 0700
	Hostnames     []string // extra DNS SANs
	IPs           []net.IP // extra IP SANs
	ServiceIP     net.IP   // first IP of the service CIDR (e.g. 10.43.0.1), added as IP SAN
	ClusterDomain string   // default "cluster.local"
}

// Bundle is the set of file paths, all inside Dir.
type Bundle struct {
	ServerCA, ServerCAKey                       string // signs serving certs
	ClientCA, ClientCAKey                       string // signs client certs; apiserver --client-ca-file
	RequestHeaderCA, RequestHeaderCAKey         string // front-proxy CA
	ProxyClientCert, ProxyClientKey             string // front-proxy client cert, CN=ProxyClientCN
	ServingCert, ServingKey                     string // apiserver serving cert
	ServiceAccountKey, ServiceAccountPub        string // SA signing private key and public key
	AdminCert, AdminKey                         string // CN=system:admin, O=system:masters
	ControllerManagerCert, ControllerManagerKey string // CN=system:kube-controller-manager
}

// newBundle fixes the file names; they follow k3s where k3s has an
// equivalent so operators familiar with it find their way around.
func newBundle(dir string) *Bundle {
	p := func(name string) string { return filepath.Join(dir, name) }
	return &Bundle{
		ServerCA:              p("server-ca.crt"),
		ServerCAKey:           p("server-ca.key"),
		ClientCA:              p("client-ca.crt"),
		ClientCAKey:           p("client-ca.key"),
		RequestHeaderCA:       p("request-header-ca.crt"),
		RequestHeaderCAKey:    p("request-header-ca.key"),
		ProxyClientCert:       p("client-auth-proxy.crt"),
		ProxyClientKey:        p("client-auth-proxy.key"),
		ServingCert:           p("serving-kube-apiserver.crt"),
		ServingKey:            p("serving-kube-apiserver.key"),
		ServiceAccountKey:     p("service.key"),
		ServiceAccountPub:     p("service.pub"),
		AdminCert:             p("client-admin.crt"),
		AdminKey:              p("client-admin.key"),
		ControllerManagerCert: p("client-controller.crt"),
		ControllerManagerKey:  p("client-controller.key"),
	}
}

// Ensure makes sure every file of the Bundle exists and is usable, creating
// only what is missing, invalid, about to expire, or (for the serving
// certificate) no longer covering the requested names. CA and
// service-account keys are never replaced silently: losing them would
// invalidate every issued credential, so a broken one is reported instead.
func Ensure(opts Options) (*Bundle, error) {
	if opts.Dir == "" {
		return nil, errors.New("TLS directory not set")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("resolve TLS directory %s: %w", opts.Dir, err)
	}
	if err := ensureDir(dir); err != nil {
		return nil, err
	}
	b := newBundle(dir)
	now := time.Now()

	serverCA, err := ensureCA(b.ServerCA, b.ServerCAKey, "harikube-server-ca", now)
	if err != nil {
		return nil, err
	}
	clientCA, err := ensureCA(b.ClientCA, b.ClientCAKey, "harikube-client-ca", now)
	if err != nil {
		return nil, err
	}
	requestHeaderCA, err := ensureCA(b.RequestHeaderCA, b.RequestHeaderCAKey, "harikube-request-header-ca", now)
	if err != nil {
		return nil, err
	}

	dnsNames, ips := servingNames(opts)
	leaves := []struct {
		ca        *authority
		cert, key string
		spec      leafSpec
		what      string
	}{
		{serverCA, b.ServingCert, b.ServingKey, leafSpec{
			commonName: ServingCN,
			usage:      x509.ExtKeyUsageServerAuth,
			dnsNames:   dnsNames,
			ips:        ips,
		}, "serving certificate"},
		{clientCA, b.AdminCert, b.AdminKey, leafSpec{
			commonName:   AdminCN,
			organization: []string{AdminGroup},
			usage:        x509.ExtKeyUsageClientAuth,
		}, "admin client certificate"},
		{clientCA, b.ControllerManagerCert, b.ControllerManagerKey, leafSpec{
			commonName: ControllerManagerCN,
			usage:      x509.ExtKeyUsageClientAuth,
		}, "controller-manager client certificate"},
		{requestHeaderCA, b.ProxyClientCert, b.ProxyClientKey, leafSpec{
			commonName: ProxyClientCN,
			usage:      x509.ExtKeyUsageClientAuth,
		}, "front-proxy client certificate"},
	}
	for _, l := range leaves {
		if err := ensureLeaf(l.ca, l.cert, l.key, l.spec, now); err != nil {
			return nil, fmt.Errorf("%s: %w", l.what, err)
		}
	}

	if err := ensureServiceAccountKey(b.ServiceAccountKey, b.ServiceAccountPub); err != nil {
		return nil, err
	}
	return b, nil
}

// servingNames lists every name the apiserver can be reached by: the
// in-cluster service names pods use, loopback for local clients, the host's
// own name, and whatever the operator asked for.
func servingNames(opts Options) ([]string, []net.IP) {
	domain := strings.TrimSuffix(strings.TrimSpace(opts.ClusterDomain), ".")
	if domain == "" {
		domain = DefaultClusterDomain
	}
	dns := []string{
		"localhost",
		"kubernetes",
		"kubernetes.default",
		"kubernetes.default.svc",
		"kubernetes.default.svc." + domain,
	}
	// A host without a resolvable name is still servable by IP, so a
	// failure here is not fatal.
	if h, err := os.Hostname(); err == nil {
		dns = append(dns, h)
	}
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback}
	if opts.ServiceIP != nil {
		ips = append(ips, opts.ServiceIP)
	}
	for _, h := range opts.Hostnames {
		// Operators tend to mix addresses into --tls-san; honour them as
		// IP SANs because a DNS SAN holding an address never matches.
		if ip := net.ParseIP(strings.TrimSpace(h)); ip != nil {
			ips = append(ips, ip)
			continue
		}
		dns = append(dns, h)
	}
	ips = append(ips, opts.IPs...)
	return dedupeDNS(dns), dedupeIPs(ips)
}

func dedupeDNS(names []string) []string {
	seen := make(map[string]bool, len(names))
	out := make([]string, 0, len(names))
	for _, n := range names {
		// DNS names compare case-insensitively and a trailing dot denotes
		// the same name; normalising avoids needless regeneration.
		n = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(n)), ".")
		if n == "" || seen[n] {
			continue
		}
		seen[n] = true
		out = append(out, n)
	}
	return out
}

func dedupeIPs(ips []net.IP) []net.IP {
	out := make([]net.IP, 0, len(ips))
next:
	for _, ip := range ips {
		if ip == nil {
			continue
		}
		for _, o := range out {
			if o.Equal(ip) {
				continue next
			}
		}
		out = append(out, ip)
	}
	return out
}

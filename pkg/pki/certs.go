package pki

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"
)

// serviceAccountKeyBits: the service-account key is RSA rather than ECDSA
// because its tokens leave the cluster. OIDC federation (cloud IAM workload
// identity, Vault, older JWT libraries) universally accepts RS256 while ES256
// support is patchy; the signing cost is irrelevant at token-issuing rates.
const serviceAccountKeyBits = 2048

// authority is a loaded CA able to sign leaf certificates.
type authority struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// leafSpec is what a leaf certificate must look like to be reused.
type leafSpec struct {
	commonName   string
	organization []string
	usage        x509.ExtKeyUsage
	dnsNames     []string
	ips          []net.IP
}

func ensureCA(certPath, keyPath, name string, now time.Time) (*authority, error) {
	certPEM, err := readOptional(certPath)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readOptional(keyPath)
	if err != nil {
		return nil, err
	}

	if keyPEM == nil {
		if certPEM != nil {
			// Generating a new key would silently orphan every certificate
			// the existing CA issued, including ones held outside this host.
			return nil, fmt.Errorf("CA certificate %s exists but its key %s is missing: restore the key, or remove the certificate to create a new CA", certPath, keyPath)
		}
		key, keyPEM, err := newECKey()
		if err != nil {
			return nil, fmt.Errorf("generate key for %s: %w", name, err)
		}
		if err := writeFileAtomic(keyPath, keyPEM, keyMode); err != nil {
			return nil, err
		}
		return newCACert(certPath, name, key, now)
	}

	key, err := parseSigner(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("parse CA key %s: %w", keyPath, err)
	}
	if err := restrictMode(keyPath, keyMode); err != nil {
		return nil, err
	}
	if certPEM == nil {
		// Only reachable after a crash between writing the key and the
		// certificate on first start, or after an operator removed the
		// certificate; either way nothing can depend on it yet.
		return newCACert(certPath, name, key, now)
	}

	certs, err := cert.ParseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate %s: %w", certPath, err)
	}
	// An operator-supplied bundle may append intermediates or roots; the
	// first certificate is the one the key belongs to.
	ca := certs[0]
	if !ca.IsCA {
		return nil, fmt.Errorf("CA certificate %s is not a CA certificate", certPath)
	}
	if !publicKeysEqual(ca.PublicKey, key.Public()) {
		return nil, fmt.Errorf("CA certificate %s does not match key %s", certPath, keyPath)
	}
	if now.After(ca.NotAfter) {
		// Replacing a CA is a cluster-wide event that needs every client
		// updated, so it is left to the operator; the warning explains why
		// clients start failing.
		logrus.Warnf("CA certificate %s expired at %s; certificates it signs will not be trusted", certPath, ca.NotAfter.Format(time.RFC3339))
	}
	return &authority{cert: ca, key: key}, nil
}

func newCACert(certPath, name string, key crypto.Signer, now time.Time) (*authority, error) {
	// The timestamp makes each generated CA's subject unique, so a
	// regenerated CA is never mistaken for the one it replaces.
	ca, err := cert.NewSelfSignedCACert(cert.Config{
		CommonName: fmt.Sprintf("%s@%d", name, now.Unix()),
	}, key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate %s: %w", certPath, err)
	}
	certPEM, err := cert.EncodeCertificates(ca)
	if err != nil {
		return nil, fmt.Errorf("encode CA certificate %s: %w", certPath, err)
	}
	if err := writeFileAtomic(certPath, certPEM, certMode); err != nil {
		return nil, err
	}
	logrus.Infof("Generated CA certificate %s", certPath)
	return &authority{cert: ca, key: key}, nil
}

func ensureLeaf(ca *authority, certPath, keyPath string, spec leafSpec, now time.Time) error {
	keyPEM, err := readOptional(keyPath)
	if err != nil {
		return err
	}
	certPEM, err := readOptional(certPath)
	if err != nil {
		return err
	}

	var key crypto.Signer
	if keyPEM != nil {
		// A leaf key carries no long-lived trust, so a damaged one is simply
		// replaced instead of blocking startup.
		if key, err = parseSigner(keyPEM); err != nil {
			logrus.Warnf("Replacing unreadable key %s: %v", keyPath, err)
			key = nil
		}
	}

	if key != nil && certPEM != nil {
		problem := leafProblem(certPEM, key, ca, spec, now)
		if problem == "" {
			return restrictMode(keyPath, keyMode)
		}
		logrus.Infof("Regenerating certificate %s: %s", certPath, problem)
	}

	if key == nil {
		var keyPEM []byte
		if key, keyPEM, err = newECKey(); err != nil {
			return fmt.Errorf("generate key %s: %w", keyPath, err)
		}
		// The key goes first: if we crash before the certificate is
		// written, the next start sees a mismatch and signs a new one.
		if err := writeFileAtomic(keyPath, keyPEM, keyMode); err != nil {
			return err
		}
	} else if err := restrictMode(keyPath, keyMode); err != nil {
		return err
	}

	certPEM, err = signLeaf(ca, key.Public(), spec, now)
	if err != nil {
		return fmt.Errorf("sign %s: %w", certPath, err)
	}
	if err := writeFileAtomic(certPath, certPEM, certMode); err != nil {
		return err
	}
	logrus.Infof("Generated certificate %s", certPath)
	return nil
}

// leafProblem says why an existing certificate cannot be reused, or returns
// "" when it can.
func leafProblem(certPEM []byte, key crypto.Signer, ca *authority, spec leafSpec, now time.Time) string {
	certs, err := cert.ParseCertsPEM(certPEM)
	if err != nil {
		return fmt.Sprintf("cannot parse it: %v", err)
	}
	c := certs[0]
	switch {
	case !publicKeysEqual(c.PublicKey, key.Public()):
		return "it does not match its key"
	case !bytes.Equal(c.RawIssuer, ca.cert.RawSubject) || c.CheckSignatureFrom(ca.cert) != nil:
		return "it was not signed by the current CA"
	case now.Before(c.NotBefore):
		return fmt.Sprintf("it is not valid before %s", c.NotBefore.Format(time.RFC3339))
	case now.Add(renewBefore).After(c.NotAfter):
		return fmt.Sprintf("it expires at %s", c.NotAfter.Format(time.RFC3339))
	case c.Subject.CommonName != spec.commonName || !slices.Equal(c.Subject.Organization, spec.organization):
		return fmt.Sprintf("its subject %q is not the expected one", c.Subject.String())
	case !slices.Contains(c.ExtKeyUsage, spec.usage):
		return "it lacks the required extended key usage"
	}
	for _, want := range spec.dnsNames {
		if !slices.ContainsFunc(c.DNSNames, func(have string) bool { return strings.EqualFold(have, want) }) {
			return fmt.Sprintf("it does not cover DNS name %s", want)
		}
	}
	for _, want := range spec.ips {
		if !slices.ContainsFunc(c.IPAddresses, want.Equal) {
			return fmt.Sprintf("it does not cover IP address %s", want)
		}
	}
	return ""
}

func signLeaf(ca *authority, pub crypto.PublicKey, spec leafSpec, now time.Time) ([]byte, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(leafValidity)
	// A leaf outliving its CA would be untrusted past that point anyway;
	// capping keeps the advertised validity honest.
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	usage := x509.KeyUsageDigitalSignature
	if _, ok := pub.(*rsa.PublicKey); ok {
		// RSA key exchange in older TLS versions encrypts with the
		// certificate key, which requires this usage.
		usage |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:   spec.commonName,
			Organization: spec.organization,
		},
		NotBefore:             now.Add(-backdate).UTC(),
		NotAfter:              notAfter.UTC(),
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{spec.usage},
		BasicConstraintsValid: true,
		DNSNames:              spec.dnsNames,
		IPAddresses:           spec.ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: cert.CertificateBlockType, Bytes: der}), nil
}

// newSerial returns a random positive 127-bit serial; RFC 5280 caps serials
// at 20 octets and randomness keeps reissued certificates distinguishable.
func newSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 127)
	n, err := rand.Int(rand.Reader, limit)
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

func ensureServiceAccountKey(keyPath, pubPath string) error {
	keyPEM, err := readOptional(keyPath)
	if err != nil {
		return err
	}
	var key crypto.Signer
	if keyPEM == nil {
		rsaKey, err := rsa.GenerateKey(rand.Reader, serviceAccountKeyBits)
		if err != nil {
			return fmt.Errorf("generate service-account key: %w", err)
		}
		if keyPEM, err = keyutil.MarshalPrivateKeyToPEM(rsaKey); err != nil {
			return fmt.Errorf("encode service-account key: %w", err)
		}
		if err := writeFileAtomic(keyPath, keyPEM, keyMode); err != nil {
			return err
		}
		logrus.Infof("Generated service-account key %s", keyPath)
		key = rsaKey
	} else {
		// Replacing this key invalidates every issued token, so a damaged
		// one must be resolved by the operator.
		if key, err = parseSigner(keyPEM); err != nil {
			return fmt.Errorf("parse service-account key %s (removing it creates a new key and invalidates all service-account tokens): %w", keyPath, err)
		}
		if err := restrictMode(keyPath, keyMode); err != nil {
			return err
		}
	}

	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return fmt.Errorf("encode service-account public key: %w", err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: keyutil.PublicKeyBlockType, Bytes: der})
	existing, err := readOptional(pubPath)
	if err != nil {
		return err
	}
	// The public key is derived data, so it is rewritten whenever it does
	// not match the private key rather than trusted as-is.
	if bytes.Equal(existing, pubPEM) {
		return nil
	}
	return writeFileAtomic(pubPath, pubPEM, certMode)
}

func newECKey() (crypto.Signer, []byte, error) {
	keyPEM, err := keyutil.MakeEllipticPrivateKeyPEM()
	if err != nil {
		return nil, nil, err
	}
	key, err := parseSigner(keyPEM)
	if err != nil {
		return nil, nil, err
	}
	return key, keyPEM, nil
}

func parseSigner(keyPEM []byte) (crypto.Signer, error) {
	k, err := keyutil.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported private key type %T", k)
	}
	return s, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

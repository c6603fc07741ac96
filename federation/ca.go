package federation

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Defaults of the built-in CA.
const (
	DefaultCALifetime   = 365 * 24 * time.Hour
	DefaultSVIDLifetime = time.Hour
	// The admin credential is read from files by the CLI, so it lives longer;
	// `vwire domain` rewrites it at every start and before it expires.
	DefaultAdminLifetime = 24 * time.Hour
)

// CA is the built-in development certificate authority of one trust domain.
// Its key and certificate persist in a directory (created on first use), so
// a restarted domain keeps its identity and its peers' trust. It is meant for
// the embedded default and tests; production domains use SPIRE.
type CA struct {
	td  spiffeid.TrustDomain
	now func() time.Time

	mu   sync.RWMutex
	key  crypto.Signer
	cert *x509.Certificate
}

// OpenCA loads the CA kept in dir (ca.pem, ca.key), creating it on first use.
func OpenCA(dir string, td spiffeid.TrustDomain) (*CA, error) {
	ca := &CA{td: td, now: time.Now}
	certPath, keyPath := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key")
	certPEM, err := os.ReadFile(certPath)
	if errors.Is(err, fs.ErrNotExist) {
		return ca, ca.create(dir, certPath, keyPath)
	}
	if err != nil {
		return nil, fmt.Errorf("built-in CA: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("built-in CA: %w", err)
	}
	if err := ca.load(certPEM, keyPEM); err != nil {
		return nil, fmt.Errorf("built-in CA in %s: %w", dir, err)
	}
	return ca, nil
}

func (ca *CA) load(certPEM, keyPEM []byte) error {
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return errors.New("ca.pem holds no PEM certificate")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return fmt.Errorf("ca.pem: %w", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return errors.New("ca.key holds no PEM key")
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return fmt.Errorf("ca.key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return errors.New("ca.key is not a signing key")
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != ca.td.IDString() {
		return fmt.Errorf("ca.pem is the CA of another trust domain (%v), not %q", cert.URIs, ca.td)
	}
	if ca.now().After(cert.NotAfter) {
		return fmt.Errorf("the CA certificate expired on %s; remove the ca directory to start a new trust domain", cert.NotAfter.Format(time.RFC3339))
	}
	ca.cert, ca.key = cert, signer
	return nil
}

func (ca *CA) create(dir, certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := ca.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"vwire"}, CommonName: "vwire CA " + ca.td.Name()},
		URIs:                  []*url.URL{ca.td.ID().URL()},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(DefaultCALifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("built-in CA: %w", err)
	}
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	if err := writeFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	ca.cert, _ = x509.ParseCertificate(der)
	ca.key = key
	return nil
}

// TrustDomain is the trust domain the CA issues for.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Bundle is the CA's trust bundle: the roots that verify its SVIDs.
func (ca *CA) Bundle() *x509bundle.Bundle {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	return x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.cert})
}

// Issue signs a new X.509 SVID for id, valid for ttl (or until the CA
// expires, whichever is sooner). The key is new with every SVID.
func (ca *CA) Issue(id spiffeid.ID, ttl time.Duration) (*x509svid.SVID, error) {
	if id.TrustDomain() != ca.td {
		return nil, fmt.Errorf("built-in CA of %q cannot issue %q", ca.td, id)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	now := ca.now()
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{Organization: []string{"vwire"}},
		URIs:         []*url.URL{id.URL()},
		// Plain-TLS tools (grpcurl, curl) check a host name; go-spiffe does not.
		DNSNames:    []string{"localhost"},
		NotBefore:   now.Add(-time.Minute),
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("issue %q: %w", id, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}, nil
}

// WriteCredentials writes an SVID for id with the CA's bundle into dir as
// svid.pem, svid.key and bundle.pem: the layout `--credentials DIR` reads.
func (ca *CA) WriteCredentials(dir string, id spiffeid.ID, ttl time.Duration) error {
	svid, err := ca.Issue(id, ttl)
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		return err
	}
	bundlePEM, err := ca.Bundle().Marshal()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{{"svid.key", keyPEM, 0o600}, {"svid.pem", certPEM, 0o644}, {"bundle.pem", bundlePEM, 0o644}} {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err)
	}
	return n
}

// writeFileAtomic writes through a temporary file and a rename, so a reader
// never sees half a key.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

package federation

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/vwire/vwire/internal/atomicfile"
	"github.com/vwire/vwire/internal/crashpoint"
	"github.com/vwire/vwire/internal/private"
)

// Defaults of the built-in CA.
const (
	DefaultCALifetime   = 365 * 24 * time.Hour
	DefaultSVIDLifetime = time.Hour
	// The admin credential is read from files by the CLI, so it lives longer;
	// `vwire domain` rewrites it at every start, after a CA switch and
	// before it expires.
	DefaultAdminLifetime = 24 * time.Hour
)

// ErrRotation wraps refusals of a rotation step.
var ErrRotation = errors.New("CA rotation")

// CA is the built-in development certificate authority of one trust domain.
// Its keys and certificates persist in a directory (created on first use),
// so a restarted domain keeps its identity and its peers' trust. It is meant
// for the embedded default and tests; production domains use SPIRE.
//
// Rotation has three steps, so that peers that follow the bundle never see
// an SVID they cannot verify: Prepare makes a new root and publishes it
// beside the old one; Activate switches issuance to it (every Source renews
// at once); Retire drops the old roots from the bundle once no SVID they
// signed is in use. Rotate schedules all three.
//
// Files: ca.pem/ca.key (the active root), next.pem/next.key (a prepared
// root), bundle.pem (the published roots, when more than the active one),
// rotation.json (the times of the scheduled steps).
type CA struct {
	td  spiffeid.TrustDomain
	dir string
	now func() time.Time

	mu        sync.RWMutex
	active    authority
	next      *authority
	published []*x509.Certificate
	schedule  rotation
	changed   chan struct{}
}

type authority struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// rotation is the persisted schedule of a rotation in progress.
type rotation struct {
	ActivateAt time.Time `json:"activate_at,omitzero"`
	RetireAt   time.Time `json:"retire_at,omitzero"`
	Overlap    Duration  `json:"overlap,omitzero"`
}

// Duration is a time.Duration that JSON spells as "90s".
type Duration time.Duration

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}

// OpenCA loads the CA kept in dir, creating it on first use.
func OpenCA(dir string, td spiffeid.TrustDomain) (*CA, error) {
	ca := &CA{td: td, dir: dir, now: time.Now, changed: make(chan struct{})}
	if _, err := os.Stat(filepath.Join(dir, "ca.pem")); errors.Is(err, fs.ErrNotExist) {
		// A new CA: its directory (which may exist, empty) is made private.
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("built-in CA: %w", err)
		}
		if err := os.Chmod(dir, 0o700); err != nil {
			return nil, fmt.Errorf("built-in CA: %w", err)
		}
	} else if err := private.Check(dir); err != nil {
		return nil, fmt.Errorf("built-in CA: %w", err)
	}
	if err := ca.finishActivation(); err != nil {
		return nil, fmt.Errorf("built-in CA in %s: %w", dir, err)
	}
	active, err := ca.loadAuthority("ca")
	if errors.Is(err, fs.ErrNotExist) {
		if active, err = ca.createAuthority("ca"); err != nil {
			return nil, fmt.Errorf("built-in CA in %s: %w", dir, err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("built-in CA in %s: %w", dir, err)
	}
	if ca.now().After(active.cert.NotAfter) {
		return nil, fmt.Errorf("built-in CA in %s: the CA certificate expired on %s; rotate it (vwire ca rotate) before it does, or remove the directory to start a new trust domain",
			dir, active.cert.NotAfter.Format(time.RFC3339))
	}
	ca.active = active
	if next, err := ca.loadAuthority("next"); err == nil {
		ca.next = &next
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("built-in CA in %s: %w", dir, err)
	}
	if ca.published, err = ca.loadPublished(); err != nil {
		return nil, fmt.Errorf("built-in CA in %s: %w", dir, err)
	}
	if ca.next != nil && !slices.ContainsFunc(ca.published, ca.next.cert.Equal) {
		// Prepared, and the process stopped before it published the new
		// root: publish it now, or it would be activated unknown to peers.
		if err := ca.publishLocked(append(slices.Clone(ca.published), ca.next.cert)); err != nil {
			return nil, fmt.Errorf("built-in CA in %s: %w", dir, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "rotation.json")); err == nil {
		if err := json.Unmarshal(b, &ca.schedule); err != nil {
			return nil, fmt.Errorf("built-in CA in %s: rotation.json: %w", dir, err)
		}
	}
	return ca, nil
}

// finishActivation completes what a crash interrupted: an activation
// between its two renames (ca.pem is the new root, its key still
// next.key), or the making of a new root between its key and its
// certificate (next.key alone, of no certificate: removed).
func (ca *CA) finishActivation() error {
	nextKey := filepath.Join(ca.dir, "next.key")
	if _, err := os.Stat(nextKey); err != nil {
		return nil
	}
	if _, err := os.Stat(filepath.Join(ca.dir, "next.pem")); err == nil {
		return nil // prepared: both halves
	}
	if _, err := ca.loadFiles("ca.pem", "next.key"); err == nil {
		return errors.Join(os.Rename(nextKey, filepath.Join(ca.dir, "ca.key")), atomicfile.SyncDir(ca.dir))
	}
	return errors.Join(os.Remove(nextKey), atomicfile.SyncDir(ca.dir))
}

func (ca *CA) loadAuthority(name string) (authority, error) {
	return ca.loadFiles(name+".pem", name+".key")
}

// loadFiles loads an authority from a certificate and its key, files of
// the CA's directory.
func (ca *CA) loadFiles(certFile, keyFile string) (authority, error) {
	certPEM, err := os.ReadFile(filepath.Join(ca.dir, certFile))
	if err != nil {
		return authority{}, err
	}
	if err := private.Check(filepath.Join(ca.dir, keyFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return authority{}, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(ca.dir, keyFile))
	if err != nil {
		return authority{}, err
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return authority{}, fmt.Errorf("%s holds no PEM certificate", certFile)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return authority{}, fmt.Errorf("%s: %w", certFile, err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return authority{}, fmt.Errorf("%s holds no PEM key", keyFile)
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return authority{}, fmt.Errorf("%s: %w", keyFile, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return authority{}, fmt.Errorf("%s is not a signing key", keyFile)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != ca.td.IDString() {
		return authority{}, fmt.Errorf("%s is the CA of another trust domain (%v), not %q", certFile, cert.URIs, ca.td)
	}
	if pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
		return authority{}, fmt.Errorf("%s is not the key of %s", keyFile, certFile)
	}
	return authority{cert: cert, key: signer}, nil
}

// loadPublished reads bundle.pem; without it, the bundle is the active root.
func (ca *CA) loadPublished() ([]*x509.Certificate, error) {
	path := filepath.Join(ca.dir, "bundle.pem")
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return []*x509.Certificate{ca.active.cert}, nil
	}
	b, err := x509bundle.Load(ca.td, path)
	if err != nil {
		return nil, err
	}
	if !b.HasX509Authority(ca.active.cert) {
		return nil, errors.New("bundle.pem does not hold the active root ca.pem")
	}
	return b.X509Authorities(), nil
}

func (ca *CA) createAuthority(name string) (authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return authority{}, err
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
		return authority{}, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return authority{}, err
	}
	if err := os.MkdirAll(ca.dir, 0o700); err != nil {
		return authority{}, err
	}
	if err := atomicfile.Write(filepath.Join(ca.dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return authority{}, err
	}
	crashpoint.Here("ca-create")
	if err := atomicfile.Write(filepath.Join(ca.dir, name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return authority{}, err
	}
	cert, err := x509.ParseCertificate(der)
	return authority{cert: cert, key: key}, err
}

// TrustDomain is the trust domain the CA issues for.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Bundle is the CA's trust bundle: every published root (the active one,
// and during a rotation the prepared or retiring one).
func (ca *CA) Bundle() *x509bundle.Bundle {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	return x509bundle.FromX509Authorities(ca.td, ca.published)
}

// Changed returns a channel that is closed at the next change of the
// bundle or of the active root.
func (ca *CA) Changed() <-chan struct{} {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	return ca.changed
}

// changedLocked wakes the watchers of Changed.
func (ca *CA) changedLocked() {
	close(ca.changed)
	ca.changed = make(chan struct{})
}

// Issue signs a new X.509 SVID for id, valid for ttl (or until the active
// root expires, whichever is sooner). The key is new with every SVID.
func (ca *CA) Issue(id spiffeid.ID, ttl time.Duration) (*x509svid.SVID, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	cert, err := ca.Sign(id, key.Public(), ttl)
	if err != nil {
		return nil, err
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}, nil
}

// Sign signs an X.509 SVID for id and the public key pub (whose private key
// its holder keeps), valid for ttl or until the active root expires.
func (ca *CA) Sign(id spiffeid.ID, pub crypto.PublicKey, ttl time.Duration) (*x509.Certificate, error) {
	if id.TrustDomain() != ca.td {
		return nil, fmt.Errorf("built-in CA of %q cannot issue %q", ca.td, id)
	}
	cert, err := ca.sign(&x509.Certificate{
		Subject: pkix.Name{Organization: []string{"vwire"}},
		URIs:    []*url.URL{id.URL()},
		// Plain-TLS tools (grpcurl, curl) check a host name; go-spiffe does not.
		DNSNames:    []string{"localhost"},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, pub, ttl)
	if err != nil {
		return nil, fmt.Errorf("issue %q: %w", id, err)
	}
	return cert, nil
}

// SignServer signs a plain TLS server certificate for the DNS names (no
// SPIFFE ID: go-spiffe takes no certificate without one for an SVID), for
// a client that verifies names against the CA's roots: the Kubernetes API
// server calling vwire's admission webhook.
func (ca *CA) SignServer(names []string, pub crypto.PublicKey, ttl time.Duration) (*x509.Certificate, error) {
	cert, err := ca.sign(&x509.Certificate{
		Subject:     pkix.Name{Organization: []string{"vwire"}, CommonName: names[0]},
		DNSNames:    names,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, pub, ttl)
	if err != nil {
		return nil, fmt.Errorf("server certificate for %v: %w", names, err)
	}
	return cert, nil
}

// sign signs tmpl for pub with the active root: a new serial number,
// valid from a minute ago (clock skew) for ttl or until the root expires.
func (ca *CA) sign(tmpl *x509.Certificate, pub crypto.PublicKey, ttl time.Duration) (*x509.Certificate, error) {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	now := ca.now()
	tmpl.SerialNumber = serial()
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Minute), now.Add(ttl)
	if tmpl.NotAfter.After(ca.active.cert.NotAfter) {
		tmpl.NotAfter = ca.active.cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.active.cert, pub, ca.active.key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// Prepare makes a new root and publishes it beside the active one; it does
// not issue yet. Peers fetching the bundle learn it.
func (ca *CA) Prepare() error {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if ca.next != nil {
		return fmt.Errorf("%w: a new root is already prepared; activate it first", ErrRotation)
	}
	next, err := ca.createAuthority("next")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRotation, err)
	}
	crashpoint.Here("ca-prepare")
	if err := ca.publishLocked(append(append([]*x509.Certificate(nil), ca.published...), next.cert)); err != nil {
		return err
	}
	ca.next = &next
	ca.changedLocked()
	return nil
}

// Activate switches issuance to the prepared root. The old root stays
// published until Retire.
func (ca *CA) Activate() error {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if ca.next == nil {
		return fmt.Errorf("%w: no prepared root to activate", ErrRotation)
	}
	// Two renames, certificate first: a crash between them leaves ca.pem
	// beside next.key, which OpenCA's finishActivation completes.
	for i, ext := range []string{".pem", ".key"} {
		if i == 1 {
			crashpoint.Here("ca-activate")
		}
		if err := os.Rename(filepath.Join(ca.dir, "next"+ext), filepath.Join(ca.dir, "ca"+ext)); err != nil {
			return fmt.Errorf("%w: %v", ErrRotation, err)
		}
	}
	if err := atomicfile.SyncDir(ca.dir); err != nil {
		return fmt.Errorf("%w: %v", ErrRotation, err)
	}
	ca.active, ca.next = *ca.next, nil
	ca.changedLocked()
	return nil
}

func (ca *CA) prepared() bool {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	return ca.next != nil
}

// Retire drops every published root but the active (and a prepared) one.
func (ca *CA) Retire() error {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	keep := []*x509.Certificate{ca.active.cert}
	if ca.next != nil {
		keep = append(keep, ca.next.cert)
	}
	if err := ca.publishLocked(keep); err != nil {
		return err
	}
	ca.changedLocked()
	return nil
}

func (ca *CA) publishLocked(roots []*x509.Certificate) error {
	b, err := x509bundle.FromX509Authorities(ca.td, roots).Marshal()
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(ca.dir, "bundle.pem"), b, 0o644); err != nil {
		return fmt.Errorf("%w: %v", ErrRotation, err)
	}
	ca.published = roots
	return nil
}

// Rotate prepares a new root now, activates it after propagation (long
// enough for every peer to fetch the bundle: more than their refresh
// interval) and retires the old root overlap after that (long enough for
// every SVID it signed to expire or be renewed). Tick carries out the
// steps when they are due; the schedule survives a restart.
func (ca *CA) Rotate(propagation, overlap time.Duration) error {
	if err := ca.Prepare(); err != nil {
		return err
	}
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.schedule = rotation{ActivateAt: ca.now().Add(propagation), Overlap: Duration(overlap)}
	return ca.saveScheduleLocked()
}

// Tick carries out the rotation steps that are due.
func (ca *CA) Tick() error {
	ca.mu.RLock()
	s, now := ca.schedule, ca.now()
	ca.mu.RUnlock()
	switch {
	case !s.ActivateAt.IsZero() && !now.Before(s.ActivateAt):
		// After a crash between the switch and saving the schedule, the
		// switch is already done.
		if err := ca.Activate(); err != nil && ca.prepared() {
			return err
		}
		ca.mu.Lock()
		defer ca.mu.Unlock()
		ca.schedule = rotation{RetireAt: now.Add(time.Duration(s.Overlap))}
		return ca.saveScheduleLocked()
	case !s.RetireAt.IsZero() && !now.Before(s.RetireAt):
		if err := ca.Retire(); err != nil {
			return err
		}
		ca.mu.Lock()
		defer ca.mu.Unlock()
		ca.schedule = rotation{}
		return ca.saveScheduleLocked()
	}
	return nil
}

// RotationStatus says which step of a rotation is next, and when.
func (ca *CA) RotationStatus() (step string, at time.Time) {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	switch {
	case !ca.schedule.ActivateAt.IsZero():
		return "activate", ca.schedule.ActivateAt
	case !ca.schedule.RetireAt.IsZero():
		return "retire", ca.schedule.RetireAt
	}
	return "", time.Time{}
}

func (ca *CA) saveScheduleLocked() error {
	b, err := json.Marshal(ca.schedule)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(ca.dir, "rotation.json"), b, 0o644)
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
	// The directory is the key's: made private if it was not (a volume's
	// root, say), so that loading the credentials accepts it.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{{"svid.key", keyPEM, 0o600}, {"svid.pem", certPEM, 0o644}, {"bundle.pem", bundlePEM, 0o644}} {
		if err := atomicfile.Write(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
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

package federation

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/vwire/vwire/internal/private"
)

// Source supplies one component's current X.509 SVID and the bundles it
// trusts. go-spiffe's workloadapi.X509Source is one; the built-in CA and a
// credentials directory make the others.
type Source interface {
	x509svid.Source
	x509bundle.Source
	Close() error
}

// ErrNoSVID is returned by an identity that has no usable SVID.
var ErrNoSVID = errors.New("no X.509 SVID")

// CASource is a Source whose SVID the built-in CA issues and renews at half
// its lifetime, and whose bundles come from a Trust.
type CASource struct {
	*Trust
	Renewed
	ca  *CA
	id  spiffeid.ID
	ttl time.Duration
	log *slog.Logger
}

// Renewed is the SVID of a source that a goroutine renews until Close:
// what CASource and a Kubernetes gateway's source share.
type Renewed struct {
	mu   sync.RWMutex
	svid *x509svid.SVID

	stop chan struct{}
	done chan struct{}
}

// SetSVID makes svid the one GetX509SVID gives.
func (r *Renewed) SetSVID(svid *x509svid.SVID) {
	r.mu.Lock()
	r.svid = svid
	r.mu.Unlock()
}

// HalfLife is half the remaining lifetime of the SVID in hand, at least
// floor: when to renew it.
func (r *Renewed) HalfLife(floor time.Duration) time.Duration {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return max(time.Until(r.svid.Certificates[0].NotAfter)/2, floor)
}

// Go runs loop, which renews until stop closes, in a goroutine that Close
// stops. Call it once, after the first SetSVID.
func (r *Renewed) Go(loop func(stop <-chan struct{})) {
	r.stop, r.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(r.done)
		loop(r.stop)
	}()
}

// GetX509SVID implements x509svid.Source.
func (r *Renewed) GetX509SVID() (*x509svid.SVID, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.svid, nil
}

// Close stops renewal.
func (r *Renewed) Close() error {
	if r.stop == nil {
		return nil
	}
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	<-r.done
	return nil
}

// NewSource issues an SVID for id (lifetime ttl, DefaultSVIDLifetime if 0)
// and keeps it fresh until Close. trust is what the source accepts; nil
// means the CA's own bundle only.
func (ca *CA) NewSource(id spiffeid.ID, ttl time.Duration, trust *Trust, log *slog.Logger) (*CASource, error) {
	if ttl <= 0 {
		ttl = DefaultSVIDLifetime
	}
	if trust == nil {
		trust = NewTrust(ca.Bundle())
	}
	s := &CASource{Trust: trust, ca: ca, id: id, ttl: ttl, log: log}
	changed := ca.Changed() // taken before issuing, so no switch goes unseen
	if err := s.renew(); err != nil {
		return nil, err
	}
	s.Go(func(stop <-chan struct{}) { s.run(stop, changed) })
	return s, nil
}

func (s *CASource) renew() error {
	svid, err := s.ca.Issue(s.id, s.ttl)
	if err != nil {
		return err
	}
	s.SetSVID(svid)
	return nil
}

func (s *CASource) run(stop <-chan struct{}, changed <-chan struct{}) {
	for {
		// Renew at half the remaining lifetime of the SVID in hand, and at
		// once when the CA switches roots.
		select {
		case <-stop:
			return
		case <-time.After(s.HalfLife(100 * time.Millisecond)):
		case <-changed:
			if _, err := s.Trust.GetX509BundleForTrustDomain(s.ca.TrustDomain()); err == nil {
				s.Trust.Set(s.ca.Bundle())
			}
		}
		changed = s.ca.Changed()
		if err := s.renew(); err != nil {
			s.log.Error("renewing SVID failed; retrying", "id", s.id, "err", err)
		}
	}
}

// WorkloadSource gets SVIDs and bundles from a SPIRE agent's Workload API at
// socket (a path or unix:// URL; empty means SPIFFE_ENDPOINT_SOCKET). When
// the agent hands the process several SVIDs, the first that prefer accepts
// is used (the first of all if none is, or prefer is nil).
func WorkloadSource(ctx context.Context, socket string, prefer func(spiffeid.ID) bool) (Source, error) {
	var opts []workloadapi.X509SourceOption
	if socket != "" {
		addr := socket
		if filepath.IsAbs(socket) {
			addr = "unix://" + socket
		}
		opts = append(opts, workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
	}
	if prefer != nil {
		opts = append(opts, workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
			for _, s := range svids {
				if prefer(s.ID) {
					return s
				}
			}
			return svids[0]
		}))
	}
	// Bound the wait for a first SVID: an unregistered workload gets none.
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, opts...)
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("%w: the agent issued none within 15s (is this workload registered with SPIRE?)", ErrNoSVID)
	}
	if err != nil {
		return nil, fmt.Errorf("SPIFFE Workload API at %q: %w", socket, err)
	}
	return src, nil
}

// FileSource is the SVID and bundle of a credentials directory (svid.pem,
// svid.key, bundle.pem), as `vwire domain` writes for its admin and `vwire
// ca issue` for a gateway. A long-running holder (`vwire gateway`) picks up
// credentials issued again into the directory at its next handshake (the
// files are looked at no more than once a second): renewing them, or a
// bundle after the domain's CA rotated, needs no restart.
type FileSource struct {
	*Trust
	dir string
	id  spiffeid.ID // the SVID's; reload keeps to it

	mu      sync.Mutex
	svid    *x509svid.SVID
	stamp   string    // the files' sizes and times when last read
	checked time.Time // when the files were last looked at
}

// reloadEvery bounds how often a FileSource looks at its files.
const reloadEvery = time.Second

// LoadCredentials reads dir. The bundle is taken as the SVID's own trust
// domain's.
func LoadCredentials(dir string) (*FileSource, error) {
	stamp := filesStamp(dir)
	svid, bundle, err := readCredentials(dir)
	if err != nil {
		return nil, err
	}
	if leaf := svid.Certificates[0]; time.Now().After(leaf.NotAfter) {
		return nil, fmt.Errorf("credentials %s: the SVID %s expired at %s; restart the domain or get new credentials",
			dir, svid.ID, leaf.NotAfter.Format(time.RFC3339))
	}
	return &FileSource{Trust: NewTrust(bundle), dir: dir, id: svid.ID, svid: svid, stamp: stamp, checked: time.Now()}, nil
}

func readCredentials(dir string) (*x509svid.SVID, *x509bundle.Bundle, error) {
	for _, p := range []string{dir, filepath.Join(dir, "svid.key")} {
		if err := private.Check(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("credentials: %w", err)
		}
	}
	svid, err := x509svid.Load(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid.key"))
	if err != nil {
		return nil, nil, fmt.Errorf("credentials %s: %w", dir, err)
	}
	bundle, err := x509bundle.Load(svid.ID.TrustDomain(), filepath.Join(dir, "bundle.pem"))
	if err != nil {
		return nil, nil, fmt.Errorf("credentials %s: %w", dir, err)
	}
	return svid, bundle, nil
}

// filesStamp sums up the credentials files' sizes and modification times:
// it changes when any of them is written again.
func filesStamp(dir string) string {
	var b strings.Builder
	for _, name := range []string{"svid.pem", "svid.key", "bundle.pem"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err == nil {
			fmt.Fprintf(&b, "%s:%d:%d ", name, fi.Size(), fi.ModTime().UnixNano())
		}
	}
	return b.String()
}

// reload reads the files again if they changed since they were last read.
// New credentials are taken only whole and for the same SPIFFE ID; anything
// else keeps the ones in use (and is tried again when the files change).
func (s *FileSource) reload() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Since(s.checked) < reloadEvery {
		return
	}
	s.checked = time.Now()
	stamp := filesStamp(s.dir)
	if stamp == s.stamp {
		return
	}
	s.stamp = stamp
	svid, bundle, err := readCredentials(s.dir)
	if err != nil || svid.ID != s.id {
		return
	}
	s.svid = svid
	s.Trust.Set(bundle)
}

// GetX509SVID implements x509svid.Source.
func (s *FileSource) GetX509SVID() (*x509svid.SVID, error) {
	s.reload()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s *FileSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.reload()
	return s.Trust.GetX509BundleForTrustDomain(td)
}

// Close implements Source.
func (s *FileSource) Close() error { return nil }

// ID is the SVID's SPIFFE ID.
func (s *FileSource) ID() spiffeid.ID { return s.id }

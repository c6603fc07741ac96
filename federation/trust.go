package federation

import (
	"fmt"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Trust holds the X.509 bundles a process accepts, one per trust domain: its
// own, and those of the peers it federates with. It is safe for concurrent
// use; a bundle set here takes effect on the next handshake.
type Trust struct {
	mu      sync.RWMutex
	bundles map[spiffeid.TrustDomain]*x509bundle.Bundle
}

// NewTrust returns a Trust that accepts the given bundles.
func NewTrust(bundles ...*x509bundle.Bundle) *Trust {
	t := &Trust{bundles: map[spiffeid.TrustDomain]*x509bundle.Bundle{}}
	for _, b := range bundles {
		t.Set(b)
	}
	return t
}

// Set replaces the bundle of b's trust domain with b.
func (t *Trust) Set(b *x509bundle.Bundle) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.bundles[b.TrustDomain()] = b.Clone()
}

// Remove stops trusting td.
func (t *Trust) Remove(td spiffeid.TrustDomain) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.bundles, td)
}

// TrustDomains lists the trust domains with a bundle.
func (t *Trust) TrustDomains() []spiffeid.TrustDomain {
	t.mu.RLock()
	defer t.mu.RUnlock()
	tds := make([]spiffeid.TrustDomain, 0, len(t.bundles))
	for td := range t.bundles {
		tds = append(tds, td)
	}
	return tds
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (t *Trust) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	b, ok := t.bundles[td]
	if !ok {
		return nil, fmt.Errorf("trust domain %q is not trusted here (no bundle; federate with it first)", td)
	}
	return b, nil
}

package federation

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Errors of peer management.
var (
	ErrNotFederated = errors.New("not federated")
	ErrBadPeer      = errors.New("bad peer")
)

// Peers is the set of domains this one federates with, kept in etcd under
// /vwire/<domain>/federation/peers/<peer> with the latest good bundle of
// each, so that a restart resumes with what it had. With a Trust, it
// follows each peer's bundle endpoint and keeps the peer's bundle in it;
// without one (SPIRE federates the bundles), it only binds domains to trust
// domains.
type Peers struct {
	cli    *clientv3.Client
	prefix string
	trust  *Trust
	log    *slog.Logger

	mu        sync.RWMutex
	peers     map[string]Peer
	followers map[string]*Follower
}

// peerRecord is a peer as stored in etcd.
type peerRecord struct {
	Domain            string          `json:"domain"`
	TrustDomain       string          `json:"trust_domain"`
	BundleEndpointURL string          `json:"bundle_endpoint_url,omitempty"`
	EndpointID        string          `json:"endpoint_id,omitempty"`
	TrustOnly         bool            `json:"trust_only,omitempty"`
	Bundle            json.RawMessage `json:"bundle"` // SPIFFE format
}

// OpenPeers loads the peers stored for domain and starts following them.
func OpenPeers(ctx context.Context, cli *clientv3.Client, domain string, trust *Trust, log *slog.Logger) (*Peers, error) {
	p := &Peers{cli: cli, prefix: "/vwire/" + domain + "/federation/peers/", trust: trust, log: log,
		peers: map[string]Peer{}, followers: map[string]*Follower{}}
	resp, err := cli.Get(ctx, p.prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("loading federation peers: %w", err)
	}
	for _, kv := range resp.Kvs {
		var rec peerRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return nil, fmt.Errorf("corrupt peer record %s: %w", kv.Key, err)
		}
		peer, err := rec.peer()
		if err != nil {
			return nil, fmt.Errorf("peer record %s: %w", kv.Key, err)
		}
		bundle, err := spiffebundle.Parse(peer.TrustDomain, rec.Bundle)
		if err != nil {
			return nil, fmt.Errorf("peer record %s: bundle: %w", kv.Key, err)
		}
		if err := p.start(peer, bundle); err != nil {
			// An expired stored bundle must not stop the domain: say so
			// and leave the peer to be added again.
			log.Error("federation peer not resumed", "peer", peer.Domain, "err", err)
		}
	}
	return p, nil
}

func (r peerRecord) peer() (Peer, error) {
	td, err := spiffeid.TrustDomainFromString(r.TrustDomain)
	if err != nil {
		return Peer{}, err
	}
	peer := Peer{Domain: r.Domain, TrustDomain: td, BundleEndpointURL: r.BundleEndpointURL, TrustOnly: r.TrustOnly}
	if r.EndpointID != "" {
		if peer.EndpointID, err = spiffeid.FromString(r.EndpointID); err != nil {
			return Peer{}, err
		}
	}
	return peer, nil
}

func (p *Peers) start(peer Peer, bundle *spiffebundle.Bundle) error {
	var f *Follower
	if p.trust != nil {
		var err error
		if f, err = NewFollower(peer, bundle, p.trust, p.log); err != nil {
			return err
		}
		f.OnUpdate = func(b *spiffebundle.Bundle) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := p.store(ctx, peer, b); err != nil {
				p.log.Error("storing the peer's new bundle failed; it is in use but a restart would start from the previous one", "peer", peer.Domain, "err", err)
			}
		}
		if peer.BundleEndpointURL != "" {
			f.Start()
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if old := p.followers[peer.Domain]; old != nil {
		old.Close()
	}
	p.peers[peer.Domain] = peer
	p.followers[peer.Domain] = f
	return nil
}

func (p *Peers) store(ctx context.Context, peer Peer, b *spiffebundle.Bundle) error {
	raw, err := b.Marshal()
	if err != nil {
		return err
	}
	rec := peerRecord{Domain: peer.Domain, TrustDomain: peer.TrustDomain.Name(), BundleEndpointURL: peer.BundleEndpointURL, TrustOnly: peer.TrustOnly, Bundle: raw}
	if !peer.EndpointID.IsZero() {
		rec.EndpointID = peer.EndpointID.String()
	}
	val, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	_, err = p.cli.Put(ctx, p.prefix+peer.Domain, string(val))
	return err
}

// Add federates with peer, starting from the bootstrap bundle (SPIFFE
// format or PEM). Adding a known domain again replaces its configuration.
// Nothing is stored when the peer or the bundle is refused.
func (p *Peers) Add(ctx context.Context, peer Peer, bootstrap []byte) error {
	if peer.TrustDomain.IsZero() {
		return fmt.Errorf("%w: %q has no trust domain", ErrBadPeer, peer.Domain)
	}
	if peer.EndpointID.IsZero() {
		peer.EndpointID = ProxyID(peer.TrustDomain)
	}
	if peer.EndpointID.TrustDomain() != peer.TrustDomain {
		return fmt.Errorf("%w: endpoint ID %s is not in trust domain %q", ErrBadPeer, peer.EndpointID, peer.TrustDomain)
	}
	if p.trust != nil && peer.BundleEndpointURL == "" {
		return fmt.Errorf("%w: %q needs a bundle endpoint URL (--bundle-endpoint) to keep its bundle fresh", ErrBadPeer, peer.Domain)
	}
	bundle, err := ParseBundle(peer.TrustDomain, bootstrap)
	if err != nil {
		return fmt.Errorf("%w: bundle of %q: %v", ErrBadPeer, peer.Domain, err)
	}
	if _, err := ValidateBundle(bundle, peer.TrustDomain, time.Now()); err != nil {
		return fmt.Errorf("%w: %v", ErrBadPeer, err)
	}
	if err := p.store(ctx, peer, bundle); err != nil {
		return err
	}
	if err := p.start(peer, bundle); err != nil {
		return err
	}
	p.log.Info("federating with a peer", "peer", peer.Domain, "trust_domain", peer.TrustDomain.Name(), "bundle_endpoint", peer.BundleEndpointURL)
	return nil
}

// ParseBundle reads a bundle in SPIFFE format (JSON) or as PEM certificates.
func ParseBundle(td spiffeid.TrustDomain, b []byte) (*spiffebundle.Bundle, error) {
	if bytes.HasPrefix(bytes.TrimSpace(b), []byte("{")) {
		return spiffebundle.Parse(td, b)
	}
	var certs []*x509.Certificate
	for rest := b; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("neither a SPIFFE bundle (JSON) nor PEM certificates")
	}
	return spiffebundle.FromX509Authorities(td, certs), nil
}

// Remove stops federating with domain and forgets its bundle.
func (p *Peers) Remove(ctx context.Context, domain string) error {
	p.mu.Lock()
	peer, ok := p.peers[domain]
	f := p.followers[domain]
	delete(p.peers, domain)
	delete(p.followers, domain)
	p.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %q", ErrNotFederated, domain)
	}
	if f != nil {
		f.Close()
	}
	if p.trust != nil {
		p.trust.Remove(peer.TrustDomain)
	}
	_, err := p.cli.Delete(ctx, p.prefix+domain)
	return err
}

// List reports every peer, by domain.
func (p *Peers) List() []PeerStatus {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := make([]PeerStatus, 0, len(p.peers))
	for d, peer := range p.peers {
		if f := p.followers[d]; f != nil {
			out = append(out, f.Status())
		} else {
			out = append(out, PeerStatus{Peer: peer})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Domain < out[j].Domain })
	return out
}

// Lookup returns the peer configured for domain.
func (p *Peers) Lookup(domain string) (Peer, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	peer, ok := p.peers[domain]
	return peer, ok
}

// IsPeerProxy reports whether id is the proxy of a federated domain.
func (p *Peers) IsPeerProxy(id spiffeid.ID) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	for _, peer := range p.peers {
		if id == ProxyID(peer.TrustDomain) {
			return true
		}
	}
	return false
}

// AllowsWorkloads reports whether the default per-service policy admits
// the workloads of trust domain td: a federated peer not added trust-only.
func (p *Peers) AllowsWorkloads(td spiffeid.TrustDomain) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	for _, peer := range p.peers {
		if peer.TrustDomain == td && !peer.TrustOnly {
			return true
		}
	}
	return false
}

// Close stops following; the peers stay stored.
func (p *Peers) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.followers {
		if f != nil {
			f.Close()
		}
	}
}

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
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
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
//
// One trust domain speaks for one peer domain: a trust domain has one
// bundle, and a proxy's SVID names only its trust domain, so two peers of
// one trust domain could not be told apart. Adding a second peer with a
// trust domain in use is refused.
//
// Handshakes and look-ups (Lookup, IsPeerProxy, AllowsWorkloads) never wait
// for etcd: changes do their I/O first and then swap the maps under a lock
// held for nothing else.
type Peers struct {
	store   peerStore
	trust   *Trust
	bundles x509bundle.Source
	log     *slog.Logger

	change sync.Mutex // one Add, Remove or Close at a time, across its I/O

	mu        sync.RWMutex // the maps only; never held across I/O
	peers     map[string]Peer
	followers map[string]*Follower
	watchers  []func(domain string)
	closed    bool

	stopWatch context.CancelFunc // the watch of other replicas' changes
	watchDone chan struct{}
}

// peerStore keeps peer records: etcd, or a test's stand-in.
type peerStore interface {
	// load returns the records by key, and the store's revision.
	load(ctx context.Context) (map[string][]byte, int64, error)
	put(ctx context.Context, domain string, record []byte) error
	delete(ctx context.Context, domain string) error
	// watch calls f with the domain of each record put (rec) or deleted
	// (nil) after revision rev, until ctx ends or the watch fails.
	watch(ctx context.Context, rev int64, f func(domain string, rec []byte)) error
}

type etcdPeers struct {
	cli    *clientv3.Client
	prefix string
}

func (s etcdPeers) load(ctx context.Context) (map[string][]byte, int64, error) {
	resp, err := s.cli.Get(ctx, s.prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, err
	}
	out := map[string][]byte{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = kv.Value
	}
	return out, resp.Header.Revision, nil
}

func (s etcdPeers) watch(ctx context.Context, rev int64, f func(domain string, rec []byte)) error {
	for resp := range s.cli.Watch(clientv3.WithRequireLeader(ctx), s.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := resp.Err(); err != nil {
			return err
		}
		for _, ev := range resp.Events {
			domain := strings.TrimPrefix(string(ev.Kv.Key), s.prefix)
			if ev.Type == clientv3.EventTypeDelete {
				f(domain, nil)
			} else {
				f(domain, ev.Kv.Value)
			}
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.New("the watch ended")
}

func (s etcdPeers) put(ctx context.Context, domain string, record []byte) error {
	_, err := s.cli.Put(ctx, s.prefix+domain, string(record))
	return err
}

func (s etcdPeers) delete(ctx context.Context, domain string) error {
	_, err := s.cli.Delete(ctx, s.prefix+domain)
	return err
}

// peerRecord is a peer as stored in etcd.
type peerRecord struct {
	Domain            string          `json:"domain"`
	TrustDomain       string          `json:"trust_domain"`
	BundleEndpointURL string          `json:"bundle_endpoint_url,omitempty"`
	EndpointID        string          `json:"endpoint_id,omitempty"`
	TrustOnly         bool            `json:"trust_only,omitempty"`
	Addresses         []string        `json:"addresses,omitempty"`
	Bundle            json.RawMessage `json:"bundle"` // SPIFFE format
}

// OpenPeers loads the peers stored for domain and starts following them.
// bundles is what the domain's handshakes trust (its Source): federation
// list reports from it.
func OpenPeers(ctx context.Context, cli *clientv3.Client, domain string, trust *Trust, bundles x509bundle.Source, log *slog.Logger) (*Peers, error) {
	return openPeers(ctx, etcdPeers{cli, "/vwire/" + domain + "/federation/peers/"}, trust, bundles, log)
}

func openPeers(ctx context.Context, store peerStore, trust *Trust, bundles x509bundle.Source, log *slog.Logger) (*Peers, error) {
	p := &Peers{store: store, trust: trust, bundles: bundles, log: log, peers: map[string]Peer{}, followers: map[string]*Follower{}}
	records, rev, err := store.load(ctx)
	if err != nil {
		return nil, fmt.Errorf("loading federation peers: %w", err)
	}
	keys := make([]string, 0, len(records))
	for k := range records {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		peer, bundle, err := parseRecord(records[key])
		if err != nil {
			return nil, fmt.Errorf("peer record %s: %w", key, err)
		}
		// A record an older vwire stored may break today's rules (an
		// http:// endpoint, a shared trust domain), and an expired bundle
		// must not stop the domain: say so and leave the peer to be added
		// again.
		if err := p.install(peer, bundle); err != nil {
			log.Error("federation peer not resumed; add it again", "peer", peer.Domain, "err", err)
		}
	}
	watchCtx, cancel := context.WithCancel(context.Background())
	p.stopWatch, p.watchDone = cancel, make(chan struct{})
	go p.follow(watchCtx, rev)
	return p, nil
}

func parseRecord(raw []byte) (Peer, *spiffebundle.Bundle, error) {
	var rec peerRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return Peer{}, nil, fmt.Errorf("corrupt: %w", err)
	}
	peer, err := rec.peer()
	if err != nil {
		return Peer{}, nil, err
	}
	bundle, err := spiffebundle.Parse(peer.TrustDomain, rec.Bundle)
	if err != nil {
		return Peer{}, nil, fmt.Errorf("bundle: %w", err)
	}
	return peer, bundle, nil
}

// follow applies what other processes sharing the store (replicated
// proxies of the domain) change, until ctx ends; this process's own
// changes come back too and change nothing.
func (p *Peers) follow(ctx context.Context, rev int64) {
	defer close(p.watchDone)
	for ctx.Err() == nil {
		err := p.store.watch(ctx, rev, p.applyStored)
		if ctx.Err() != nil {
			return
		}
		p.log.Warn("watching federation peers failed; loading them again", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		records, r, err := p.store.load(ctx)
		if err != nil {
			continue
		}
		rev = r
		stored := map[string]bool{}
		for _, raw := range records {
			if peer, _, err := parseRecord(raw); err == nil {
				stored[peer.Domain] = true
				p.applyStored(peer.Domain, raw)
			}
		}
		for _, st := range p.List() {
			if !stored[st.Domain] {
				p.applyStored(st.Domain, nil)
			}
		}
	}
}

// applyStored makes the peer of domain what the store says (nil: none).
func (p *Peers) applyStored(domain string, raw []byte) {
	p.change.Lock()
	defer p.change.Unlock()
	if p.closed {
		return
	}
	p.mu.RLock()
	cur, had := p.peers[domain]
	p.mu.RUnlock()
	if raw == nil {
		if had {
			p.uninstall(domain)
			p.log.Info("no longer federating with a peer (removed by another replica)", "peer", domain)
		}
		return
	}
	peer, bundle, err := parseRecord(raw)
	if err != nil || peer.Domain != domain {
		p.log.Error("ignoring a stored federation peer", "peer", domain, "err", err)
		return
	}
	if had && cur.Equal(peer) {
		// The same peer with a bundle another replica fetched.
		if p.trust != nil {
			if usable, err := ValidateBundle(bundle, peer.TrustDomain, time.Now()); err == nil {
				p.trust.Set(usable.X509Bundle())
			}
		}
		return
	}
	if err := p.install(peer, bundle); err != nil {
		p.log.Error("ignoring a stored federation peer", "peer", domain, "err", err)
		return
	}
	p.log.Info("federating with a peer (added by another replica)", "peer", domain, "trust_domain", peer.TrustDomain.Name())
}

func (r peerRecord) peer() (Peer, error) {
	td, err := spiffeid.TrustDomainFromString(r.TrustDomain)
	if err != nil {
		return Peer{}, err
	}
	peer := Peer{Domain: r.Domain, TrustDomain: td, BundleEndpointURL: r.BundleEndpointURL, TrustOnly: r.TrustOnly}
	if peer.Addresses, err = ParseRanges(r.Addresses); err != nil {
		return Peer{}, err
	}
	if r.EndpointID != "" {
		if peer.EndpointID, err = spiffeid.FromString(r.EndpointID); err != nil {
			return Peer{}, err
		}
	}
	return peer, nil
}

func record(peer Peer, b *spiffebundle.Bundle) ([]byte, error) {
	raw, err := b.Marshal()
	if err != nil {
		return nil, err
	}
	rec := peerRecord{Domain: peer.Domain, TrustDomain: peer.TrustDomain.Name(), BundleEndpointURL: peer.BundleEndpointURL, TrustOnly: peer.TrustOnly,
		Addresses: RangeStrings(peer.Addresses), Bundle: raw}
	if !peer.EndpointID.IsZero() {
		rec.EndpointID = peer.EndpointID.String()
	}
	return json.Marshal(rec)
}

// follower makes (but does not start) the Follower of peer: it trusts the
// bootstrap bundle at once and stores each newer bundle it fetches. It is
// nil when SPIRE federates the bundles.
func (p *Peers) follower(peer Peer, bootstrap *spiffebundle.Bundle) (*Follower, error) {
	if p.trust == nil {
		return nil, nil
	}
	f, err := NewFollower(peer, bootstrap, p.trust, p.log)
	if err != nil {
		return nil, err
	}
	f.OnUpdate = func(ctx context.Context, b *spiffebundle.Bundle) {
		rec, err := record(peer, b)
		if err == nil {
			err = p.store.put(ctx, peer.Domain, rec)
		}
		if err != nil && ctx.Err() == nil {
			p.log.Error("storing the peer's new bundle failed; it is in use but a restart would start from the previous one", "peer", peer.Domain, "err", err)
		}
	}
	return f, nil
}

// check applies the rules every peer keeps: an https bundle endpoint (when
// bundles are fetched), an endpoint ID of the peer's trust domain, and a
// trust domain no other peer has.
func (p *Peers) check(peer Peer) error {
	if peer.TrustDomain.IsZero() {
		return fmt.Errorf("%w: %q has no trust domain", ErrBadPeer, peer.Domain)
	}
	if !peer.EndpointID.IsZero() && peer.EndpointID.TrustDomain() != peer.TrustDomain {
		return fmt.Errorf("%w: endpoint ID %s is not in trust domain %q", ErrBadPeer, peer.EndpointID, peer.TrustDomain)
	}
	if p.trust != nil && peer.BundleEndpointURL == "" {
		return fmt.Errorf("%w: %q needs a bundle endpoint URL (--bundle-endpoint) to keep its bundle fresh", ErrBadPeer, peer.Domain)
	}
	if peer.BundleEndpointURL != "" {
		if err := CheckBundleEndpointURL(peer.BundleEndpointURL); err != nil {
			return fmt.Errorf("%w: %v", ErrBadPeer, err)
		}
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	for d, other := range p.peers {
		if d != peer.Domain && other.TrustDomain == peer.TrustDomain {
			return fmt.Errorf("%w: trust domain %q already speaks for %q; one trust domain speaks for one domain (remove %q first, or give %q its own --trust-domain)",
				ErrBadPeer, peer.TrustDomain.Name(), d, d, peer.Domain)
		}
	}
	return nil
}

// install makes peer, with bundle to start from, the one of its domain
// (held: change). The old follower stops before the new one starts: it can
// neither overwrite the new record nor set its trust domain's bundle again;
// a trust domain the domain no longer uses is no longer trusted.
func (p *Peers) install(peer Peer, bundle *spiffebundle.Bundle) error {
	if err := p.check(peer); err != nil {
		return err
	}
	if p.trust != nil {
		if _, err := ValidateBundle(bundle, peer.TrustDomain, time.Now()); err != nil {
			return err
		}
	}
	p.mu.RLock()
	old, had := p.peers[peer.Domain]
	oldFollower := p.followers[peer.Domain]
	p.mu.RUnlock()
	if oldFollower != nil {
		oldFollower.Close()
	}
	f, err := p.follower(peer, bundle)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.peers[peer.Domain], p.followers[peer.Domain] = peer, f
	p.mu.Unlock()
	if had && old.TrustDomain != peer.TrustDomain && p.trust != nil {
		p.trust.Remove(old.TrustDomain)
	}
	if f != nil {
		f.Start()
	}
	p.changed(peer.Domain)
	return nil
}

// uninstall forgets the peer of domain and its bundle (held: change).
func (p *Peers) uninstall(domain string) {
	p.mu.Lock()
	peer := p.peers[domain]
	f := p.followers[domain]
	delete(p.peers, domain)
	delete(p.followers, domain)
	p.mu.Unlock()
	if f != nil {
		f.Close()
	}
	if p.trust != nil && !peer.TrustDomain.IsZero() {
		p.trust.Remove(peer.TrustDomain)
	}
	p.changed(domain)
}

// Add federates with peer, starting from the bootstrap bundle (SPIFFE
// format or PEM). Adding a known domain again replaces its configuration.
// Nothing is stored or changed when the peer or the bundle is refused, or
// when storing fails.
func (p *Peers) Add(ctx context.Context, peer Peer, bootstrap []byte) error {
	if peer.EndpointID.IsZero() && !peer.TrustDomain.IsZero() {
		peer.EndpointID = ProxyID(peer.TrustDomain)
	}
	bundle, err := ParseBundle(peer.TrustDomain, bootstrap)
	if err != nil {
		return fmt.Errorf("%w: bundle of %q: %v", ErrBadPeer, peer.Domain, err)
	}
	p.change.Lock()
	defer p.change.Unlock()
	if p.closed {
		return errors.New("federation is shutting down")
	}
	if err := p.check(peer); err != nil {
		return err
	}
	if _, err := ValidateBundle(bundle, peer.TrustDomain, time.Now()); err != nil {
		return fmt.Errorf("%w: %v", ErrBadPeer, err)
	}
	rec, err := record(peer, bundle)
	if err != nil {
		return err
	}
	if err := p.store.put(ctx, peer.Domain, rec); err != nil {
		return fmt.Errorf("storing peer %q: %w", peer.Domain, err)
	}
	if err := p.install(peer, bundle); err != nil { // checked above; only the clock could have moved
		return fmt.Errorf("%w: %v", ErrBadPeer, err)
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

// Remove stops federating with domain and forgets its bundle. When the
// store cannot forget it, nothing changes.
func (p *Peers) Remove(ctx context.Context, domain string) error {
	p.change.Lock()
	defer p.change.Unlock()
	p.mu.RLock()
	peer, ok := p.peers[domain]
	p.mu.RUnlock()
	if !ok {
		return fmt.Errorf("%w: %q", ErrNotFederated, domain)
	}
	if err := p.store.delete(ctx, domain); err != nil {
		return fmt.Errorf("forgetting peer %q: %w", domain, err)
	}
	p.uninstall(domain)
	p.log.Info("no longer federating with a peer", "peer", domain, "trust_domain", peer.TrustDomain.Name())
	return nil
}

// OnChange has f called with a peer's domain after it was added, changed or
// removed (to drop what was built on its old configuration).
func (p *Peers) OnChange(f func(domain string)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.watchers = append(p.watchers, f)
}

func (p *Peers) changed(domain string) {
	p.mu.RLock()
	ws := p.watchers
	p.mu.RUnlock()
	for _, w := range ws {
		w(domain)
	}
}

// Where a trusted peer bundle came from (PeerStatus.Source).
const (
	FromBundleEndpoint = "bundle endpoint"
	FromBootstrap      = "bootstrap bundle"
	FromSPIRE          = "SPIRE"
)

// List reports every peer, by domain, with what the domain's handshakes
// trust for its trust domain right now.
func (p *Peers) List() []PeerStatus {
	p.mu.RLock()
	out := make([]PeerStatus, 0, len(p.peers))
	for d, peer := range p.peers {
		st := PeerStatus{Peer: peer}
		if f := p.followers[d]; f != nil {
			st = f.Status()
		}
		out = append(out, st)
	}
	p.mu.RUnlock()
	for i := range out {
		st := &out[i]
		st.Authorities, st.Expires, st.Source = 0, time.Time{}, ""
		b, err := p.bundles.GetX509BundleForTrustDomain(st.TrustDomain)
		if err != nil || len(b.X509Authorities()) == 0 {
			if st.LastError == "" {
				st.LastError = fmt.Sprintf("no bundle of trust domain %q is trusted here", st.TrustDomain.Name())
			}
			continue
		}
		st.Authorities, st.Expires = len(b.X509Authorities()), latestExpiry(spiffebundle.FromX509Bundle(b))
		switch {
		case p.trust == nil:
			st.Source = FromSPIRE
		case st.LastFetched.IsZero():
			st.Source = FromBootstrap
		default:
			st.Source = FromBundleEndpoint
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
	if p.stopWatch != nil {
		p.stopWatch()
		<-p.watchDone
	}
	p.change.Lock()
	defer p.change.Unlock()
	p.mu.Lock()
	fs := make([]*Follower, 0, len(p.followers))
	for _, f := range p.followers {
		if f != nil {
			fs = append(fs, f)
		}
	}
	p.closed = true
	p.mu.Unlock()
	for _, f := range fs {
		f.Close()
	}
}

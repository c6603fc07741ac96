package federation

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

var tdA = spiffeid.RequireTrustDomainFromString("a.example")

// memStore keeps peer records in memory and tells watchers of changes.
// With stall armed, the next put waits until the test releases it or its
// context ends.
type memStore struct {
	mu      sync.Mutex
	recs    map[string][]byte
	log     []memEvent    // every change, in order; revision = index+1
	changed chan struct{} // closed and replaced at each change
	stall   chan struct{} // armed: the next put waits for it
	stalled chan struct{} // closed when that put is waiting
	result  chan error    // what that put returned
}

type memEvent struct {
	domain string
	rec    []byte
}

func newMemStore() *memStore {
	return &memStore{recs: map[string][]byte{}, result: make(chan error, 1), changed: make(chan struct{})}
}

func (s *memStore) load(context.Context) (map[string][]byte, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]byte{}
	for k, v := range s.recs {
		out[k] = v
	}
	return out, int64(len(s.log)), nil
}

func (s *memStore) note(domain string, rec []byte) { // held: mu
	s.log = append(s.log, memEvent{domain, rec})
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *memStore) put(ctx context.Context, domain string, rec []byte) error {
	s.mu.Lock()
	stall, stalled := s.stall, s.stalled
	s.stall = nil
	s.mu.Unlock()
	if stall != nil {
		close(stalled)
		select {
		case <-stall:
			s.result <- nil
		case <-ctx.Done():
			s.result <- ctx.Err()
			return ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recs[domain] = rec
	s.note(domain, rec)
	return nil
}

func (s *memStore) delete(_ context.Context, domain string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.recs, domain)
	s.note(domain, nil)
	return nil
}

func (s *memStore) watch(ctx context.Context, rev int64, f func(string, []byte)) error {
	for {
		s.mu.Lock()
		events, changed := s.log[rev:], s.changed
		rev = int64(len(s.log))
		s.mu.Unlock()
		for _, ev := range events {
			f(ev.domain, ev.rec)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// arm makes the next put stall; release lets it go.
func (s *memStore) arm() (stalled <-chan struct{}, release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stall, s.stalled = make(chan struct{}), make(chan struct{})
	var once sync.Once
	stall := s.stall
	return s.stalled, func() { once.Do(func() { close(stall) }) }
}

func (s *memStore) record(domain string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.recs[domain])
}

// ownPeers is a.example's Peers on store, with the built-in CA's trust.
func ownPeers(t *testing.T, store peerStore) (*Peers, *CA) {
	t.Helper()
	caA, err := OpenCA(t.TempDir(), tdA)
	if err != nil {
		t.Fatal(err)
	}
	trust := NewTrust(caA.Bundle())
	p, err := openPeers(context.Background(), store, trust, trust, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p, caA
}

// withB is a.example's Peers federating with b.example, whose bundle
// endpoint ep serves its CA's bundle.
func withB(t *testing.T) (*Peers, *memStore, *CA, *peerEndpoint) {
	t.Helper()
	store := newMemStore()
	p, _ := ownPeers(t, store)
	caB, err := OpenCA(t.TempDir(), tdB)
	if err != nil {
		t.Fatal(err)
	}
	ep := servePeer(t, caB, ProxyID(tdB))
	if err := p.Add(context.Background(), Peer{Domain: "b.example", TrustDomain: tdB, BundleEndpointURL: ep.url}, bundleJSON(t, caB)); err != nil {
		t.Fatal(err)
	}
	return p, store, caB, ep
}

func bundleJSON(t *testing.T, ca *CA) []byte {
	t.Helper()
	raw, err := spiffebundle.FromX509Bundle(ca.Bundle()).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// A bundle endpoint over plain http (or any scheme but https) is refused
// with the reason, and nothing is stored or trusted.
func TestAddRefusesPlainHTTP(t *testing.T) {
	store := newMemStore()
	p, _ := ownPeers(t, store)
	caC, err := OpenCA(t.TempDir(), spiffeid.RequireTrustDomainFromString("c.example"))
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"http://127.0.0.1:8443", "ftp://c.example", "https://", "https://user@c.example:8443", "127.0.0.1:8443"} {
		err := p.Add(context.Background(), Peer{Domain: "c.example", TrustDomain: caC.TrustDomain(), BundleEndpointURL: u}, bundleJSON(t, caC))
		if !errors.Is(err, ErrBadPeer) || !strings.Contains(err.Error(), "bundle endpoint") {
			t.Errorf("%s: %v", u, err)
		}
	}
	if err := p.Add(context.Background(), Peer{Domain: "c.example", TrustDomain: caC.TrustDomain(), BundleEndpointURL: "http://127.0.0.1:8443"}, bundleJSON(t, caC)); !strings.Contains(err.Error(), `the scheme must be https, not "http"`) {
		t.Errorf("http: %v", err)
	}
	if store.record("c.example") != "" || len(p.List()) != 0 || p.IsPeerProxy(ProxyID(caC.TrustDomain())) {
		t.Error("a refused peer was stored or trusted")
	}
	if _, err := p.trust.GetX509BundleForTrustDomain(caC.TrustDomain()); err == nil {
		t.Error("the refused peer's bundle is trusted")
	}
	// A follower never fetches over anything but https, whatever it is given.
	if _, err := fetchBundle(context.Background(), Peer{TrustDomain: caC.TrustDomain(), BundleEndpointURL: "http://127.0.0.1:1"}, p.trust); err == nil || !strings.Contains(err.Error(), "must be https") {
		t.Errorf("fetch over http: %v", err)
	}
}

// One trust domain speaks for one domain: a second peer that names a
// trust domain in use is refused, and the first keeps its live bundle;
// list reports what is trusted.
func TestOneTrustDomainOnePeer(t *testing.T) {
	p, store, caB, ep := withB(t)
	ctx := context.Background()
	eventually(t, "b's bundle fetched", func() bool { return p.List()[0].Source == FromBundleEndpoint })
	before := store.record("b.example")

	// c.example claiming b's trust domain, with another CA's bundle.
	other, err := OpenCA(t.TempDir(), tdB)
	if err != nil {
		t.Fatal(err)
	}
	err = p.Add(ctx, Peer{Domain: "c.example", TrustDomain: tdB, BundleEndpointURL: ep.url}, bundleJSON(t, other))
	if !errors.Is(err, ErrBadPeer) || !strings.Contains(err.Error(), `trust domain "b.example" already speaks for "b.example"`) {
		t.Fatalf("second peer of one trust domain: %v", err)
	}
	if store.record("c.example") != "" || store.record("b.example") != before {
		t.Error("the refused peer changed what is stored")
	}
	got, _ := p.trust.GetX509BundleForTrustDomain(tdB)
	if !got.Equal(caB.Bundle()) {
		t.Error("the refused peer's bundle replaced b's")
	}
	list := p.List()
	if len(list) != 1 || list[0].Domain != "b.example" || list[0].Authorities != 1 || list[0].Source != FromBundleEndpoint || list[0].LastError != "" {
		t.Errorf("list: %+v", list)
	}

	// b moves to another trust domain: the old one is no longer trusted.
	tdB2 := spiffeid.RequireTrustDomainFromString("b2.example")
	caB2, err := OpenCA(t.TempDir(), tdB2)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Add(ctx, Peer{Domain: "b.example", TrustDomain: tdB2, BundleEndpointURL: "https://127.0.0.1:1"}, bundleJSON(t, caB2)); err != nil {
		t.Fatal(err)
	}
	if _, err := p.trust.GetX509BundleForTrustDomain(tdB); err == nil || p.IsPeerProxy(ProxyID(tdB)) {
		t.Error("b's old trust domain is still trusted")
	}
	if list := p.List(); len(list) != 1 || list[0].TrustDomain != tdB2 || list[0].Source != FromBootstrap {
		t.Errorf("list after the change: %+v", list)
	}
	if err := p.Remove(ctx, "b.example"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.trust.GetX509BundleForTrustDomain(tdB2); err == nil || len(p.List()) != 0 || store.record("b.example") != "" {
		t.Error("a removed peer is still trusted, listed or stored")
	}
}

// A bundle endpoint that redirects is refused, not followed.
func TestFetchRefusesRedirect(t *testing.T) {
	caB, err := OpenCA(t.TempDir(), tdB)
	if err != nil {
		t.Fatal(err)
	}
	target := servePeer(t, caB, ProxyID(tdB))
	src, err := caB.NewSource(ProxyID(tdB), time.Hour, nil, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	var followed sync.Once
	redirected := make(chan struct{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		followed.Do(func() { close(redirected) })
		http.Redirect(w, r, target.url, http.StatusFound)
	}), TLSConfig: tlsconfig.TLSServerConfig(src)}
	go srv.Serve(tls.NewListener(lis, srv.TLSConfig))
	t.Cleanup(func() { srv.Close() })

	f, _ := follow(t, caB, "https://"+lis.Addr().String(), ProxyID(tdB))
	eventually(t, "the redirect refused", func() bool {
		return strings.Contains(f.Status().LastError, "redirects are not followed")
	})
	<-redirected
	if !f.Status().LastFetched.IsZero() {
		t.Error("a bundle was taken through a redirect")
	}
}

// While etcd stalls, handshakes and look-ups go on: neither a follower
// storing a new bundle nor an Add replacing that peer holds them up, and
// the old follower can no longer overwrite the new configuration.
func TestHandshakesDoNotWaitOnStore(t *testing.T) {
	p, store, caB, ep := withB(t)
	ctx := context.Background()

	// b rotates; the follower's store of the new bundle stalls.
	stalled, release := store.arm()
	t.Cleanup(release)
	if err := caB.Rotate(time.Hour, time.Hour); err != nil {
		t.Fatal(err)
	}
	rotated := spiffebundle.FromX509Bundle(caB.Bundle())
	rotated.SetRefreshHint(MinRefresh)
	ep.bundle.Store(rotated)
	select {
	case <-stalled:
	case <-time.After(10 * time.Second):
		t.Fatal("the follower did not store b's new bundle within 10 s")
	}

	// The admin changes b's configuration meanwhile.
	changed := Peer{Domain: "b.example", TrustDomain: tdB, BundleEndpointURL: ep.url, TrustOnly: true}
	added, raw := make(chan error, 1), bundleJSON(t, caB)
	go func() { added <- p.Add(ctx, changed, raw) }()

	authz := DomainAuthorizer(tdA, p)
	answered := make(chan error, 1)
	go func() { answered <- authz(ProxyID(tdB), nil) }()
	select {
	case err := <-answered:
		if err != nil {
			t.Errorf("b's proxy refused: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a handshake waited on the stalled store for 5 s")
	}
	select {
	case err := <-added:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("replacing b waited on the old follower's stalled store for 5 s")
	}
	// The old follower stopped before the new configuration was in use:
	// its pending store was called off, so it cannot write the old one.
	select {
	case err := <-store.result:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("the old follower's store returned %v, want it called off", err)
		}
	default:
		t.Error("the old follower's store is still pending after b was replaced")
	}
	release()
	if peer, _ := p.Lookup("b.example"); !peer.TrustOnly || !strings.Contains(store.record("b.example"), `"trust_only":true`) {
		t.Error("the new configuration is not what is used and stored")
	}
}

// Two processes on one store (replicated proxies of one domain): what one
// adds, changes and removes, the other follows, without writing back.
func TestReplicasFollowEachOther(t *testing.T) {
	store := newMemStore()
	p1, caA := ownPeers(t, store)
	trust2 := NewTrust(caA.Bundle())
	p2, err := openPeers(context.Background(), store, trust2, trust2, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p2.Close)
	changes := make(chan string, 10)
	p2.OnChange(func(d string) { changes <- d })
	caB, err := OpenCA(t.TempDir(), tdB)
	if err != nil {
		t.Fatal(err)
	}
	ep := servePeer(t, caB, ProxyID(tdB))
	ctx := context.Background()
	if err := p1.Add(ctx, Peer{Domain: "b.example", TrustDomain: tdB, BundleEndpointURL: ep.url}, bundleJSON(t, caB)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the other replica federates with b", func() bool {
		_, ok := p2.Lookup("b.example")
		return ok && p2.IsPeerProxy(ProxyID(tdB))
	})
	if got := <-changes; got != "b.example" {
		t.Errorf("the other replica's pool was told of %q", got)
	}
	// b's new root, fetched and stored by either, is trusted by both.
	if err := caB.Rotate(time.Hour, time.Hour); err != nil {
		t.Fatal(err)
	}
	rotated := spiffebundle.FromX509Bundle(caB.Bundle())
	rotated.SetRefreshHint(MinRefresh)
	ep.bundle.Store(rotated)
	eventually(t, "both trust b's new root", func() bool {
		b1, _ := p1.trust.GetX509BundleForTrustDomain(tdB)
		b2, _ := trust2.GetX509BundleForTrustDomain(tdB)
		return b1 != nil && b2 != nil && len(b1.X509Authorities()) == 2 && len(b2.X509Authorities()) == 2
	})
	if err := p1.Add(ctx, Peer{Domain: "b.example", TrustDomain: tdB, BundleEndpointURL: ep.url, TrustOnly: true}, bundleJSON(t, caB)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the other replica takes the changed peer", func() bool { peer, _ := p2.Lookup("b.example"); return peer.TrustOnly })
	if err := p1.Remove(ctx, "b.example"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the other replica forgets b", func() bool {
		_, ok := p2.Lookup("b.example")
		_, err := trust2.GetX509BundleForTrustDomain(tdB)
		return !ok && err != nil
	})
	// Following wrote nothing back: p1's add, change and remove, and b's
	// new bundle as each replica's follower fetched it (once or twice).
	store.mu.Lock()
	writes := len(store.log)
	store.mu.Unlock()
	if writes > 5 {
		t.Errorf("%d writes to the store; a follower wrote back what it was told", writes)
	}
}

package proxy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/vwire/vwire/federation"
)

// ErrNotFederated: a name points at a domain this one does not federate with.
var ErrNotFederated = errors.New("not federated")

// Pool keeps one mutual-TLS connection per peer domain, to the domain's
// proxies as DNS lists them: gRPC's pick_first tries them in RFC 2782 order
// and fails over to the next when one is down. Requests share the
// connection; nothing dials per request. A connection is only handed out
// while its domain is federated as it was when the connection was made: a
// peer removed or changed (another trust domain, another endpoint ID) loses
// its connection at once, and a new one is made with the new settings.
type Pool struct {
	resolver *Resolver
	src      federation.Source
	own      string
	peers    *federation.Peers

	mu    sync.Mutex
	conns map[string]*peerConn
}

type peerConn struct {
	conn  *grpc.ClientConn
	peer  federation.Peer // as federated when dialled
	res   *manual.Resolver
	addrs []string // sorted, to notice a changed set
}

// NewPool returns a Pool that dials as src, says it speaks for own, finds
// proxies with r and accepts the peers' trust domains from peers.
func NewPool(r *Resolver, src federation.Source, own string, peers *federation.Peers) *Pool {
	p := &Pool{resolver: r, src: src, own: own, peers: peers, conns: map[string]*peerConn{}}
	peers.OnChange(p.forget)
	return p
}

// forget closes the connection to domain, if there is one.
func (p *Pool) forget(domain string) {
	p.mu.Lock()
	pc := p.conns[domain]
	delete(p.conns, domain)
	p.mu.Unlock()
	if pc != nil {
		pc.conn.Close()
	}
}

// Conn returns the connection to domain's proxies.
func (p *Pool) Conn(ctx context.Context, domain string) (*grpc.ClientConn, error) {
	targets, err := p.resolver.Lookup(ctx, domain)
	// DNS only locates; federation alone makes a domain trusted, and it is
	// asked before any connection is handed out.
	peer, federated := p.peers.Lookup(domain)
	p.mu.Lock()
	defer p.mu.Unlock()
	pc := p.conns[domain]
	if pc != nil && (!federated || pc.peer != peer) {
		pc.conn.Close()
		delete(p.conns, domain)
		pc = nil
	}
	if err != nil {
		if pc != nil && errors.Is(err, ErrDNS) {
			return pc.conn, nil // DNS only locates: keep using what it said
		}
		return nil, err
	}
	if !federated {
		return nil, fmt.Errorf("domain %q is %w with %q (vwire federation add %s …)", domain, ErrNotFederated, p.own, domain)
	}
	var addrs []resolver.Address
	var sorted []string
	for _, t := range targets {
		for _, a := range t.Addresses() {
			addrs = append(addrs, resolver.Address{Addr: a})
			sorted = append(sorted, a)
		}
	}
	slices.Sort(sorted)
	if pc != nil {
		if !slices.Equal(pc.addrs, sorted) {
			pc.res.UpdateState(resolver.State{Addresses: addrs})
			pc.addrs = sorted
		}
		return pc.conn, nil
	}
	res := manual.NewBuilderWithScheme("vwire-peer")
	res.InitialState(resolver.State{Addresses: addrs})
	opts, err := federation.PeerDialOptions(p.src, p.own, peer)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient("vwire-peer:///"+domain, append(opts, grpc.WithResolvers(res))...)
	if err != nil {
		return nil, fmt.Errorf("peer %q: %w", domain, err)
	}
	p.conns[domain] = &peerConn{conn: conn, peer: peer, res: res, addrs: sorted}
	return conn, nil
}

// Close closes every connection.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for d, pc := range p.conns {
		pc.conn.Close()
		delete(p.conns, d)
	}
}

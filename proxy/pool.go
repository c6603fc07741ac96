package proxy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

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
	// Timeout bounds how long a peer's proxy may take to answer a call
	// (a stream: its first answer); a peer cut off, paused or overloaded
	// then fails the request instead of holding it.
	Timeout time.Duration
	// DialOptions are added to every connection's (metrics).
	DialOptions []grpc.DialOption

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
	p := &Pool{resolver: r, src: src, own: own, peers: peers, Timeout: DefaultPeerTimeout, conns: map[string]*peerConn{}}
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
	if pc != nil && (!federated || !pc.peer.Equal(peer)) {
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
	opts = append(append(opts, p.DialOptions...), grpc.WithResolvers(res), grpc.WithChainUnaryInterceptor(p.boundUnary(domain)), grpc.WithChainStreamInterceptor(p.boundStream(domain)))
	conn, err := grpc.NewClient("vwire-peer:///"+domain, opts...)
	if err != nil {
		return nil, fmt.Errorf("peer %q: %w", domain, err)
	}
	p.conns[domain] = &peerConn{conn: conn, peer: peer, res: res, addrs: sorted}
	return conn, nil
}

// DefaultPeerTimeout is how long a peer's proxy has to answer, by default.
const DefaultPeerTimeout = 4 * time.Second

// noAnswer is the error of a call the peer did not answer in time.
func (p *Pool) noAnswer(domain string) error {
	return status.Errorf(codes.Unavailable, "no answer from domain %q within %v (cut off, paused or overloaded?)", domain, p.Timeout)
}

// boundUnary gives each unary call to domain at most Timeout.
func (p *Pool) boundUnary(domain string) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		bounded, cancel := context.WithTimeout(ctx, p.Timeout)
		defer cancel()
		err := invoker(bounded, method, req, reply, cc, opts...)
		if err != nil && ctx.Err() == nil && bounded.Err() != nil {
			return p.noAnswer(domain)
		}
		return err
	}
}

// boundStream gives each stream to domain at most Timeout for its first
// answer; after that it lives as long as its caller wants (a watch).
func (p *Pool) boundStream(domain string) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		sctx, cancel := context.WithCancel(ctx)
		b := &boundedStream{noAnswer: func() error { return p.noAnswer(domain) }, cancel: cancel, ctx: ctx}
		b.timer = time.AfterFunc(p.Timeout, func() { b.late.Store(true); cancel() })
		cs, err := streamer(sctx, desc, cc, method, opts...)
		if err != nil {
			b.timer.Stop()
			cancel()
			return nil, b.explain(err)
		}
		b.ClientStream = cs
		return b, nil
	}
}

type boundedStream struct {
	grpc.ClientStream
	ctx      context.Context // the caller's
	cancel   context.CancelFunc
	timer    *time.Timer
	late     atomic.Bool
	noAnswer func() error
}

func (b *boundedStream) explain(err error) error {
	if b.late.Load() && b.ctx.Err() == nil {
		return b.noAnswer()
	}
	return err
}

func (b *boundedStream) RecvMsg(m any) error {
	err := b.ClientStream.RecvMsg(m)
	b.timer.Stop() // it answered (or ended)
	if err != nil {
		b.cancel()
		return b.explain(err)
	}
	return nil
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

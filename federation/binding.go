package federation

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// DomainHeader is the gRPC metadata key in which a peer proxy says which
// domain it speaks for.
const DomainHeader = "vwire-domain"

// DomainAuthorizer admits, at the TLS handshake, members of the domain's
// own trust domain and the proxies of federated peers; nobody else.
func DomainAuthorizer(own spiffeid.TrustDomain, peers *Peers) Authorizer {
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		if id.MemberOf(own) || peers.IsPeerProxy(id) {
			return nil
		}
		return fmt.Errorf("%s is neither of trust domain %q nor the proxy of a federated domain", id, own)
	}
}

type sourceDomainKey struct{}

// SourceDomain is the federated domain a call came from, as Binding
// verified it; "" for a call from the domain itself.
func SourceDomain(ctx context.Context) string {
	d, _ := ctx.Value(sourceDomainKey{}).(string)
	return d
}

// Binding checks every call against the domain binding: a caller of the own
// trust domain is local; any other caller must say in DomainHeader which
// domain it speaks for, that domain must be federated, and the caller must
// be that domain's proxy in its configured trust domain. Peers may call only
// the methods in peerMethods (full gRPC method names).
type Binding struct {
	Own         spiffeid.TrustDomain
	Peers       *Peers
	PeerMethods map[string]bool
}

func (b *Binding) check(ctx context.Context, method string) (context.Context, error) {
	id, ok := PeerID(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "the connection carries no SPIFFE ID")
	}
	if id.MemberOf(b.Own) {
		return ctx, nil
	}
	claimed := metadata.ValueFromIncomingContext(ctx, DomainHeader)
	if len(claimed) != 1 || claimed[0] == "" {
		return nil, status.Errorf(codes.PermissionDenied, "%s is not of trust domain %q and did not say (in %s) which domain it speaks for", id, b.Own, DomainHeader)
	}
	peer, ok := b.Peers.Lookup(claimed[0])
	if !ok {
		return nil, status.Errorf(codes.PermissionDenied, "domain %q is not federated with this domain (trust domain %q)", claimed[0], b.Own)
	}
	if want := ProxyID(peer.TrustDomain); id != want {
		return nil, status.Errorf(codes.PermissionDenied, "%s may not speak for domain %q: only %s may (its trust domain is %q)", id, claimed[0], want, peer.TrustDomain)
	}
	if !b.PeerMethods[method] {
		return nil, status.Errorf(codes.PermissionDenied, "domain %q may not call %s", claimed[0], method)
	}
	return context.WithValue(ctx, sourceDomainKey{}, claimed[0]), nil
}

// Interceptors apply the binding to unary and streaming calls.
func (b *Binding) Interceptors() (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			ctx, err := b.check(ctx, info.FullMethod)
			if err != nil {
				return nil, err
			}
			return h(ctx, req)
		}, func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			ctx, err := b.check(ss.Context(), info.FullMethod)
			if err != nil {
				return err
			}
			return h(srv, &boundStream{ServerStream: ss, ctx: ctx})
		}
}

type boundStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *boundStream) Context() context.Context { return s.ctx }

// DialPeer connects to a federated domain's proxy at addr (see
// PeerDialOptions).
func DialPeer(addr string, src Source, ownDomain string, peer Peer) (*grpc.ClientConn, error) {
	opts, err := PeerDialOptions(src, ownDomain, peer)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(addr, opts...)
}

// PeerDialOptions make a connection to a federated domain's proxy: it
// accepts only that domain's proxy SVID, and says on every call that it
// speaks for ownDomain.
func PeerDialOptions(src Source, ownDomain string, peer Peer) ([]grpc.DialOption, error) {
	if peer.TrustDomain.IsZero() {
		return nil, errors.New("peer has no trust domain")
	}
	tag := func(ctx context.Context) context.Context {
		return metadata.AppendToOutgoingContext(ctx, DomainHeader, ownDomain)
	}
	return WithReconnect(
		grpc.WithTransportCredentials(ClientCredentials(src, AuthorizeOf(ProxyID(peer.TrustDomain)))),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(tag(ctx), method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(tag(ctx), desc, cc, method, opts...)
		}),
	), nil
}

// What ProbePeer finds wrong with the way to a peer's proxy.
var (
	ErrPeerUnreachable = errors.New("no TCP connection")
	ErrPeerRefusesUs   = errors.New("it refused this domain's SVID")
	ErrPeerUntrusted   = errors.New("its SVID is not one this domain trusts for it")
)

// ProbePeer makes the mutual TLS handshake a connection to peer's proxy at
// addr makes, and waits for the server's first bytes (with TLS 1.3 a
// server refuses a client's certificate only then): it says which side, if
// any, refuses the other, for vwire diagnose.
func ProbePeer(ctx context.Context, addr string, src Source, peer Peer) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("%w to %s: %v", ErrPeerUnreachable, addr, err)
	}
	defer raw.Close()
	cfg := tlsconfig.MTLSClientConfig(src, src, AuthorizeOf(ProxyID(peer.TrustDomain)))
	cfg.NextProtos = []string{"h2"}
	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		if alerted(err) {
			return fmt.Errorf("%w: %v", ErrPeerRefusesUs, err)
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Errorf("%w: the TLS handshake with %s: %v", ErrPeerUnreachable, addr, err)
		}
		return fmt.Errorf("%w: %v", ErrPeerUntrusted, err)
	}
	deadline, _ := ctx.Deadline()
	conn.SetReadDeadline(deadline)
	if _, err := conn.Read(make([]byte, 1)); alerted(err) {
		return fmt.Errorf("%w: %v", ErrPeerRefusesUs, err)
	}
	return nil
}

// alerted says whether err is a TLS alert the other side sent: crypto/tls
// reports one as a net.OpError of Op "remote error".
func alerted(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error"
}

package federation

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
)

// Authorizer decides whether a verified peer SPIFFE ID may connect. Build
// one with tlsconfig.AuthorizeID, AuthorizeOneOf or AuthorizeMemberOf; never
// AuthorizeAny.
type Authorizer = tlsconfig.Authorizer

// ServerCredentials is mutual TLS for a gRPC server: it presents src's SVID,
// verifies clients against src's bundles and admits those authz accepts.
// Every refused handshake is logged with the reason (no certificate,
// unknown trust domain, expired, not authorized).
func ServerCredentials(src Source, authz Authorizer, log *slog.Logger) credentials.TransportCredentials {
	cfg := tlsconfig.MTLSServerConfig(src, src, authz)
	return &loggingCreds{TransportCredentials: credentials.NewTLS(cfg), log: log}
}

// HandshakeTimeout bounds how long a connection to a vwire server may take
// to complete its TLS handshake: one that has not by then is closed, so a
// peer that opens connections and never speaks holds nothing for long
// (gRPC's own default is two minutes).
const HandshakeTimeout = 10 * time.Second

// ServerOptions are ServerCredentials and the bounds every vwire server
// over mTLS keeps: HandshakeTimeout, MaxMessageSize, MaxStreams a
// connection, and keepalive pings at most every KeepaliveMinTime (a
// client that pings more often is sent away: GOAWAY, too_many_pings),
// while the server pings an idle client every ten minutes and drops one
// that does not answer.
func ServerOptions(src Source, authz Authorizer, log *slog.Logger) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(ServerCredentials(src, authz, log)),
		grpc.ConnectionTimeout(HandshakeTimeout),
		grpc.MaxRecvMsgSize(MaxMessageSize),
		grpc.MaxConcurrentStreams(MaxStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: KeepaliveMinTime, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 10 * time.Minute, Timeout: 20 * time.Second}),
	}
}

// MaxStreams bounds the streams in flight on one connection to a vwire
// server (gRPC's own default is no bound).
const MaxStreams = 1000

// KeepaliveMinTime is how often a client may ping a vwire server.
const KeepaliveMinTime = 10 * time.Second

// ClientCredentials is mutual TLS for a gRPC client: it presents src's SVID
// and accepts only a server that authz accepts.
func ClientCredentials(src Source, authz Authorizer) credentials.TransportCredentials {
	return credentials.NewTLS(tlsconfig.MTLSClientConfig(src, src, authz))
}

type loggingCreds struct {
	credentials.TransportCredentials
	log *slog.Logger
}

func (c *loggingCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	out, info, err := c.TransportCredentials.ServerHandshake(conn)
	var alert *net.OpError
	switch {
	case err == nil:
	case errors.As(err, &alert) && alert.Op == "remote error":
		// The client sent the alert: it refused this server (its
		// certificate, most often), not the other way round.
		c.log.Info("a client gave up the TLS handshake: it did not accept this server", "remote", conn.RemoteAddr().String(), "alert", alert.Err.Error())
	case errors.Is(err, io.EOF):
		// Connected and closed without a word: a TCP health check (a
		// kubelet's probe, a load balancer's).
		c.log.Debug("a connection closed before the TLS handshake", "remote", conn.RemoteAddr().String())
	default:
		c.log.Warn("refused a TLS connection", "remote", conn.RemoteAddr().String(), "reason", err.Error())
	}
	return out, info, err
}

func (c *loggingCreds) Clone() credentials.TransportCredentials {
	return &loggingCreds{TransportCredentials: c.TransportCredentials.Clone(), log: c.log}
}

// PeerID is the SPIFFE ID the caller proved in the mTLS handshake.
func PeerID(ctx context.Context) (spiffeid.ID, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, false
	}
	return idFromCert(info.State.PeerCertificates[0])
}

func idFromCert(cert *x509.Certificate) (spiffeid.ID, bool) {
	id, err := x509svid.IDFromCert(cert)
	return id, err == nil
}

// AuthorizeOf admits exactly the given IDs; its refusal names the ID the
// other side presented and the ones it had to present.
func AuthorizeOf(ids ...spiffeid.ID) Authorizer {
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		if slices.Contains(ids, id) {
			return nil
		}
		want := make([]string, len(ids))
		for i, w := range ids {
			want[i] = w.String()
		}
		return fmt.Errorf("unexpected SPIFFE ID: expected %s, got %s", strings.Join(want, " or "), id)
	}
}

// AuthorizeMember admits any ID of trust domain td (and no other).
func AuthorizeMember(td spiffeid.TrustDomain) Authorizer {
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		if id.MemberOf(td) {
			return nil
		}
		return fmt.Errorf("unexpected SPIFFE ID: expected a member of trust domain %q, got %s", td.Name(), id)
	}
}

// WithReconnect adds to opts how every vwire connection to another vwire
// process comes back after that process restarts: gRPC's default backoff
// grows to two minutes, in which calls fail at once with the old error.
// vwire's stops at two seconds, and a call on a connection that failed has
// it try again at once (see revive).
func WithReconnect(opts ...grpc.DialOption) []grpc.DialOption {
	return append(slices.Clone(reconnect), opts...)
}

var reconnect = []grpc.DialOption{
	grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
		MinConnectTimeout: 5 * time.Second,
	}),
	grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		revive(ctx, cc)
		return invoker(ctx, method, req, reply, cc, opts...)
	}),
	grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		revive(ctx, cc)
		return streamer(ctx, desc, cc, method, opts...)
	}),
}

// revive has a connection that failed try again at once instead of at its
// next backoff, and waits (up to 2 s, within ctx) for that try: a call
// right after the other side restarted then reaches it, where it would
// fail at once with the old error.
func revive(ctx context.Context, conn *grpc.ClientConn) {
	if conn.GetState() != connectivity.TransientFailure {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn.ResetConnectBackoff()
	for s := conn.GetState(); s != connectivity.Ready && conn.WaitForStateChange(ctx, s); {
		if s = conn.GetState(); s == connectivity.TransientFailure {
			return // tried, and failed again
		}
	}
}

// DialDomain connects to the domain of src's own trust domain at addr: the
// server must prove it is that domain's registry or proxy (`vwire domain`
// serves every role on one listener as its proxy). opts are added
// (metrics).
func DialDomain(addr string, src Source, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	svid, err := src.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %v", addr, ErrNoSVID, err)
	}
	td := svid.ID.TrustDomain()
	conn, err := grpc.NewClient(addr, WithReconnect(slices.Concat(opts, []grpc.DialOption{grpc.WithTransportCredentials(ClientCredentials(src, AuthorizeOf(RegistryID(td), ProxyID(td))))})...)...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", addr, err)
	}
	return conn, nil
}

package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/attribute"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/internal/netprefix"
	"github.com/vwire/vwire/internal/tracing"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

// DefaultConnectionLifetime is how long a connection lives at a hop unless
// refreshed (requested again with its id).
const DefaultConnectionLifetime = 10 * time.Minute

// Server is the network service API of a domain's proxy: it selects an
// endpoint for a local service (match rules, per-service policy), has the
// endpoint's side programmed, and keeps the connection in etcd; a request
// for service@other-domain goes to that domain's proxy over the pooled
// connection, and the client's side is programmed here.
type Server struct {
	proxypb.UnimplementedNetworkServiceServer
	Own       string
	TD        spiffeid.TrustDomain
	Store     *registry.Store
	Peers     registry.PeerPolicy
	Pool      *Pool
	Conns     *Connections
	Dataplane Dataplane // nil: requests are refused, nothing would carry them
	Lifetime  time.Duration
	Log       *slog.Logger
	Metrics   *Metrics // nil: nothing counted
	// Observe, when set, is shown every request this proxy answered, its
	// answer, and whether it refreshed a connection stored here (a
	// Kubernetes domain's events on pods).
	Observe func(ctx context.Context, req *proxypb.NetworkServiceRequest, conn *proxypb.Connection, err error, refresh bool)

	// PeerMaxConnections bounds the live connections one peer domain's
	// proxy may hold here (0: no bound); Expire keeps the count.
	PeerMaxConnections int
	// PeerRanges are the address ranges a peer domain may assign across
	// its vWires (nil or empty: any).
	PeerRanges func(domain string) []netip.Prefix

	mu   sync.Mutex
	next map[string]int // per service: where the next new connection starts looking
	live *tally         // the live connections, as Expire's watch last saw them
	// failed: by peer domain, the last request to it that failed in the
	// data plane, until one succeeds (federated domains only: the peer
	// answered first).
	failed map[string]failure
}

// maxFailureMessage bounds the message of a failure kept for diagnose.
const maxFailureMessage = 1024

type failure struct {
	msg string
	at  time.Time
}

// noteDataPlane remembers a cross-domain request's data-plane failure, or
// forgets it when one to the same domain succeeds (err nil).
func (s *Server) noteDataPlane(req *proxypb.NetworkServiceRequest, reason string, err error) {
	name, perr := registry.ParseName(req.GetConnection().GetNetworkService())
	if perr != nil || name.Domain == "" || name.Domain == s.Own || (err != nil && reason != ReasonDataplane) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		delete(s.failed, name.Domain)
		return
	}
	if s.failed == nil {
		s.failed = map[string]failure{}
	}
	// (The message may be a peer's: kept, it is bounded.)
	msg := status.Convert(err).Message()
	if len(msg) > maxFailureMessage {
		msg = strings.ToValidUTF8(msg[:maxFailureMessage], "") + "…"
	}
	s.failed[name.Domain] = failure{msg, time.Now()}
}

// lastFailure is the last request to domain that failed in the data plane
// since one succeeded.
func (s *Server) lastFailure(domain string) (string, time.Time, bool) {
	if s == nil {
		return "", time.Time{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f, ok := s.failed[domain]
	return f.msg, f.at, ok
}

// tally counts the live connections of each requester (for
// PeerMaxConnections) and of each label set of vwire_proxy_connections.
type tally struct {
	of    map[string]liveConn // by id
	held  map[string]int      // by requester
	byKey map[connKey]int
}

type liveConn struct {
	requester string
	key       connKey
}

func newTally() *tally {
	return &tally{of: map[string]liveConn{}, held: map[string]int{}, byKey: map[connKey]int{}}
}

// add counts c and returns its labels.
func (t *tally) add(c *proxypb.Connection, own string, td spiffeid.TrustDomain) connKey {
	lc := liveConn{requester: c.GetRequester(), key: keyOf(c, own, td)}
	t.of[c.GetId()] = lc
	t.held[lc.requester]++
	t.byKey[lc.key]++
	return lc.key
}

// remove stops counting connection id and returns its labels.
func (t *tally) remove(id string) (connKey, bool) {
	lc, ok := t.of[id]
	if !ok {
		return connKey{}, false
	}
	delete(t.of, id)
	if t.held[lc.requester]--; t.held[lc.requester] <= 0 {
		delete(t.held, lc.requester)
	}
	if t.byKey[lc.key]--; t.byKey[lc.key] <= 0 {
		delete(t.byKey, lc.key)
	}
	return lc.key, true
}

// Request implements proxypb.NetworkServiceServer.
func (s *Server) Request(ctx context.Context, req *proxypb.NetworkServiceRequest) (*proxypb.Connection, error) {
	var prev *proxypb.Connection
	begin := time.Now()
	conn, err := s.request(ctx, req, &prev)
	// What the counters, the span and diagnose say of it: the other
	// domain of a connection, the reason of a refusal.
	remote, reason := "", ""
	if err == nil {
		remote = keyOf(conn, s.Own, s.TD).remote
	} else {
		reason = ReasonOf(err)
	}
	s.Metrics.request(begin, remote != s.Own, prev, conn, reason)
	traceRequest(ctx, s.Own, remote, req, conn, reason, err)
	s.noteDataPlane(req, reason, err)
	if s.Observe != nil {
		s.Observe(ctx, req, conn, err, prev != nil)
	}
	return conn, err
}

// request serves req; *stored is set to the connection it refreshes.
func (s *Server) request(ctx context.Context, req *proxypb.NetworkServiceRequest, stored **proxypb.Connection) (*proxypb.Connection, error) {
	if s.Dataplane == nil {
		return nil, status.Error(codes.Unimplemented, "this domain runs without a data plane (--dataplane none, or vwire domain not run as root)")
	}
	if req.GetConnection() == nil {
		return nil, status.Error(codes.InvalidArgument, "the request has no connection")
	}
	conn := proto.Clone(req.GetConnection()).(*proxypb.Connection)
	name, err := registry.ParseName(conn.GetNetworkService())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := registry.ValidateLabels(conn.GetLabels()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "the client's labels: %v", err)
	}
	caller, _ := federation.PeerID(ctx)
	if conn.Id == "" {
		conn.Id = NewID()
	} else if err := ValidID(conn.Id); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	prev, err := s.Conns.Get(ctx, conn.Id)
	if err != nil {
		return nil, WithReason(status.Error(codes.Unavailable, err.Error()), ReasonOther)
	}
	*stored = prev
	if prev != nil && !s.mayChange(ctx, prev) {
		return nil, status.Errorf(codes.PermissionDenied, "connection %q belongs to %s", conn.Id, prev.GetRequester())
	}
	if src := federation.SourceDomain(ctx); src != "" && prev == nil && s.PeerMaxConnections > 0 {
		if n := s.holding(caller.String()); n >= s.PeerMaxConnections {
			return nil, status.Errorf(codes.ResourceExhausted, "domain %q holds %d connections in %q already, its most (--peer-max-connections): close one first", src, n, s.Own)
		}
	}
	client, err := registry.ClientOf(ctx, s.TD)
	if err != nil {
		return nil, registry.ToStatus(err)
	}
	conn.Requester, conn.ClientId = caller.String(), ""
	if !client.IsZero() {
		conn.ClientId = client.String()
	}
	if federation.SourceDomain(ctx) == "" {
		conn.Labels = ClientLabels(conn.Labels, s.Own)
	}
	if name.Domain != "" && name.Domain != s.Own {
		if src := federation.SourceDomain(ctx); src == name.Domain && conn.GetNetworkServiceEndpointName() != "" {
			return s.hosted(ctx, conn, name)
		}
		return s.forward(ctx, req, conn, name, prev)
	}
	return s.local(ctx, conn, name.Service, client, prev)
}

// mayChange reports whether the caller may refresh or close conn.
func (s *Server) mayChange(ctx context.Context, conn *proxypb.Connection) bool {
	caller, _ := federation.PeerID(ctx)
	return caller.String() == conn.GetRequester() || caller == federation.AdminID(s.TD)
}

// segment adds this hop's path segment, or on a refresh renews it and
// drops the ones after it (the next hops add theirs again).
func (s *Server) segment(conn *proxypb.Connection) {
	if conn.Path == nil {
		conn.Path = &proxypb.Path{}
	}
	for i, seg := range conn.Path.Segments {
		if seg.GetName() == "proxy."+s.Own {
			conn.Path.Segments = conn.Path.Segments[:i]
			break
		}
	}
	conn.Path.Segments = append(conn.Path.Segments, &proxypb.PathSegment{
		Name: "proxy." + s.Own, SpiffeId: federation.ProxyID(s.TD).String(),
		Expires: timestamppb.New(time.Now().Add(s.lifetime())),
	})
	conn.Path.Index = uint32(len(conn.Path.Segments) - 1)
}

// rotate starts candidates at the service's turn, and with advance moves
// the turn on.
func (s *Server) rotate(service string, candidates []*registrypb.Endpoint, advance bool) []*registrypb.Endpoint {
	if len(candidates) < 2 {
		return candidates
	}
	s.mu.Lock()
	if s.next == nil {
		s.next = map[string]int{}
	}
	turn := s.next[service] % len(candidates)
	if advance {
		s.next[service] = turn + 1
	}
	s.mu.Unlock()
	return append(candidates[turn:len(candidates):len(candidates)], candidates[:turn]...)
}

func (s *Server) lifetime() time.Duration {
	if s.Lifetime > 0 {
		return s.Lifetime
	}
	return DefaultConnectionLifetime
}

// local serves a request for one of this domain's services.
func (s *Server) local(ctx context.Context, conn *proxypb.Connection, service string, client spiffeid.ID, prev *proxypb.Connection) (*proxypb.Connection, error) {
	svc, candidates, err := s.selectEndpoints(ctx, conn, service, client)
	if err != nil {
		return nil, err
	}
	// New connections take the selected endpoints in turn, as Network
	// Service Mesh's round robin does; a refresh keeps its endpoint while
	// the rules still select it.
	candidates = s.rotate(service, candidates, prev == nil)
	if prev != nil {
		for i, ep := range candidates {
			if endpointRef(ep) == prev.GetNetworkServiceEndpointName() {
				candidates[0], candidates[i] = candidates[i], candidates[0]
			}
		}
	}
	conn.NetworkService = service
	conn.Payload = svc.GetPayload().String()
	conn.PlainVxlan = svc.GetPlainVxlan()
	conn.State = proxypb.State_UP
	s.segment(conn)
	var errs []error
	for _, ep := range candidates {
		c := proto.Clone(conn).(*proxypb.Connection)
		if ep.GetDomain() != "" && ep.GetDomain() != s.Own {
			// Registered here by another domain: its proxy serves it.
			out, err := s.relay(ctx, c, ep)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", endpointRef(ep), err))
				continue
			}
			return out, nil
		}
		c.NetworkServiceEndpointName = ep.GetName()
		if prev != nil && prev.GetNetworkServiceEndpointName() != ep.GetName() {
			// Its endpoint is no longer selected: the old end goes first,
			// as the new one, elsewhere, has the same id.
			_ = s.Dataplane.Remove(ctx, EndpointSide, prev)
			prev = nil
		}
		out, err := s.Dataplane.Apply(ctx, EndpointSide, c)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ep.GetName(), err))
			continue
		}
		if federation.SourceDomain(ctx) == "" {
			// The client is of this domain too: its side is programmed here.
			if out, err = s.Dataplane.Apply(ctx, ClientSide, out); err != nil {
				_ = s.Dataplane.Remove(ctx, EndpointSide, c) // undo; the error below says why
				return nil, WithReason(status.Errorf(codes.Unavailable, "programming the client side of %s: %v", c.GetId(), err), ReasonDataplane)
			}
		}
		if err := s.Conns.Put(ctx, out, int64(s.lifetime()/time.Second)); err != nil {
			_ = s.Dataplane.Remove(ctx, EndpointSide, out) // undo; the error below says why
			_ = s.Dataplane.Remove(ctx, ClientSide, out)   // (missing is fine)
			return nil, status.Errorf(codes.Unavailable, "storing connection %s: %v", out.GetId(), err)
		}
		s.Log.InfoContext(ctx, "connection up", "id", out.GetId(), "service", service, "endpoint", ep.GetName(), "requester", out.GetRequester(), "client", out.GetClientId())
		return out, nil
	}
	return nil, WithReason(status.Errorf(codes.Unavailable, "no endpoint of %q could be programmed: %v", service, errors.Join(errs...)), ReasonDataplane)
}

// selectEndpoints finds service, checks its policy admits client and
// returns the endpoints its rules select for conn's labels (at least one).
func (s *Server) selectEndpoints(ctx context.Context, conn *proxypb.Connection, service string, client spiffeid.ID) (_ *registrypb.NetworkService, _ []*registrypb.Endpoint, err error) {
	ctx, span := tracing.Span(ctx, "select endpoint", attribute.String("vwire.service", service))
	defer span.End()
	defer func() { tracing.Fail(span, err) }()
	svc, err := s.Store.GetService(ctx, service)
	if err != nil {
		return nil, nil, registryStatus(err, ReasonUnknownService)
	}
	if !client.IsZero() {
		if err := registry.Authorize(svc, client, s.TD, s.Peers); err != nil {
			return nil, nil, registry.ToStatus(err)
		}
	}
	candidates, err := s.Store.Find(ctx, service, conn.GetLabels())
	if err != nil {
		return nil, nil, registry.ToStatus(err)
	}
	if len(candidates) == 0 {
		return nil, nil, WithReason(status.Errorf(codes.NotFound, "no endpoint of network service %q matches labels %v", service, conn.GetLabels()), ReasonNoEndpoint)
	}
	span.SetAttributes(attribute.Int("vwire.candidates", len(candidates)))
	return svc, candidates, nil
}

// forward sends a request for service@domain to that domain's proxy and
// programs the client's side here.
func (s *Server) forward(ctx context.Context, req *proxypb.NetworkServiceRequest, conn *proxypb.Connection, name registry.Name, prev *proxypb.Connection) (*proxypb.Connection, error) {
	if src := federation.SourceDomain(ctx); src != "" {
		return nil, status.Errorf(codes.PermissionDenied, "domain %q asked this domain (%q) for %q: ask %q directly", src, s.Own, name, name.Domain)
	}
	md, err := actingFor(ctx, s.TD)
	if err != nil {
		return nil, registry.ToStatus(err)
	}
	pc, err := s.Pool.Conn(ctx, name.Domain)
	if err != nil {
		return nil, toStatus(name.Domain, err)
	}
	out := proto.Clone(conn).(*proxypb.Connection)
	out.NetworkService = name.Service
	out.Requester, out.ClientId = "", ""
	s.segment(out)
	remote, err := proxypb.NewNetworkServiceClient(pc).Request(metadata.NewOutgoingContext(ctx, md),
		&proxypb.NetworkServiceRequest{Connection: out, MechanismPreferences: req.GetMechanismPreferences()})
	if err != nil {
		return nil, toStatus(name.Domain, err)
	}
	remote.NetworkService = name.String()
	if !strings.Contains(remote.GetNetworkServiceEndpointName(), "@") {
		remote.NetworkServiceEndpointName += "@" + name.Domain
	}
	remote.Requester, remote.ClientId = conn.GetRequester(), conn.GetClientId()
	if err := s.inRanges(name.Domain, remote.GetIpContext()); err != nil {
		s.closeRemote(ctx, pc, remote.GetId(), name.Domain)
		return nil, WithReason(status.Error(codes.PermissionDenied, err.Error()), ReasonInvalid)
	}
	got, err := s.Dataplane.Apply(ctx, ClientSide, remote)
	if err == nil {
		err = s.Conns.Put(ctx, got, int64(s.lifetime()/time.Second))
	}
	if err != nil {
		// Leave nothing half-done: take back the endpoint's side.
		s.closeRemote(ctx, pc, remote.GetId(), name.Domain)
		_ = s.Dataplane.Remove(ctx, ClientSide, remote) // best effort; the error below says why
		return nil, WithReason(status.Errorf(codes.Unavailable, "programming the client side of %s: %v", remote.GetId(), err), ReasonDataplane)
	}
	s.Log.InfoContext(ctx, "connection up", "id", got.GetId(), "service", name.String(), "endpoint", got.GetNetworkServiceEndpointName(), "requester", got.GetRequester(), "client", got.GetClientId())
	return got, nil
}

func (s *Server) closeRemote(ctx context.Context, pc *grpc.ClientConn, id, domain string) {
	if _, err := proxypb.NewNetworkServiceClient(pc).Close(ctx, &proxypb.Connection{Id: id}); err != nil && status.Code(err) != codes.NotFound {
		s.Log.WarnContext(ctx, "closing the peer's end failed; it lapses with its lease", "id", id, "domain", domain, "err", err)
	}
}

// relay has the domain that registered ep with this (floating) domain
// serve the connection: its proxy programs the endpoint's side.
func (s *Server) relay(ctx context.Context, conn *proxypb.Connection, ep *registrypb.Endpoint) (*proxypb.Connection, error) {
	pc, err := s.Pool.Conn(ctx, ep.GetDomain())
	if err != nil {
		return nil, toStatus(ep.GetDomain(), err)
	}
	out := proto.Clone(conn).(*proxypb.Connection)
	out.NetworkService = conn.GetNetworkService() + "@" + s.Own
	out.NetworkServiceEndpointName = strings.TrimSuffix(ep.GetName(), "."+ep.GetDomain())
	out.Requester, out.ClientId = "", ""
	remote, err := proxypb.NewNetworkServiceClient(pc).Request(ctx, &proxypb.NetworkServiceRequest{Connection: out})
	if err != nil {
		return nil, toStatus(ep.GetDomain(), err)
	}
	remote.NetworkService = conn.GetNetworkService()
	remote.NetworkServiceEndpointName = endpointRef(ep)
	remote.Requester, remote.ClientId = conn.GetRequester(), conn.GetClientId()
	if err := s.Conns.Put(ctx, remote, int64(s.lifetime()/time.Second)); err != nil {
		s.closeRemote(ctx, pc, remote.GetId(), ep.GetDomain())
		return nil, status.Errorf(codes.Unavailable, "storing connection %s: %v", remote.GetId(), err)
	}
	s.Log.InfoContext(ctx, "connection relayed", "id", remote.GetId(), "service", conn.GetNetworkService(), "endpoint", remote.GetNetworkServiceEndpointName(), "client", remote.GetClientId())
	return remote, nil
}

// hosted serves a floating domain's request for an endpoint this domain
// registered with it: the floating domain selected it and applied the
// service's policy; this domain programs the endpoint's side.
func (s *Server) hosted(ctx context.Context, conn *proxypb.Connection, name registry.Name) (*proxypb.Connection, error) {
	ep, err := s.Store.GetEndpoint(ctx, conn.GetNetworkServiceEndpointName())
	if err != nil {
		return nil, registryStatus(err, ReasonNoEndpoint)
	}
	if !slices.Contains(ep.GetNetworkServiceNames(), name.String()) {
		return nil, status.Errorf(codes.PermissionDenied, "endpoint %q of %q does not provide %q", ep.GetName(), s.Own, name)
	}
	conn.State = proxypb.State_UP
	s.segment(conn)
	out, err := s.Dataplane.Apply(ctx, EndpointSide, conn)
	if err != nil {
		return nil, WithReason(status.Errorf(codes.Unavailable, "programming endpoint %s: %v", ep.GetName(), err), ReasonDataplane)
	}
	if err := s.Conns.Put(ctx, out, int64(s.lifetime()/time.Second)); err != nil {
		_ = s.Dataplane.Remove(ctx, EndpointSide, out) // undo; the error below says why
		return nil, status.Errorf(codes.Unavailable, "storing connection %s: %v", out.GetId(), err)
	}
	s.Log.InfoContext(ctx, "connection up", "id", out.GetId(), "service", name.String(), "endpoint", ep.GetName(), "requester", out.GetRequester(), "client", out.GetClientId())
	return out, nil
}

// endpointRef is how a connection names its endpoint: "name", or
// "name@domain" for one another domain registered here.
func endpointRef(ep *registrypb.Endpoint) string {
	if ep.GetDomain() == "" {
		return ep.GetName()
	}
	return strings.TrimSuffix(ep.GetName(), "."+ep.GetDomain()) + "@" + ep.GetDomain()
}

// Close implements proxypb.NetworkServiceServer.
func (s *Server) Close(ctx context.Context, conn *proxypb.Connection) (*proxypb.CloseResponse, error) {
	stored, err := s.Conns.Get(ctx, conn.GetId())
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	if stored == nil {
		return nil, status.Errorf(codes.NotFound, "connection %q is not known in %q (closed, or expired)", conn.GetId(), s.Own)
	}
	if !s.mayChange(ctx, stored) {
		return nil, status.Errorf(codes.PermissionDenied, "connection %q belongs to %s", conn.GetId(), stored.GetRequester())
	}
	// Where the other end is: the service's domain for a connection this
	// hop forwarded, the endpoint's domain for one it relayed; here for an
	// endpoint it serves.
	side, other := EndpointSide, ""
	name, _ := registry.ParseName(stored.GetNetworkService())
	if _, epDomain, ok := strings.Cut(stored.GetNetworkServiceEndpointName(), "@"); ok {
		if name.Domain != "" && name.Domain != s.Own {
			side, other = ClientSide, name.Domain
		} else {
			side, other = "", epDomain
		}
	}
	// The client's side goes first: the endpoint frees the addresses when
	// its side goes, and another vWire into the same namespace may get
	// them at once.
	if s.Dataplane != nil && (side == ClientSide || other == "") {
		// (For a connection within the domain its client's side is here
		// too; missing is fine, for a client of another domain.)
		if err := s.Dataplane.Remove(ctx, ClientSide, stored); err != nil {
			return nil, status.Errorf(codes.Unavailable, "removing connection %s: %v", stored.GetId(), err)
		}
	}
	if other != "" {
		if pc, err := s.Pool.Conn(ctx, other); err == nil {
			s.closeRemote(ctx, pc, stored.GetId(), other)
		} else {
			s.Log.WarnContext(ctx, "the peer's end cannot be closed now; it lapses with its lease", "id", stored.GetId(), "domain", other, "err", err)
		}
	}
	if s.Dataplane != nil && side == EndpointSide {
		if err := s.Dataplane.Remove(ctx, EndpointSide, stored); err != nil {
			return nil, status.Errorf(codes.Unavailable, "removing connection %s: %v", stored.GetId(), err)
		}
	}
	if _, err := s.Conns.Delete(ctx, stored.GetId()); err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	s.Metrics.closed()
	s.Log.InfoContext(ctx, "connection closed", "id", stored.GetId(), "service", stored.GetNetworkService(), "requester", stored.GetRequester(), "client", stored.GetClientId())
	return &proxypb.CloseResponse{}, nil
}

// Monitor implements proxypb.NetworkServiceServer: the caller's connections
// (every one, for the admin), then their changes.
func (s *Server) Monitor(scope *proxypb.MonitorScope, stream grpc.ServerStreamingServer[proxypb.ConnectionEvent]) error {
	ctx := stream.Context()
	wanted := func(c *proxypb.Connection) bool {
		if len(scope.GetConnectionIds()) > 0 && !slices.Contains(scope.GetConnectionIds(), c.GetId()) {
			return false
		}
		return s.mayChange(ctx, c)
	}
	conns, rev, err := s.Conns.List(ctx)
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	initial := &proxypb.ConnectionEvent{Type: proxypb.ConnectionEvent_INITIAL_STATE_TRANSFER, Connections: map[string]*proxypb.Connection{}}
	visible := map[string]bool{}
	for _, c := range conns {
		if wanted(c) {
			initial.Connections[c.GetId()] = c
			visible[c.GetId()] = true
		}
	}
	if err := stream.Send(initial); err != nil {
		return err
	}
	var sendErr error
	err = s.Conns.Watch(ctx, rev, func(c *proxypb.Connection, deleted bool) {
		if sendErr != nil {
			return
		}
		ev := &proxypb.ConnectionEvent{Type: proxypb.ConnectionEvent_UPDATE, Connections: map[string]*proxypb.Connection{c.GetId(): c}}
		switch {
		case deleted && visible[c.GetId()]:
			ev.Type = proxypb.ConnectionEvent_DELETE
			delete(visible, c.GetId())
		case !deleted && wanted(c):
			visible[c.GetId()] = true
		default:
			return
		}
		sendErr = stream.Send(ev)
	})
	if ctx.Err() != nil {
		return nil
	}
	return errors.Join(sendErr, err)
}

// Expire removes the data-plane ends of connections whose lease lapsed,
// until ctx ends: the clean-up of clients that stopped refreshing. It also
// counts the live connections of each requester, for PeerMaxConnections.
func (s *Server) Expire(ctx context.Context) {
	for ctx.Err() == nil {
		conns, rev, err := s.Conns.List(ctx)
		if err == nil {
			s.countAll(conns)
			err = s.Conns.Watch(ctx, rev, func(c *proxypb.Connection, deleted bool) {
				s.count(c, deleted)
				if deleted && s.Dataplane != nil {
					_ = s.Dataplane.Remove(ctx, EndpointSide, c) // missing is fine
					_ = s.Dataplane.Remove(ctx, ClientSide, c)   // missing is fine
				}
			})
		}
		if ctx.Err() == nil {
			s.Log.Warn("watching connections failed; watching again", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// inRanges says why an answer of peer domain names an address outside the
// ranges the peer may assign (its endpoint's, or its client's here).
func (s *Server) inRanges(domain string, ipc *proxypb.IPContext) error {
	if s.PeerRanges == nil {
		return nil
	}
	ranges := s.PeerRanges(domain)
	if len(ranges) == 0 {
		return nil
	}
	for _, a := range append(slices.Clone(ipc.GetSrcIpAddrs()), ipc.GetDstIpAddrs()...) {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			return fmt.Errorf("domain %q answered address %q, which is not an address with its prefix length", domain, a)
		}
		if !netprefix.Within(p, ranges) {
			return fmt.Errorf("domain %q answered address %s, outside the ranges it may assign (%v; vwire federation add --addresses): refused, nothing programmed", domain, p, ranges)
		}
	}
	return nil
}

// countAll counts the live connections anew.
func (s *Server) countAll(conns []*proxypb.Connection) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.live = newTally()
	for _, c := range conns {
		s.live.add(c, s.Own, s.TD)
	}
	s.Metrics.allConnections(s.live.byKey)
}

// count follows one change of a connection (deleted: only its id is
// known).
func (s *Server) count(c *proxypb.Connection, deleted bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.live == nil {
		s.live = newTally()
	}
	if k, ok := s.live.remove(c.GetId()); ok {
		s.Metrics.connection(k, s.live.byKey[k])
	}
	if !deleted {
		k := s.live.add(c, s.Own, s.TD)
		s.Metrics.connection(k, s.live.byKey[k])
	}
}

// holding is how many live connections requester holds here.
func (s *Server) holding(requester string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.live == nil {
		return 0
	}
	return s.live.held[requester]
}

// ClientLabels are a client's labels with those its domain adds for the
// match rules, as Network Service Mesh's do (registry.LabelDomain,
// registry.LabelCluster), unless the client set them.
func ClientLabels(labels map[string]string, domain string) map[string]string {
	out := make(map[string]string, len(labels)+2)
	for k, v := range labels {
		out[k] = v
	}
	for _, k := range []string{registry.LabelDomain, registry.LabelCluster} {
		if _, ok := out[k]; !ok {
			out[k] = domain
		}
	}
	return out
}

// NewID is a new connection id: 128 random bits, in hex.
func NewID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// ValidID says what is wrong with a connection id a caller chose.
func ValidID(id string) error {
	if len(id) > 128 {
		return fmt.Errorf("connection id %q is longer than 128 characters", id)
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("connection id %q has %q; use letters, digits, '-', '_' and '.'", id, c)
		}
	}
	return nil
}

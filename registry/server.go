package registry

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/registry/registrypb"
)

// NewServer serves the registry API on store for trust domain td; lifetime
// is the default of registrations that name none.
// peers (nil for none) says which federated domains' workloads the
// default per-service policy admits.
func NewServer(store *Store, td spiffeid.TrustDomain, lifetime time.Duration, peers PeerPolicy, log *slog.Logger, opts ...ServerOption) registrypb.RegistryServer {
	s := &server{store: store, td: td, lifetime: lifetime, peers: peers, log: log}
	for _, o := range opts {
		o(s)
	}
	return s
}

// ServerOption changes what a registry server allows.
type ServerOption func(*server)

// ServicesElsewhere has the server refuse to define or delete network
// services, saying where they are defined instead (a Kubernetes domain's
// NetworkService objects, which vwire stores itself).
func ServicesElsewhere(where string) ServerOption {
	return func(s *server) { s.servicesElsewhere = where }
}

// RegistrationsFrom has the server take endpoint registrations from the
// proxies of these federated domains, as a floating domain does; from
// other peers it refuses them (by default, from every peer: a peer's
// endpoint would join this domain's services).
func RegistrationsFrom(domains []string) ServerOption {
	return func(s *server) { s.registrationsFrom = domains }
}

// server serves the registry API on a Store. Each call checks what its
// caller may do: members of the domain's trust domain read and register
// endpoints, its vwire components and admin also define services, and a
// federated domain's proxy (admitted by federation.Binding) may only find.
type server struct {
	registrypb.UnimplementedRegistryServer
	// servicesElsewhere, when set, says where services are defined instead.
	servicesElsewhere string
	// registrationsFrom are the peer domains whose endpoints it takes.
	registrationsFrom []string
	store             *Store
	td                spiffeid.TrustDomain
	lifetime          time.Duration
	peers             PeerPolicy
	log               *slog.Logger
}

// caller is the SPIFFE ID of the client, as mTLS proved it, if it is a
// member of the domain's trust domain.
func (s *server) caller(ctx context.Context) (spiffeid.ID, error) {
	id, ok := federation.PeerID(ctx)
	if !ok {
		return spiffeid.ID{}, errorf(ErrPermission, "the connection carries no SPIFFE ID")
	}
	if !id.MemberOf(s.td) {
		return id, errorf(ErrPermission, "%s is not a member of trust domain %q", id, s.td)
	}
	return id, nil
}

// reader admits members of the trust domain and the proxies of federated
// domains that federation.Binding verified.
func (s *server) reader(ctx context.Context) error {
	if federation.SourceDomain(ctx) != "" {
		return nil
	}
	_, err := s.caller(ctx)
	return err
}

// controlPlane admits the domain's own vwire components and admin, the only
// callers that may define network services.
func (s *server) controlPlane(ctx context.Context) (spiffeid.ID, error) {
	id, err := s.caller(ctx)
	if err != nil {
		return id, err
	}
	if !strings.HasPrefix(id.Path(), "/vwire/") {
		return id, errorf(ErrPermission, "%s may not change network services (only %s/vwire/... may)", id, s.td.IDString())
	}
	return id, nil
}

func (s *server) RegisterService(ctx context.Context, req *registrypb.RegisterServiceRequest) (*registrypb.NetworkService, error) {
	id, err := s.serviceWriter(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.store.PutService(ctx, req.GetService()); err != nil {
		return nil, err
	}
	s.log.Info("network service registered", "name", req.GetService().GetName(), "by", id)
	return req.GetService(), nil
}

func (s *server) GetService(ctx context.Context, req *registrypb.GetServiceRequest) (*registrypb.NetworkService, error) {
	if err := s.reader(ctx); err != nil {
		return nil, err
	}
	return s.store.GetService(ctx, req.GetName())
}

func (s *server) ListServices(ctx context.Context, _ *registrypb.ListServicesRequest) (*registrypb.ListServicesResponse, error) {
	if err := s.reader(ctx); err != nil {
		return nil, err
	}
	svcs, err := s.store.ListServices(ctx)
	return &registrypb.ListServicesResponse{Services: svcs}, err
}

func (s *server) DeleteService(ctx context.Context, req *registrypb.DeleteServiceRequest) (*registrypb.DeleteServiceResponse, error) {
	id, err := s.serviceWriter(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.store.DeleteService(ctx, req.GetName()); err != nil {
		return nil, err
	}
	s.log.Info("network service deleted", "name", req.GetName(), "by", id)
	return &registrypb.DeleteServiceResponse{}, nil
}

// serviceWriter is who may define and delete services: the control plane,
// where the domain's services are not defined elsewhere.
func (s *server) serviceWriter(ctx context.Context) (spiffeid.ID, error) {
	id, err := s.controlPlane(ctx)
	if err != nil {
		return id, err
	}
	if s.servicesElsewhere != "" {
		return spiffeid.ID{}, errorf(ErrPermission, "this domain's network services are %s; change them there (vwire stores what they say)", s.servicesElsewhere)
	}
	return id, nil
}

// registrant is who may register, refresh and remove endpoints: a member
// of the trust domain; or a federated domain's proxy (verified by
// federation.Binding) that registers its endpoints with this domain as a
// floating domain, whose endpoint names are qualified with its domain
// ("nse-1" of a.example is "nse-1.a.example" here). name maps a name as the
// caller gives it to the name stored.
func (s *server) registrant(ctx context.Context) (owner spiffeid.ID, src string, name func(string) string, err error) {
	if src = federation.SourceDomain(ctx); src != "" {
		owner, _ = federation.PeerID(ctx)
		if !slices.Contains(s.registrationsFrom, src) {
			return owner, src, nil, errorf(ErrPermission, "domain %q may not register endpoints here: this domain takes registrations only from the peers it names (--registrations-from; now %v)", src, s.registrationsFrom)
		}
		return owner, src, func(n string) string { return n + "." + src }, nil
	}
	owner, err = s.caller(ctx)
	return owner, "", func(n string) string { return n }, err
}

// MaxEndpointLifetime is the longest a registration lives unless
// refreshed, whatever it asks for (or --endpoint-lifetime, if that is
// longer): what a workload or a peer registers lapses within it of their
// going away.
const MaxEndpointLifetime = time.Hour

func (s *server) RegisterEndpoint(ctx context.Context, req *registrypb.RegisterEndpointRequest) (*registrypb.Endpoint, error) {
	id, src, name, err := s.registrant(ctx)
	if err != nil {
		return nil, err
	}
	ep := proto.Clone(req.GetEndpoint()).(*registrypb.Endpoint)
	ep.Domain = ""
	// Only a node's gateway says where it serves the endpoint; the proxy
	// will expect the ID it connected with.
	ep.GatewayId = ""
	if caller, ok := federation.PeerID(ctx); ok && src == "" && caller.MemberOf(s.td) && strings.HasPrefix(caller.Path(), "/vwire/gateway/") && ep.GetGateway() != "" {
		ep.GatewayId = caller.String()
	} else {
		ep.Gateway = ""
	}
	if src != "" {
		ep.Name, ep.Domain = name(ep.GetName()), src
		for _, svc := range ep.GetNetworkServiceNames() {
			if n, err := ParseName(svc); err == nil && n.Domain != "" {
				return nil, errorf(ErrInvalid, "domain %q registered %q with this domain: name this domain's services without a domain", src, svc)
			}
		}
	}
	lifetime := req.GetLifetime().AsDuration()
	if lifetime <= 0 {
		lifetime = s.lifetime
	}
	lifetime = min(lifetime, max(MaxEndpointLifetime, s.lifetime))
	ep, err = s.store.RegisterEndpoint(ctx, id.String(), ep, lifetime)
	if err != nil {
		return nil, err
	}
	s.log.Info("endpoint registered", "name", ep.GetName(), "services", ep.GetNetworkServiceNames(), "owner", id, "lifetime", lifetime)
	return ep, nil
}

func (s *server) RefreshEndpoint(ctx context.Context, req *registrypb.RefreshEndpointRequest) (*registrypb.Endpoint, error) {
	id, _, name, err := s.registrant(ctx)
	if err != nil {
		return nil, err
	}
	return s.store.RefreshEndpoint(ctx, id.String(), name(req.GetName()))
}

func (s *server) UnregisterEndpoint(ctx context.Context, req *registrypb.UnregisterEndpointRequest) (*registrypb.UnregisterEndpointResponse, error) {
	id, _, name, err := s.registrant(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.store.UnregisterEndpoint(ctx, id.String(), name(req.GetName())); err != nil {
		return nil, err
	}
	s.log.Info("endpoint unregistered", "name", name(req.GetName()), "by", id)
	return &registrypb.UnregisterEndpointResponse{}, nil
}

func (s *server) GetEndpoint(ctx context.Context, req *registrypb.GetEndpointRequest) (*registrypb.Endpoint, error) {
	if err := s.reader(ctx); err != nil {
		return nil, err
	}
	return s.store.GetEndpoint(ctx, req.GetName())
}

func (s *server) ListEndpoints(ctx context.Context, req *registrypb.ListEndpointsRequest) (*registrypb.ListEndpointsResponse, error) {
	if err := s.reader(ctx); err != nil {
		return nil, err
	}
	eps, err := s.store.ListEndpoints(ctx, req.GetService())
	return &registrypb.ListEndpointsResponse{Endpoints: eps}, err
}

func (s *server) Find(req *registrypb.FindRequest, stream grpc.ServerStreamingServer[registrypb.FindResponse]) error {
	if err := s.reader(stream.Context()); err != nil {
		return err
	}
	name, err := ParseName(req.GetService())
	if err != nil {
		return errorf(ErrInvalid, "%v", err)
	}
	if name.Domain != "" {
		return errorf(ErrInvalid, "%q names another domain; ask this domain's proxy, which forwards it", name)
	}
	// The per-service policy: who may connect may also look up.
	client, err := ClientOf(stream.Context(), s.td)
	if err != nil {
		return err
	}
	if !client.IsZero() {
		svc, err := s.store.GetService(stream.Context(), name.Service)
		if err != nil {
			return err
		}
		if err := Authorize(svc, client, s.td, s.peers); err != nil {
			return err
		}
	}
	if !req.GetWatch() {
		eps, err := s.store.Find(stream.Context(), name.Service, req.GetSourceLabels())
		if err != nil {
			return err
		}
		return stream.Send(&registrypb.FindResponse{Event: &registrypb.FindResponse_Snapshot{Snapshot: &registrypb.ListEndpointsResponse{Endpoints: eps}}})
	}
	err = s.store.Watch(stream.Context(), name.Service, req.GetSourceLabels(), stream.Send)
	if stream.Context().Err() != nil {
		return nil // the client went away
	}
	return err
}

func (s *server) Apply(ctx context.Context, req *registrypb.ApplyRequest) (*registrypb.ApplyResponse, error) {
	id, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	if len(req.GetServices()) > 0 {
		if _, err := s.serviceWriter(ctx); err != nil {
			return nil, err
		}
	}
	for _, ae := range req.GetEndpoints() {
		if err := ValidateStaticEndpoint(ae.GetEndpoint()); err != nil {
			return nil, err
		}
	}
	resp, err := s.store.Apply(ctx, id.String(), req, nil)
	if err != nil {
		return nil, err
	}
	s.log.Info("applied", "services", len(resp.GetServices()), "endpoints", len(resp.GetEndpoints()), "by", id)
	return resp, nil
}

// grpcCode maps the package's errors to gRPC status codes: the one place
// where that happens.
func grpcCode(err error) codes.Code {
	switch {
	case errors.Is(err, ErrInvalid), errors.Is(err, ErrInvalidName), errors.Is(err, ErrManifest):
		return codes.InvalidArgument
	case errors.Is(err, ErrNotFound):
		return codes.NotFound
	case errors.Is(err, ErrPermission):
		return codes.PermissionDenied
	case errors.Is(err, ErrConflict):
		return codes.Aborted
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	default:
		return codes.Unavailable // etcd could not be reached or failed
	}
}

// ToStatus turns one of the package's errors into a gRPC status. A
// refusal by a service's policy says so (an ErrorInfo of ReasonDomain,
// reason ReasonPolicy), for the counters and vwire diagnose of the
// client's domain.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	st := status.New(grpcCode(err), err.Error())
	if errors.Is(err, ErrPolicy) {
		if d, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: ReasonPolicy, Domain: ReasonDomain}); derr == nil {
			st = d
		}
	}
	return st.Err()
}

// What a refusal's ErrorInfo says: its domain, and the reason of a
// refusal by a service's policy.
const (
	ReasonDomain = "vwire.io"
	ReasonPolicy = "policy"
)

// ErrorInterceptors turn the package's errors into gRPC statuses for unary
// and streaming calls.
func ErrorInterceptors() (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			resp, err := h(ctx, req)
			return resp, ToStatus(err)
		}, func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			return ToStatus(h(srv, ss))
		}
}

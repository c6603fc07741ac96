package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

// Registry is the registry API as a domain serves it: calls about its own
// services go to the local registry; a Find for service@other-domain goes
// to that domain's proxy, and its answers come back with @other-domain on
// every name.
type Registry struct {
	registrypb.RegistryServer
	own  string
	td   spiffeid.TrustDomain
	pool *Pool
}

// NewRegistry wraps the local registry server of domain own, of trust
// domain td.
func NewRegistry(local registrypb.RegistryServer, own string, td spiffeid.TrustDomain, pool *Pool) *Registry {
	return &Registry{RegistryServer: local, own: own, td: td, pool: pool}
}

// Find implements registrypb.RegistryServer.
func (r *Registry) Find(req *registrypb.FindRequest, stream grpc.ServerStreamingServer[registrypb.FindResponse]) error {
	name, err := registry.ParseName(req.GetService())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if err := registry.ValidateLabels(req.GetSourceLabels()); err != nil {
		return status.Errorf(codes.InvalidArgument, "source labels: %v", err)
	}
	ctx := stream.Context()
	if federation.SourceDomain(ctx) == "" { // as a request from here would be
		req = proto.Clone(req).(*registrypb.FindRequest)
		req.SourceLabels = ClientLabels(req.GetSourceLabels(), r.own)
	}
	if name.Domain == "" || name.Domain == r.own {
		local := proto.Clone(req).(*registrypb.FindRequest)
		local.Service = name.Service
		return r.RegistryServer.Find(local, stream)
	}
	if src := federation.SourceDomain(ctx); src != "" {
		// A peer asks only about this domain; no forwarding on behalf of others.
		return status.Errorf(codes.PermissionDenied, "domain %q asked this domain (%q) about %q: ask %q directly", src, r.own, name, name.Domain)
	}
	conn, err := r.pool.Conn(ctx, name.Domain)
	if err != nil {
		return toStatus(name.Domain, err)
	}
	md, err := actingFor(ctx, r.td)
	if err != nil {
		return registry.ToStatus(err)
	}
	remote, err := registrypb.NewRegistryClient(conn).Find(metadata.NewOutgoingContext(ctx, md), &registrypb.FindRequest{
		Service: name.Service, SourceLabels: req.GetSourceLabels(), Watch: req.GetWatch(),
	})
	if err != nil {
		return toStatus(name.Domain, err)
	}
	for {
		resp, err := remote.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return toStatus(name.Domain, err)
		}
		qualify(resp, name.Domain)
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// actingFor names, for a peer domain, the workload a forwarded call acts
// for: the client registry.ClientOf validated (a local workload itself, or
// the one a local vwire component named; never what a workload claims), or
// the domain's admin itself, whom other domains' policies name as they name
// workloads.
func actingFor(ctx context.Context, td spiffeid.TrustDomain) (metadata.MD, error) {
	client, err := registry.ClientOf(ctx, td)
	if err != nil {
		return nil, err
	}
	if id, ok := federation.PeerID(ctx); ok && client.IsZero() && id == federation.AdminID(td) {
		client = id
	}
	md := metadata.MD{}
	if !client.IsZero() {
		md.Set(registry.ClientHeader, client.String())
	}
	return md, nil
}

// qualify appends @domain to the names in a peer's answer.
func qualify(resp *registrypb.FindResponse, domain string) {
	var eps []*registrypb.Endpoint
	switch e := resp.GetEvent().(type) {
	case *registrypb.FindResponse_Snapshot:
		eps = e.Snapshot.GetEndpoints()
	case *registrypb.FindResponse_Update:
		eps = []*registrypb.Endpoint{e.Update}
	case *registrypb.FindResponse_Delete:
		eps = []*registrypb.Endpoint{e.Delete}
	}
	for _, ep := range eps {
		ep.Name += "@" + domain
		for i, s := range ep.NetworkServiceNames {
			ep.NetworkServiceNames[i] = s + "@" + domain
		}
	}
}

// toStatus is where the proxy's errors become gRPC statuses, each specific
// enough for a user to act on.
func toStatus(domain string, err error) error {
	switch {
	case errors.Is(err, ErrUnknownDomain):
		return WithReason(status.Error(codes.NotFound, err.Error()), ReasonPeerUnreachable)
	case errors.Is(err, ErrNotFederated):
		return WithReason(status.Error(codes.FailedPrecondition, err.Error()), ReasonNotFederated)
	case errors.Is(err, ErrDNS):
		return WithReason(status.Error(codes.Unavailable, err.Error()), ReasonPeerUnreachable)
	}
	if s, ok := status.FromError(err); ok {
		reason, given := reasonGiven(s)
		if s.Code() == codes.Unavailable || s.Code() == codes.DeadlineExceeded {
			if !given {
				reason = ReasonPeerUnreachable
			}
			return WithReason(status.Errorf(s.Code(), "peer %q unreachable: %s", domain, s.Message()), reason)
		}
		return WithReason(status.Errorf(s.Code(), "%s: %s", domain, s.Message()), reason)
	}
	return status.Error(codes.Unknown, fmt.Sprintf("%s: %v", domain, err))
}

// foreign groups an endpoint's network services of other domains by domain,
// without the domain.
func (r *Registry) foreign(ep *registrypb.Endpoint) map[string][]string {
	out := map[string][]string{}
	for _, s := range ep.GetNetworkServiceNames() {
		if n, err := registry.ParseName(s); err == nil && n.Domain != "" && n.Domain != r.own {
			out[n.Domain] = append(out[n.Domain], n.Service)
		}
	}
	return out
}

// RegisterEndpoint registers the endpoint here and, for each service of
// another (floating) domain it provides, with that domain: there it is
// "<name>.<this domain>", served through this domain's proxy. A refusal
// anywhere undoes the registration everywhere.
func (r *Registry) RegisterEndpoint(ctx context.Context, req *registrypb.RegisterEndpointRequest) (*registrypb.Endpoint, error) {
	ep, err := r.RegistryServer.RegisterEndpoint(ctx, req)
	if err != nil || federation.SourceDomain(ctx) != "" {
		return ep, err
	}
	var done []string
	for domain, services := range r.foreign(ep) {
		if err := r.registerRemote(ctx, domain, services, req); err != nil {
			for _, d := range append(done, domain) {
				r.unregisterRemote(ctx, d, ep.GetName())
			}
			_, _ = r.RegistryServer.UnregisterEndpoint(ctx, &registrypb.UnregisterEndpointRequest{Name: ep.GetName()}) // undoing
			return nil, err
		}
		done = append(done, domain)
	}
	return ep, nil
}

func (r *Registry) registerRemote(ctx context.Context, domain string, services []string, req *registrypb.RegisterEndpointRequest) error {
	conn, err := r.pool.Conn(ctx, domain)
	if err != nil {
		return toStatus(domain, err)
	}
	remote := proto.Clone(req.GetEndpoint()).(*registrypb.Endpoint)
	remote.NetworkServiceNames = services
	if _, err := registrypb.NewRegistryClient(conn).RegisterEndpoint(ctx, &registrypb.RegisterEndpointRequest{Endpoint: remote, Lifetime: req.GetLifetime()}); err != nil {
		return toStatus(domain, err)
	}
	return nil
}

func (r *Registry) unregisterRemote(ctx context.Context, domain, name string) {
	if conn, err := r.pool.Conn(ctx, domain); err == nil {
		_, _ = registrypb.NewRegistryClient(conn).UnregisterEndpoint(ctx, &registrypb.UnregisterEndpointRequest{Name: name}) // it lapses with its lease
	}
}

// RefreshEndpoint refreshes the registration here and in every floating
// domain it was registered with, registering it again where it was lost.
func (r *Registry) RefreshEndpoint(ctx context.Context, req *registrypb.RefreshEndpointRequest) (*registrypb.Endpoint, error) {
	ep, err := r.RegistryServer.RefreshEndpoint(ctx, req)
	if err != nil || federation.SourceDomain(ctx) != "" {
		return ep, err
	}
	for domain, services := range r.foreign(ep) {
		conn, err := r.pool.Conn(ctx, domain)
		if err != nil {
			return nil, toStatus(domain, err)
		}
		_, err = registrypb.NewRegistryClient(conn).RefreshEndpoint(ctx, &registrypb.RefreshEndpointRequest{Name: ep.GetName()})
		if status.Code(err) == codes.NotFound {
			lifetime := durationpb.New(time.Until(ep.GetExpiresAt().AsTime()).Round(time.Second))
			err = r.registerRemote(ctx, domain, services, &registrypb.RegisterEndpointRequest{Endpoint: ep, Lifetime: lifetime})
		}
		if err != nil {
			return nil, toStatus(domain, err)
		}
	}
	return ep, nil
}

// UnregisterEndpoint removes the registration here and from the floating
// domains it was registered with.
func (r *Registry) UnregisterEndpoint(ctx context.Context, req *registrypb.UnregisterEndpointRequest) (*registrypb.UnregisterEndpointResponse, error) {
	if federation.SourceDomain(ctx) == "" {
		if ep, err := r.RegistryServer.GetEndpoint(ctx, &registrypb.GetEndpointRequest{Name: req.GetName()}); err == nil {
			for domain := range r.foreign(ep) {
				r.unregisterRemote(ctx, domain, ep.GetName())
			}
		}
	}
	return r.RegistryServer.UnregisterEndpoint(ctx, req)
}

package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

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
	pool *Pool
}

// NewRegistry wraps the local registry server.
func NewRegistry(local registrypb.RegistryServer, own string, pool *Pool) *Registry {
	return &Registry{RegistryServer: local, own: own, pool: pool}
}

// Find implements registrypb.RegistryServer.
func (r *Registry) Find(req *registrypb.FindRequest, stream grpc.ServerStreamingServer[registrypb.FindResponse]) error {
	name, err := registry.ParseName(req.GetService())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if name.Domain == "" || name.Domain == r.own {
		local := proto.Clone(req).(*registrypb.FindRequest)
		local.Service = name.Service
		return r.RegistryServer.Find(local, stream)
	}
	ctx := stream.Context()
	if src := federation.SourceDomain(ctx); src != "" {
		// A peer asks only about this domain; no forwarding on behalf of others.
		return status.Errorf(codes.PermissionDenied, "domain %q asked this domain (%q) about %q: ask %q directly", src, r.own, name, name.Domain)
	}
	conn, err := r.pool.Conn(ctx, name.Domain)
	if err != nil {
		return toStatus(name.Domain, err)
	}
	out := metadata.NewOutgoingContext(ctx, actingFor(ctx))
	remote, err := registrypb.NewRegistryClient(conn).Find(out, &registrypb.FindRequest{
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

// actingFor names the workload a forwarded call acts for: the local
// caller itself, or the workload a local vwire component named.
func actingFor(ctx context.Context) metadata.MD {
	md := metadata.MD{}
	if named := metadata.ValueFromIncomingContext(ctx, registry.ClientHeader); len(named) > 0 {
		md.Set(registry.ClientHeader, named[0])
		return md
	}
	if id, ok := federation.PeerID(ctx); ok && !strings.HasPrefix(id.Path(), "/vwire/") {
		md.Set(registry.ClientHeader, id.String())
	}
	return md
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
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, ErrNotFederated):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, ErrDNS):
		return status.Error(codes.Unavailable, err.Error())
	}
	if s, ok := status.FromError(err); ok {
		if s.Code() == codes.Unavailable {
			return status.Errorf(codes.Unavailable, "peer %q unreachable: %s", domain, s.Message())
		}
		return status.Errorf(s.Code(), "%s: %s", domain, s.Message())
	}
	return status.Error(codes.Unknown, fmt.Sprintf("%s: %v", domain, err))
}

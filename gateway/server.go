package gateway

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vwire/vwire/gateway/dataplane"
	"github.com/vwire/vwire/gateway/handover"
	"github.com/vwire/vwire/proxy"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

// Server is what workloads on the node reach through the gateway's unix
// socket: the network service API (request, refresh, close a vWire) and
// endpoint registration. The socket is the node's trust boundary: only its
// owner (root) may connect, and the kernel tells the gateway each caller's
// uid, which names the workload to the domain's policy as
// spiffe://TD/workload/uid/UID. The gateway passes each call on to the
// domain's proxy over mutual TLS, naming that workload. A caller in a
// container hands its network namespace on the connection (package
// handover); one on the host names it.
type Server struct {
	proxypb.UnimplementedNetworkServiceServer
	registrypb.UnimplementedRegistryServer
	G  *Gateway
	TD spiffeid.TrustDomain
	// Proxy is the mTLS connection to the domain's proxy.
	Proxy *grpc.ClientConn
	// Check says why a workload's interface cannot be made (a missing
	// namespace, a name in use), before anything is programmed.
	Check func(netns, iface string) error
	// SpiffeID is the SVID the gateway's calls carry, for its path segment.
	SpiffeID string
	// Options are added to the socket's gRPC server's (traces).
	Options []grpc.ServerOption
}

// Listen serves s on the unix socket path (replacing a stale one), owner
// only.
func (s *Server) Listen(path string) (*grpc.Server, net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, nil, fmt.Errorf("gateway socket: %w", err)
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return nil, nil, fmt.Errorf("gateway socket: %w", err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, nil, fmt.Errorf("gateway socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		return nil, nil, fmt.Errorf("gateway socket: %w", err)
	}
	srv := grpc.NewServer(slices.Concat(s.Options, []grpc.ServerOption{grpc.Creds(handover.ReceiveNS())})...)
	proxypb.RegisterNetworkServiceServer(srv, s)
	registrypb.RegisterRegistryServer(srv, s)
	go srv.Serve(lis)
	return srv, lis, nil
}

// caller is what the kernel says of the connection a call came on.
func caller(ctx context.Context) *handover.Handed {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	h, _ := p.AuthInfo.(*handover.Handed)
	return h
}

// workload is the caller's identity, from its credentials.
func (s *Server) workload(ctx context.Context) (spiffeid.ID, error) {
	h := caller(ctx)
	if h == nil || h.UID < 0 {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "the gateway could not read the caller's credentials")
	}
	return spiffeid.FromSegments(s.TD, "workload", "uid", fmt.Sprint(h.UID))
}

// upstream is ctx for a call to the proxy on behalf of the caller.
func (s *Server) upstream(ctx context.Context) (context.Context, error) {
	id, err := s.workload(ctx)
	if err != nil {
		return nil, err
	}
	return metadata.NewOutgoingContext(ctx, metadata.Pairs(registry.ClientHeader, id.String())), nil
}

// Request implements proxypb.NetworkServiceServer: a workload asks for (or
// refreshes) a vWire into its namespace.
func (s *Server) Request(ctx context.Context, req *proxypb.NetworkServiceRequest) (*proxypb.Connection, error) {
	up, err := s.upstream(ctx)
	if err != nil {
		return nil, err
	}
	if req.GetConnection() == nil {
		return nil, status.Error(codes.InvalidArgument, "the request has no connection")
	}
	conn := proto.Clone(req.GetConnection()).(*proxypb.Connection)
	k := conn.GetMechanism().GetKernel()
	for _, m := range req.GetMechanismPreferences() {
		if k != nil {
			break
		}
		k = m.GetKernel()
	}
	k = proto.Clone(k).(*proxypb.KernelInterface)
	if k == nil {
		k = &proxypb.KernelInterface{}
	}
	if k.InterfaceName == "" {
		k.InterfaceName = dataplane.DefaultInterface
	}
	if conn.Id == "" {
		conn.Id = proxy.NewID()
	} else if err := proxy.ValidID(conn.Id); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if _, err := ParseAccept(k.GetAcceptRoutes()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	conn.Labels = withLabel(conn.Labels, registry.LabelNode, s.G.Node)
	id := endID(proxy.ClientSide, conn.Id)
	_, known := s.G.reconciler.Get(id)
	if k.Netns == "" {
		// The namespace the caller handed; a refresh pins it again (a
		// gateway restarted in a new container lost its pins).
		path, err := s.G.pin(caller(ctx), id)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "the request's network namespace: %v (vwire connect inside the workload's namespace hands it; on a host, give --netns NAME)", err)
		}
		k.Netns = path
		if !known {
			defer func() {
				if _, ok := s.G.reconciler.Get(id); !ok {
					s.G.unpin(dataplane.End{NetNS: path})
				}
			}()
		}
	} else if err := s.G.checkNamespace(k.Netns); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if !known && s.Check != nil {
		if err := s.Check(k.GetNetns(), k.GetInterfaceName()); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	if !s.G.Addr.IsValid() {
		return nil, status.Error(codes.FailedPrecondition, "the gateway has no tunnel address: give --gateway-address (there is no default route to take it from)")
	}
	key, _ := base64.StdEncoding.DecodeString(s.G.PublicKey())
	w := &proxypb.WireGuard{SrcIp: s.G.Addr.String(), SrcPublicKey: key}
	if s.G.Inner.IsValid() {
		w.SrcInnerIp = s.G.Inner.String()
	}
	conn.Mechanism = &proxypb.Mechanism{Type: &proxypb.Mechanism_Wireguard{Wireguard: w}}
	conn.Path = &proxypb.Path{Segments: []*proxypb.PathSegment{{Name: "gateway." + s.G.Node, SpiffeId: s.SpiffeID, Url: s.G.URL,
		Expires: timestamppb.New(time.Now().Add(time.Minute))}}}
	s.G.Expect(conn.Id, k)
	defer s.G.Forget(conn.Id)
	out, err := proxypb.NewNetworkServiceClient(s.Proxy).Request(up, &proxypb.NetworkServiceRequest{Connection: conn})
	if err != nil {
		return nil, err
	}
	if segs := out.GetPath().GetSegments(); len(segs) > 1 {
		segs[0].Expires = segs[1].Expires // the gateway keeps it as long as its proxy
	}
	return out, nil // its mechanism is the tunnel's: the workload knows its interface
}

// Close implements proxypb.NetworkServiceServer.
func (s *Server) Close(ctx context.Context, conn *proxypb.Connection) (*proxypb.CloseResponse, error) {
	up, err := s.upstream(ctx)
	if err != nil {
		return nil, err
	}
	return proxypb.NewNetworkServiceClient(s.Proxy).Close(up, &proxypb.Connection{Id: conn.GetId()})
}

// RegisterEndpoint implements registrypb.RegistryServer: a workload on this
// node registers itself as an endpoint, reached at its unix socket.
func (s *Server) RegisterEndpoint(ctx context.Context, req *registrypb.RegisterEndpointRequest) (*registrypb.Endpoint, error) {
	up, err := s.upstream(ctx)
	if err != nil {
		return nil, err
	}
	if u := req.GetEndpoint().GetUrl(); !strings.HasPrefix(u, "unix://") {
		return nil, status.Errorf(codes.InvalidArgument, "endpoint URL %q: an endpoint behind a gateway serves on a unix socket on its node (unix://PATH)", u)
	}
	req = proto.Clone(req).(*registrypb.RegisterEndpointRequest)
	req.Endpoint.Gateway = s.G.URL // the proxy programs its end through this gateway
	req.Endpoint.Labels = withLabel(req.Endpoint.Labels, registry.LabelNode, s.G.Node)
	return registrypb.NewRegistryClient(s.Proxy).RegisterEndpoint(up, req)
}

// withLabel is labels with k=v added, unless labels has k already (the
// workload's own word wins).
func withLabel(labels map[string]string, k, v string) map[string]string {
	if _, ok := labels[k]; ok || v == "" {
		return labels
	}
	if labels == nil {
		labels = map[string]string{}
	}
	labels[k] = v
	return labels
}

// RefreshEndpoint implements registrypb.RegistryServer.
func (s *Server) RefreshEndpoint(ctx context.Context, req *registrypb.RefreshEndpointRequest) (*registrypb.Endpoint, error) {
	up, err := s.upstream(ctx)
	if err != nil {
		return nil, err
	}
	return registrypb.NewRegistryClient(s.Proxy).RefreshEndpoint(up, req)
}

// UnregisterEndpoint implements registrypb.RegistryServer.
func (s *Server) UnregisterEndpoint(ctx context.Context, req *registrypb.UnregisterEndpointRequest) (*registrypb.UnregisterEndpointResponse, error) {
	up, err := s.upstream(ctx)
	if err != nil {
		return nil, err
	}
	return registrypb.NewRegistryClient(s.Proxy).UnregisterEndpoint(up, req)
}

package proxy

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/internal/conncache"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry/registrypb"
)

// Gateways is the proxy's Dataplane when nodes run their own gateways
// (`vwire gateway`): each end goes to the gateway that programs it — the
// client's, named by the connection's first path segment; the endpoint's,
// named by the endpoint's registration and then by its path segment —
// over mTLS, the gateway proving the SPIFFE ID the segment or registration
// gives. A segment or registration without a URL is the gateway inside
// this process, Local.
type Gateways struct {
	Local    Dataplane // nil: this process has none
	TD       spiffeid.TrustDomain
	Source   federation.Source
	Endpoint func(ctx context.Context, name string) (*registrypb.Endpoint, error)
	// DialOptions are added to every connection's (metrics).
	DialOptions []grpc.DialOption

	conns conncache.Cache // by URL and ID
}

// gatewayRef is where an end's gateway is: URL empty for Local. For the
// endpoint's side it also has the endpoint's own URL, which the gateway
// then need not look up again.
type gatewayRef struct{ url, id, endpointURL string }

// Apply implements Dataplane.
func (g *Gateways) Apply(ctx context.Context, side Side, conn *proxypb.Connection) (*proxypb.Connection, error) {
	ref, err := g.applyRef(ctx, side, conn)
	if err != nil {
		return nil, err
	}
	if ref.url == "" {
		if g.Local == nil {
			return nil, fmt.Errorf("this domain runs no gateway of its own, and the %s's gateway gave no address", side)
		}
		return g.Local.Apply(ctx, side, conn)
	}
	c, err := g.dial(ref)
	if err != nil {
		return nil, err
	}
	out, err := proxypb.NewGatewayClient(c).Apply(ctx, &proxypb.GatewayRequest{Side: string(side), Connection: conn, EndpointUrl: ref.endpointURL})
	if err != nil {
		return nil, fmt.Errorf("gateway %s at %s: %w", ref.id, ref.url, err)
	}
	return out, nil
}

// Remove implements Dataplane.
func (g *Gateways) Remove(ctx context.Context, side Side, conn *proxypb.Connection) error {
	ref := g.removeRef(ctx, side, conn)
	if ref.url == "" {
		if g.Local == nil {
			return nil
		}
		return g.Local.Remove(ctx, side, conn)
	}
	c, err := g.dial(ref)
	if err != nil {
		return err
	}
	if _, err := proxypb.NewGatewayClient(c).Remove(ctx, &proxypb.GatewayRequest{Side: string(side), Connection: conn}); err != nil {
		return fmt.Errorf("gateway %s at %s: %w", ref.id, ref.url, err)
	}
	return nil
}

// applyRef finds the gateway of a new or refreshed end. The client's is
// the caller itself: the first segment must name the ID it connected with.
func (g *Gateways) applyRef(ctx context.Context, side Side, conn *proxypb.Connection) (gatewayRef, error) {
	if side == EndpointSide {
		ep, err := g.Endpoint(ctx, conn.GetNetworkServiceEndpointName())
		if err != nil {
			return gatewayRef{}, err
		}
		return gatewayRef{url: ep.GetGateway(), id: ep.GetGatewayId(), endpointURL: ep.GetUrl()}, nil
	}
	segs := conn.GetPath().GetSegments()
	if len(segs) == 0 || segs[0].GetUrl() == "" {
		return gatewayRef{}, nil
	}
	ref := gatewayRef{url: segs[0].GetUrl(), id: segs[0].GetSpiffeId()}
	if caller, ok := federation.PeerID(ctx); !ok || caller.String() != ref.id {
		return gatewayRef{}, fmt.Errorf("the client's gateway segment names %s, but the request came from %s", ref.id, caller)
	}
	return ref, nil
}

// removeRef finds the gateway of an end from the stored connection: the
// client's is its first segment, the endpoint's the last gateway segment
// after it (else the endpoint's registration, if it is still there).
func (g *Gateways) removeRef(ctx context.Context, side Side, conn *proxypb.Connection) gatewayRef {
	segs := conn.GetPath().GetSegments()
	if side == ClientSide {
		// A client of another domain has its end there: nothing here.
		if len(segs) > 0 && strings.HasPrefix(segs[0].GetName(), "gateway.") && g.ours(segs[0].GetSpiffeId()) {
			return gatewayRef{url: segs[0].GetUrl(), id: segs[0].GetSpiffeId()}
		}
		return gatewayRef{}
	}
	for i := len(segs) - 1; i > 0; i-- {
		if strings.HasPrefix(segs[i].GetName(), "gateway.") {
			return gatewayRef{url: segs[i].GetUrl(), id: segs[i].GetSpiffeId()}
		}
	}
	if ep, err := g.Endpoint(ctx, conn.GetNetworkServiceEndpointName()); err == nil {
		return gatewayRef{url: ep.GetGateway(), id: ep.GetGatewayId()}
	}
	return gatewayRef{}
}

// ours reports whether id is of this trust domain.
func (g *Gateways) ours(id string) bool {
	parsed, err := spiffeid.FromString(id)
	return err == nil && parsed.MemberOf(g.TD)
}

// dial returns the pooled connection to a gateway, which must prove it is
// a gateway of this trust domain with the expected ID.
func (g *Gateways) dial(ref gatewayRef) (*grpc.ClientConn, error) {
	id, err := spiffeid.FromString(ref.id)
	if err != nil || !id.MemberOf(g.TD) || !strings.HasPrefix(id.Path(), "/vwire/gateway/") {
		return nil, fmt.Errorf("%q at %s is not a gateway of trust domain %q", ref.id, ref.url, g.TD)
	}
	return g.conns.Get(ref.url+" "+ref.id, func() (*grpc.ClientConn, error) {
		c, err := grpc.NewClient(ref.url, federation.WithReconnect(slices.Concat(g.DialOptions, []grpc.DialOption{grpc.WithTransportCredentials(federation.ClientCredentials(g.Source, federation.AuthorizeOf(id)))})...)...)
		if err != nil {
			return nil, fmt.Errorf("gateway %s at %s: %w", ref.id, ref.url, err)
		}
		return c, nil
	})
}

// Close closes the connections to gateways.
func (g *Gateways) Close() error {
	g.conns.Close()
	return nil
}

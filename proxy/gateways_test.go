package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry/registrypb"
)

// from is a context whose mTLS peer proved id.
func from(id string) context.Context {
	u, _ := url.Parse(id)
	cert := &x509.Certificate{URIs: []*url.URL{u}}
	return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}}})
}

// The client's end goes to the gateway its first segment names only when
// that gateway made the request; ends without an address go to the local
// gateway; nothing is dialled that is not a gateway of the domain.
func TestGatewaysRouting(t *testing.T) {
	local := NewFakeDataplane()
	g := &Gateways{Local: local, TD: spiffeid.RequireTrustDomainFromString("b.example"),
		Endpoint: func(_ context.Context, name string) (*registrypb.Endpoint, error) {
			return &registrypb.Endpoint{Name: name, Gateway: "10.0.0.9:7003", GatewayId: "spiffe://b.example/ns/x/sa/not-a-gateway"}, nil
		}}
	conn := func(url, id string) *proxypb.Connection {
		return &proxypb.Connection{Id: "c1", NetworkService: "svc", NetworkServiceEndpointName: "ep1",
			Path: &proxypb.Path{Segments: []*proxypb.PathSegment{{Name: "gateway.n1", SpiffeId: id, Url: url}}}}
	}
	gw := "spiffe://b.example/vwire/gateway/n1"
	if _, err := g.Apply(from("spiffe://b.example/vwire/gateway/n2"), ClientSide, conn("10.0.0.1:7003", gw)); err == nil || !strings.Contains(err.Error(), "the request came from spiffe://b.example/vwire/gateway/n2") {
		t.Errorf("a segment naming another gateway than the caller: %v", err)
	}
	if _, err := g.Apply(from(gw), ClientSide, conn("", gw)); err != nil || !strings.Contains(local.String(), "client c1") {
		t.Errorf("a segment without an address goes to the local gateway: %v\n%s", err, local)
	}
	if _, err := g.Apply(from(gw), EndpointSide, conn("", gw)); err == nil || !strings.Contains(err.Error(), "is not a gateway of trust domain") {
		t.Errorf("an endpoint whose recorded gateway ID is no gateway's: %v", err)
	}
	g.Local = nil
	if _, err := g.Apply(from(gw), ClientSide, conn("", gw)); err == nil || !strings.Contains(err.Error(), "runs no gateway of its own") {
		t.Errorf("no local gateway: %v", err)
	}
	// Closing, in the endpoint's domain, a vWire whose client is of another
	// domain: its client's end is there, not here, and the close goes on.
	if err := g.Remove(context.Background(), ClientSide, conn("10.0.0.1:7003", "spiffe://a.example/vwire/gateway/n1")); err != nil {
		t.Errorf("removing the client's end of another domain's client: %v", err)
	}
}

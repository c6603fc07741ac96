package registry

import (
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/registry/registrypb"
)

// Dial connects to the registry of the caller's own trust domain at addr
// over mutual TLS. The server must prove it is that domain's registry or
// proxy (`vwire domain` serves both roles on one listener).
func Dial(addr string, src federation.Source) (registrypb.RegistryClient, *grpc.ClientConn, error) {
	svid, err := src.GetX509SVID()
	if err != nil {
		return nil, nil, fmt.Errorf("registry %s: %w: %v", addr, federation.ErrNoSVID, err)
	}
	td := svid.ID.TrustDomain()
	authz := tlsconfig.AuthorizeOneOf(federation.RegistryID(td), federation.ProxyID(td))
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(federation.ClientCredentials(src, authz)))
	if err != nil {
		return nil, nil, fmt.Errorf("registry %s: %w", addr, err)
	}
	return registrypb.NewRegistryClient(conn), conn, nil
}

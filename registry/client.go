package registry

import (
	"fmt"

	"google.golang.org/grpc"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/registry/registrypb"
)

// Dial connects to the registry of the caller's own trust domain at addr
// over mutual TLS (see federation.DialDomain).
func Dial(addr string, src federation.Source) (registrypb.RegistryClient, *grpc.ClientConn, error) {
	conn, err := federation.DialDomain(addr, src)
	if err != nil {
		return nil, nil, fmt.Errorf("registry %w", err)
	}
	return registrypb.NewRegistryClient(conn), conn, nil
}

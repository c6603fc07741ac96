package federation

import (
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The path of each vwire component's SPIFFE ID within its trust domain.
const (
	RegistryPath = "/vwire/registry"
	ProxyPath    = "/vwire/proxy"
	AdminPath    = "/vwire/admin"
	gatewayPath  = "/vwire/gateway/"
)

// RegistryID is the SPIFFE ID of a trust domain's registry.
func RegistryID(td spiffeid.TrustDomain) spiffeid.ID { return mustID(td, RegistryPath) }

// ProxyID is the SPIFFE ID of a trust domain's proxy.
func ProxyID(td spiffeid.TrustDomain) spiffeid.ID { return mustID(td, ProxyPath) }

// AdminID is the SPIFFE ID of the credential that `vwire domain` writes for
// the command-line client.
func AdminID(td spiffeid.TrustDomain) spiffeid.ID { return mustID(td, AdminPath) }

// GatewayID is the SPIFFE ID of the gateway on node.
func GatewayID(td spiffeid.TrustDomain, node string) (spiffeid.ID, error) {
	id, err := spiffeid.FromPath(td, gatewayPath+node)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("gateway node name %q: %w", node, err)
	}
	return id, nil
}

func mustID(td spiffeid.TrustDomain, path string) spiffeid.ID {
	id, err := spiffeid.FromPath(td, path)
	if err != nil {
		panic(err) // the paths above are constants known to be valid
	}
	return id
}

package registry

import (
	"context"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/metadata"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/registry/registrypb"
)

// ClientHeader is the gRPC metadata key in which a vwire component (a
// gateway, or a peer domain's proxy) names the workload it acts for.
const ClientHeader = "vwire-client-id"

// PeerPolicy says which federated trust domains' workloads the default
// policy lets connect.
type PeerPolicy interface {
	AllowsWorkloads(spiffeid.TrustDomain) bool
}

// validatePattern checks one allowed_spiffe_ids entry.
func validatePattern(p string) error {
	id := strings.TrimSuffix(p, "/*")
	if strings.HasSuffix(p, "/*") && strings.Count(id, "/") == 2 { // spiffe://td/*
		_, err := spiffeid.TrustDomainFromString(id)
		return err
	}
	_, err := spiffeid.FromString(id)
	return err
}

// allowedBy reports whether id matches a pattern: exact, or below a path
// ending in "/*".
func allowedBy(id spiffeid.ID, patterns []string) bool {
	s := id.String()
	for _, p := range patterns {
		if prefix, ok := strings.CutSuffix(p, "*"); ok && strings.HasSuffix(prefix, "/") {
			if strings.HasPrefix(s, prefix) {
				return true
			}
		} else if s == p {
			return true
		}
	}
	return false
}

// Authorize decides whether client may connect to svc in the domain of
// trust domain own: by the service's allowed_spiffe_ids, or, without
// them, if client is of own or of a federated trust domain whose workloads
// peers allows (nil: none).
func Authorize(svc *registrypb.NetworkService, client spiffeid.ID, own spiffeid.TrustDomain, peers PeerPolicy) error {
	if ids := svc.GetAllowedSpiffeIds(); len(ids) > 0 {
		if allowedBy(client, ids) {
			return nil
		}
		return errorf(ErrPolicy, "%s may not connect to network service %q (its policy allows %s)", client, svc.GetName(), strings.Join(ids, ", "))
	}
	if client.MemberOf(own) || peers != nil && peers.AllowsWorkloads(client.TrustDomain()) {
		return nil
	}
	return errorf(ErrPolicy, "%s may not connect to network service %q: trust domain %q is neither this domain's nor a federated domain allowed to connect",
		client, svc.GetName(), client.TrustDomain())
}

// ClientOf is the workload a call to a domain of trust domain own acts
// for, which the policy judges: a local workload itself; the workload a
// local vwire component names in ClientHeader; for a federated domain's
// proxy (verified by federation.Binding), the workload of its own trust
// domain it names, or the proxy itself. It is zero for a call of the
// domain's own control plane or admin that names no workload: the policy
// does not restrict those.
func ClientOf(ctx context.Context, own spiffeid.TrustDomain) (spiffeid.ID, error) {
	named := metadata.ValueFromIncomingContext(ctx, ClientHeader)
	caller, ok := federation.PeerID(ctx)
	if !ok {
		return spiffeid.ID{}, errorf(ErrPermission, "the connection carries no SPIFFE ID")
	}
	if src := federation.SourceDomain(ctx); src != "" {
		if len(named) == 0 {
			return caller, nil
		}
		id, err := spiffeid.FromString(named[0])
		if err != nil {
			return spiffeid.ID{}, errorf(ErrInvalid, "%s: %v", ClientHeader, err)
		}
		// A proxy vouches only for its own domain's workloads.
		if id.TrustDomain() != caller.TrustDomain() {
			return spiffeid.ID{}, errorf(ErrPermission, "the proxy of %q may not act for %s of another trust domain", src, id)
		}
		return id, nil
	}
	if !caller.MemberOf(own) {
		return spiffeid.ID{}, errorf(ErrPermission, "%s is not a member of trust domain %q", caller, own)
	}
	if !strings.HasPrefix(caller.Path(), "/vwire/") {
		return caller, nil // a workload asks for itself
	}
	if len(named) == 0 {
		return spiffeid.ID{}, nil
	}
	id, err := spiffeid.FromString(named[0])
	if err != nil {
		return spiffeid.ID{}, errorf(ErrInvalid, "%s: %v", ClientHeader, err)
	}
	return id, nil
}

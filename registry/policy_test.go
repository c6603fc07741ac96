package registry

import (
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/vwire/vwire/registry/registrypb"
)

type peersAllowing []string

func (p peersAllowing) AllowsWorkloads(td spiffeid.TrustDomain) bool {
	for _, name := range p {
		if td.Name() == name {
			return true
		}
	}
	return false
}

func TestAuthorize(t *testing.T) {
	own := spiffeid.RequireTrustDomainFromString("b.example")
	open := &registrypb.NetworkService{Name: "open"}
	restricted := &registrypb.NetworkService{Name: "restricted", AllowedSpiffeIds: []string{
		"spiffe://a.example/ns/prod/*", "spiffe://b.example/ns/ops/sa/admin", "spiffe://d.example/*",
	}}
	peers := peersAllowing{"a.example"}
	for _, c := range []struct {
		svc    *registrypb.NetworkService
		client string
		ok     bool
	}{
		{open, "spiffe://b.example/ns/x", true},  // own domain
		{open, "spiffe://a.example/ns/x", true},  // federated, allowed
		{open, "spiffe://c.example/ns/x", false}, // federated trust-only, or unknown
		{restricted, "spiffe://a.example/ns/prod/sa/web", true},
		{restricted, "spiffe://a.example/ns/prod", false}, // the prefix is below the path, not the path
		{restricted, "spiffe://a.example/ns/production/x", false},
		{restricted, "spiffe://b.example/ns/ops/sa/admin", true},
		{restricted, "spiffe://b.example/ns/ops/sa/admin2", false},
		{restricted, "spiffe://b.example/ns/x", false}, // the policy overrides the default
		{restricted, "spiffe://d.example/anything", true},
	} {
		err := Authorize(c.svc, spiffeid.RequireFromString(c.client), own, peers)
		if (err == nil) != c.ok {
			t.Errorf("%s → %s: %v, want allowed=%v", c.client, c.svc.GetName(), err, c.ok)
		}
		if err != nil && (!errors.Is(err, ErrPermission) || !strings.Contains(err.Error(), c.client)) {
			t.Errorf("refusal does not name the client: %v", err)
		}
	}
	for _, bad := range []string{"a.example/*", "spiffe://A.example/*", "spiffe://a.example/x/**", "spiffe://a.example/x/"} {
		svc := &registrypb.NetworkService{Name: "s", Payload: registrypb.Payload_IP, AllowedSpiffeIds: []string{bad}}
		if err := ValidateService(svc); err == nil || !strings.Contains(err.Error(), "allowedSpiffeIDs[0]") {
			t.Errorf("pattern %q: %v", bad, err)
		}
	}
}

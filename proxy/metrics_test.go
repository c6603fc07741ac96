package proxy

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/vwire/vwire/proxy/proxypb"
)

// A connection's remote_domain label: the other domain, never this one's
// own trust domain when that is not its name.
func TestConnectionLabels(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("corp.internal")
	for _, c := range []struct {
		conn *proxypb.Connection
		want connKey
	}{
		{&proxypb.Connection{NetworkService: "svc", Requester: "spiffe://corp.internal/workload/uid/0", State: proxypb.State_UP}, connKey{"svc", "a.example", "up"}},
		{&proxypb.Connection{NetworkService: "svc@b.example", Requester: "spiffe://corp.internal/workload/uid/0"}, connKey{"svc", "b.example", "state_unspecified"}},
		{&proxypb.Connection{NetworkService: "svc", Requester: "spiffe://b.example/vwire/proxy", State: proxypb.State_DOWN}, connKey{"svc", "b.example", "down"}},
		{&proxypb.Connection{NetworkService: "svc", NetworkServiceEndpointName: "ep@c.example", Requester: "spiffe://corp.internal/vwire/proxy"}, connKey{"svc", "c.example", "state_unspecified"}},
	} {
		if got := keyOf(c.conn, "a.example", td); got != c.want {
			t.Errorf("%v: %v, want %v", c.conn, got, c.want)
		}
	}
}

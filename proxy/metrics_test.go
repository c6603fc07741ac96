package proxy

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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

// A data-plane failure is kept for diagnose until a request to that
// domain succeeds, its message bounded (it may be a peer's); other
// refusals and requests within the domain are not kept.
func TestDataPlaneFailureKept(t *testing.T) {
	s := &Server{Own: "a.example"}
	req := &proxypb.NetworkServiceRequest{Connection: &proxypb.Connection{NetworkService: "svc@b.example"}}
	long := WithReason(status.Error(codes.Unavailable, strings.Repeat("x", 100000)), ReasonDataplane)
	s.noteDataPlane(req, ReasonOf(long), long)
	if msg, _, ok := s.lastFailure("b.example"); !ok || len(msg) > maxFailureMessage+len("…") {
		t.Fatalf("kept %v, a message of %d bytes", ok, len(msg))
	}
	policy := WithReason(status.Error(codes.PermissionDenied, "no"), ReasonPolicy)
	s.noteDataPlane(&proxypb.NetworkServiceRequest{Connection: &proxypb.Connection{NetworkService: "svc@c.example"}}, ReasonOf(policy), policy)
	if _, _, ok := s.lastFailure("c.example"); ok {
		t.Error("a policy refusal was kept as a data-plane failure")
	}
	s.noteDataPlane(req, "", nil)
	if _, _, ok := s.lastFailure("b.example"); ok {
		t.Error("a success did not clear the domain's failure")
	}
}

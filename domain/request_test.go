package domain

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/proxy"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

// withFake gives the domain a fake data plane and returns it.
func withFake(fake *proxy.FakeDataplane) func(*Config) {
	return func(c *Config) { c.Dataplane = fake }
}

// gateway is the domain's gateway on node n1, asking for its workloads.
func (d *testDomain) gateway(t *testing.T) proxypb.NetworkServiceClient {
	return d.asWorkload(t, "/vwire/gateway/n1")
}

func request(t *testing.T, c proxypb.NetworkServiceClient, service, workload string, labels map[string]string, id string) (*proxypb.Connection, error) {
	t.Helper()
	cx := metadata.AppendToOutgoingContext(ctx(t), registry.ClientHeader, workload)
	return c.Request(cx, &proxypb.NetworkServiceRequest{Connection: &proxypb.Connection{Id: id, NetworkService: service, Labels: labels}})
}

func twoDomains(t *testing.T) (a, b *testDomain, fa, fb *proxy.FakeDataplane) {
	zone := e2e.NewZone(t)
	fa, fb = proxy.NewFakeDataplane(), proxy.NewFakeDataplane()
	a = startWith(t, "a.example", withFake(fa), func(c *Config) { c.DNSServer = zone.Addr })
	b = startWith(t, "b.example", withFake(fb), func(c *Config) { c.DNSServer = zone.Addr })
	publish(t, zone, "a.example", 10, a.Addr().String())
	publish(t, zone, "b.example", 10, b.Addr().String())
	a.federate(t, b)
	b.federate(t, a)
	applyFile(t, b, "../registry/testdata/secure-intranet-connectivity.yaml", "../registry/testdata/endpoints.yaml")
	return a, b, fa, fb
}

// A client in a connects to a service of b: the reference manifest's
// selection across domains, one path segment per hop, both ends
// programmed, and close removes the state in both domains.
func TestCrossDomainRequestAndClose(t *testing.T) {
	a, b, fa, fb := twoDomains(t)
	gw := a.gateway(t)
	fw, err := request(t, gw, "secure-intranet-connectivity@b.example", "spiffe://a.example/ns/default/sa/fw", map[string]string{"app": "firewall"}, "")
	if err != nil {
		t.Fatal(err)
	}
	web, err := request(t, gw, "secure-intranet-connectivity@b.example", "spiffe://a.example/ns/default/sa/web", map[string]string{"app": "web"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if fw.GetNetworkServiceEndpointName() != "vpn-gateway-1@b.example" || web.GetNetworkServiceEndpointName() != "firewall-1@b.example" {
		t.Errorf("selection: firewall → %s, web → %s", fw.GetNetworkServiceEndpointName(), web.GetNetworkServiceEndpointName())
	}
	var hops []string
	for _, s := range fw.GetPath().GetSegments() {
		hops = append(hops, s.GetName()+"="+s.GetSpiffeId())
	}
	if strings.Join(hops, " ") != "proxy.a.example=spiffe://a.example/vwire/proxy proxy.b.example=spiffe://b.example/vwire/proxy" {
		t.Errorf("path %v", hops)
	}
	// Each domain records the original requester, not only the hop that
	// asked it (a's gateway, b's peer proxy).
	for _, d := range []*testDomain{a, b} {
		c, err := d.NetworkService.Conns.Get(ctx(t), fw.GetId())
		if err != nil || c.GetClientId() != "spiffe://a.example/ns/default/sa/fw" {
			t.Errorf("%s records client %q (%v), want a's workload", d.Name, c.GetClientId(), err)
		}
	}
	if c, _ := b.NetworkService.Conns.Get(ctx(t), fw.GetId()); c.GetRequester() != "spiffe://a.example/vwire/proxy" {
		t.Errorf("b records requester %q, want a's proxy", c.GetRequester())
	}
	wantA := "client " + fw.GetId() + " secure-intranet-connectivity@b.example -> vpn-gateway-1@b.example"
	wantB := "endpoint " + fw.GetId() + " secure-intranet-connectivity -> vpn-gateway-1"
	if !strings.Contains(fa.String(), wantA) || !strings.Contains(fb.String(), wantB) {
		t.Errorf("data planes:\na: %s\nb: %s", fa, fb)
	}

	if _, err := gw.Close(ctx(t), fw); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(fa.String(), fw.GetId()) || strings.Contains(fb.String(), fw.GetId()) {
		t.Errorf("after close:\na: %s\nb: %s", fa, fb)
	}
	for _, d := range []*testDomain{a, b} {
		if c, err := d.NetworkService.Conns.Get(ctx(t), fw.GetId()); c != nil || err != nil {
			t.Errorf("%s still stores the closed connection: %v %v", d.Name, c, err)
		}
	}
	if _, err := gw.Close(ctx(t), fw); status.Code(err) != codes.NotFound {
		t.Errorf("closing twice: %v", err)
	}
	// The other connection is untouched.
	if !strings.Contains(fb.String(), web.GetId()) {
		t.Errorf("closing one connection removed another:\n%s", fb)
	}
}

// b's proxy restarts mid-connection: the connection is still known,
// refreshable and closable.
func TestProxyRestartKeepsConnections(t *testing.T) {
	zone := e2e.NewZone(t)
	fa, fb := proxy.NewFakeDataplane(), proxy.NewFakeDataplane()
	a := startWith(t, "a.example", withFake(fa), func(c *Config) { c.DNSServer = zone.Addr })
	bAddr := freeAddr(t)
	bDir := filepath.Join(t.TempDir(), "b")
	startB := func() *testDomain {
		return startWith(t, "b.example", withFake(fb), func(c *Config) { c.DNSServer, c.Listen, c.DataDir = zone.Addr, bAddr, bDir })
	}
	b := startB()
	publish(t, zone, "b.example", 10, bAddr)
	a.federate(t, b)
	b.federate(t, a)
	applyFile(t, b, "../registry/testdata/secure-intranet-connectivity.yaml", "../registry/testdata/endpoints.yaml")
	gw := a.gateway(t)
	conn, err := request(t, gw, "secure-intranet-connectivity@b.example", "spiffe://a.example/ns/x", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	b = startB()
	if c, err := b.NetworkService.Conns.Get(ctx(t), conn.GetId()); c == nil || err != nil {
		t.Fatalf("restarted b does not know the connection: %v", err)
	}
	again, err := request(t, gw, "secure-intranet-connectivity@b.example", "spiffe://a.example/ns/x", nil, conn.GetId())
	if err != nil || again.GetNetworkServiceEndpointName() != conn.GetNetworkServiceEndpointName() {
		t.Fatalf("refresh after b's restart: %v, %v", again, err)
	}
	if _, err := gw.Close(ctx(t), again); err != nil {
		t.Fatalf("close after b's restart: %v", err)
	}
	if c, _ := b.NetworkService.Conns.Get(ctx(t), conn.GetId()); c != nil {
		t.Error("b still stores the closed connection")
	}
}

// Errors reach the requester specifically, and a refusal leaves nothing
// programmed or stored.
func TestRequestErrors(t *testing.T) {
	a, b, fa, fb := twoDomains(t)
	strict := `
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: strict}
spec:
  payload: IP
  allowedSpiffeIDs: [spiffe://a.example/ns/prod/*]
  matches:
    - source_selector: {app: x}
      routes: [{destination_selector: {app: nothing}}]
`
	objs, err := registry.DecodeManifests(strings.NewReader(strict))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := registryClient(b).Apply(ctx(t), objs); err != nil {
		t.Fatal(err)
	}
	gw := a.gateway(t)
	for _, tc := range []struct {
		service, workload string
		labels            map[string]string
		code              codes.Code
		want              string
	}{
		{"strict@b.example", "spiffe://a.example/ns/dev/x", nil, codes.PermissionDenied, "spiffe://a.example/ns/dev/x may not connect"},
		{"strict@b.example", "spiffe://a.example/ns/prod/x", map[string]string{"app": "x"}, codes.NotFound, `no endpoint of network service "strict" matches labels`},
		{"nope@b.example", "spiffe://a.example/ns/x", nil, codes.NotFound, `network service "nope" is not registered`},
		{"svc@nowhere.example", "spiffe://a.example/ns/x", nil, codes.NotFound, "unknown domain"},
		{"Bad@b.example", "spiffe://a.example/ns/x", nil, codes.InvalidArgument, "upper case"},
	} {
		_, err := request(t, gw, tc.service, tc.workload, tc.labels, "")
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s as %s: %v\nwant %s with %q", tc.service, tc.workload, err, tc.code, tc.want)
		}
	}
	// The client side fails to program: the endpoint's side is taken back.
	fa.Fail = status.Error(codes.Internal, "no more interfaces")
	if _, err := request(t, gw, "secure-intranet-connectivity@b.example", "spiffe://a.example/ns/x", nil, "half"); err == nil {
		t.Fatal("a failed client side was reported as a connection")
	}
	if fa.String() != "" || fb.String() != "" {
		t.Errorf("a refused request left state behind:\na: %s\nb: %s", fa, fb)
	}
	if c, _ := b.NetworkService.Conns.Get(ctx(t), "half"); c != nil {
		t.Error("b stores the half-made connection")
	}
	// Another requester may not take over a connection.
	fa.Fail = nil
	mine, err := request(t, gw, "secure-intranet-connectivity@b.example", "spiffe://a.example/ns/x", nil, "mine")
	if err != nil {
		t.Fatal(err)
	}
	other := a.asWorkload(t, "/ns/other")
	if _, err := other.Close(ctx(t), mine); status.Code(err) != codes.PermissionDenied {
		t.Errorf("another workload closed the connection: %v", err)
	}
}

// A domain without a data plane refuses requests rather than pretend.
func TestRequestWithoutDataplane(t *testing.T) {
	a := start(t, "a.example")
	applyReference(t, a)
	_, err := request(t, a.gateway(t), "secure-intranet-connectivity", "spiffe://a.example/x", map[string]string{"app": "firewall"}, "")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "this domain runs no gateway of its own") {
		t.Errorf("%v", err)
	}
}

// New connections take the selected endpoints in turn (Network Service
// Mesh's round robin); a refresh keeps the endpoint it has.
func TestNewConnectionsTakeEndpointsInTurn(t *testing.T) {
	a, b, _, _ := twoDomains(t)
	second := `
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {name: firewall-2, labels: {app: firewall}}
spec:
  networkServiceNames: [secure-intranet-connectivity]
  url: tcp://10.0.0.3:5001
`
	objs, err := registry.DecodeManifests(strings.NewReader(second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := registryClient(b).Apply(ctx(t), objs); err != nil {
		t.Fatal(err)
	}
	gw := a.gateway(t)
	var got []string
	var first *proxypb.Connection
	for i := range 4 {
		c, err := request(t, gw, "secure-intranet-connectivity@b.example", "spiffe://a.example/ns/web", map[string]string{"app": "web"}, "")
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = c
		}
		got = append(got, c.GetNetworkServiceEndpointName())
	}
	if got[0] == got[1] || got[0] != got[2] || got[1] != got[3] {
		t.Errorf("four new connections went to %v, want the two firewalls in turn", got)
	}
	for range 2 {
		again, err := request(t, gw, "secure-intranet-connectivity@b.example", "spiffe://a.example/ns/web", map[string]string{"app": "web"}, first.GetId())
		if err != nil || again.GetNetworkServiceEndpointName() != got[0] {
			t.Fatalf("refresh moved the connection from %s: %v, %v", got[0], again.GetNetworkServiceEndpointName(), err)
		}
	}
}

// The labels a client's domain adds (as Network Service Mesh's do) reach
// the service's domain, whose rules select by them: here the endpoint set
// aside for the client's domain.
func TestClientLabelsAcrossDomains(t *testing.T) {
	a, b, _, _ := twoDomains(t)
	objs, err := registry.DecodeManifests(strings.NewReader(`
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: per-domain}
spec:
  payload: IP
  matches:
    - routes:
        - destination_selector: {serves: "{{.clusterName}}", from: "{{.domain}}"}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {name: for-a, labels: {serves: a.example, from: a.example}}
spec: {network_service_names: [per-domain], url: "tcp://10.0.0.1:5001"}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {name: for-c, labels: {serves: c.example, from: c.example}}
spec: {network_service_names: [per-domain], url: "tcp://10.0.0.2:5001"}
`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := registrypb.NewRegistryClient(b.admin).Apply(ctx(t), objs); err != nil {
		t.Fatal(err)
	}
	conn, err := request(t, a.gateway(t), "per-domain@b.example", "spiffe://a.example/ns/x", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if conn.GetNetworkServiceEndpointName() != "for-a@b.example" {
		t.Errorf("a's client got %s, want for-a@b.example", conn.GetNetworkServiceEndpointName())
	}
	// A look-up previews the same selection.
	if got, err := a.findAs(t, "per-domain@b.example", nil); err != nil || len(got) != 1 || !strings.HasPrefix(got[0], "for-a@b.example") {
		t.Errorf("find from a: %v, %v", got, err)
	}
}

// The proxy's observer (a Kubernetes domain's pod events) is told which
// requests set a connection up and which refreshed one, although a node's
// gateway names its connections before it asks.
func TestObserveRequests(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	fake := proxy.NewFakeDataplane()
	a := startWith(t, "a.example", withFake(fake), func(c *Config) {
		c.ObserveRequests = func(_ context.Context, req *proxypb.NetworkServiceRequest, conn *proxypb.Connection, err error, refresh bool) {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, fmt.Sprintf("%s refresh=%v failed=%v", req.GetConnection().GetNetworkService(), refresh, err != nil))
		}
	})
	applyFile(t, a, "../registry/testdata/secure-intranet-connectivity.yaml", "../registry/testdata/endpoints.yaml")
	gw := a.gateway(t)
	id := proxy.NewID()
	for range 2 {
		if _, err := request(t, gw, "secure-intranet-connectivity", "spiffe://a.example/ns/web", map[string]string{"app": "web"}, id); err != nil {
			t.Fatal(err)
		}
	}
	request(t, gw, "no-such-service", "spiffe://a.example/ns/web", nil, proxy.NewID())
	mu.Lock()
	defer mu.Unlock()
	want := "secure-intranet-connectivity refresh=false failed=false,secure-intranet-connectivity refresh=true failed=false,no-such-service refresh=false failed=true"
	if got := strings.Join(seen, ","); got != want {
		t.Errorf("observed:\n%s\nwant:\n%s", got, want)
	}
}

package sandbox

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vwire/vwire/domain"
	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/federation/federationpb"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const reference = `
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: secure-intranet-connectivity}
spec:
  payload: IP
  matches:
    - match:
      sourceSelector: {app: firewall}
      route:
        - destination:
          destinationSelector: {app: vpn-gateway}
    - match:
      route:
        - destination:
          destinationSelector: {app: firewall}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {name: firewall-1, labels: {app: firewall}}
spec: {networkServiceNames: [secure-intranet-connectivity]}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {name: vpn-gateway-1, labels: {app: vpn-gateway}}
spec: {networkServiceNames: [secure-intranet-connectivity]}
`

// picky selects nobody for the tier=gold clients it admits; private
// admits one client only, not the sandbox's.
const (
	picky = `
---
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: picky}
spec:
  payload: IP
  matches: [{source_selector: {tier: gold}, routes: [{destination_selector: {app: nothing}}]}]
`
	private = `---
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: private}
spec:
  payload: IP
  allowedSpiffeIDs: [spiffe://b.example/ns/only]
`
)

// The two-domain scenario: the reference manifest across domains, a path
// segment per hop, close removes the state in both domains.
func TestTwoDomains(t *testing.T) {
	s := New(t, "a.example", "b.example")
	a, b := s.D("a.example"), s.D("b.example")
	b.Apply(reference)

	fw, err := a.Request("secure-intranet-connectivity@b.example", "spiffe://a.example/ns/fw", map[string]string{"app": "firewall"}, "")
	if err != nil {
		t.Fatal(err)
	}
	web, err := a.Request("secure-intranet-connectivity@b.example", "spiffe://a.example/ns/web", map[string]string{"app": "web"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if fw.GetNetworkServiceEndpointName() != "vpn-gateway-1@b.example" || web.GetNetworkServiceEndpointName() != "firewall-1@b.example" {
		t.Errorf("firewall → %s, web → %s", fw.GetNetworkServiceEndpointName(), web.GetNetworkServiceEndpointName())
	}
	if n := len(fw.GetPath().GetSegments()); n != 2 {
		t.Errorf("%d path segments, want one per proxy", n)
	}
	want := fmt.Sprintf("endpoint %s secure-intranet-connectivity -> firewall-1\nendpoint %s secure-intranet-connectivity -> vpn-gateway-1",
		web.GetId(), fw.GetId())
	if fw.GetId() < web.GetId() {
		want = fmt.Sprintf("endpoint %s secure-intranet-connectivity -> vpn-gateway-1\nendpoint %s secure-intranet-connectivity -> firewall-1",
			fw.GetId(), web.GetId())
	}
	if got := b.Dataplane.String(); got != want {
		t.Errorf("b's data plane:\n%s\nwant\n%s", got, want)
	}
	if err := a.Close(fw); err != nil {
		t.Fatal(err)
	}
	if a.Knows(fw.GetId()) || b.Knows(fw.GetId()) || strings.Contains(a.Dataplane.String()+b.Dataplane.String(), fw.GetId()) {
		t.Error("close left state behind")
	}
}

// Four domains: two with endpoints of the same service, two clients.
func TestFourDomains(t *testing.T) {
	s := New(t, "public.example", "private.example", "vim.example", "dc.example")
	svc := "apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: app}\nspec: {payload: IP}\n---\n" +
		"apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: nse}\nspec: {networkServiceNames: [app]}\n"
	s.D("vim.example").Apply(svc)
	s.D("dc.example").Apply(svc)
	for _, client := range []string{"public.example", "private.example"} {
		for _, target := range []string{"vim.example", "dc.example"} {
			conn, err := s.D(client).Request("app@"+target, "spiffe://"+client+"/ns/app", nil, "")
			if err != nil {
				t.Fatalf("%s → app@%s: %v", client, target, err)
			}
			if conn.GetNetworkServiceEndpointName() != "nse@"+target {
				t.Errorf("%s → %s", client, conn.GetNetworkServiceEndpointName())
			}
		}
	}
	if got := strings.Count(s.D("dc.example").Dataplane.String(), "\n") + 1; got != 2 {
		t.Errorf("dc programs %d ends, want 2", got)
	}
}

// b's proxy restarts mid-connection: still known, refreshable, closable.
func TestProxyRestart(t *testing.T) {
	s := New(t, "a.example", "b.example")
	a, b := s.D("a.example"), s.D("b.example")
	b.Apply(reference)
	conn, err := a.Request("secure-intranet-connectivity@b.example", "spiffe://a.example/ns/x", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	b.Restart()
	if !b.Knows(conn.GetId()) {
		t.Fatal("the restarted proxy lost the connection")
	}
	// The pooled connection reconnects by itself.
	var again error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if _, again = a.Request("secure-intranet-connectivity@b.example", "spiffe://a.example/ns/x", nil, conn.GetId()); again == nil {
			break
		}
	}
	if again != nil {
		t.Fatalf("refresh after the restart: %v", again)
	}
	if err := a.Close(conn); err != nil {
		t.Fatal(err)
	}
	if b.Knows(conn.GetId()) {
		t.Error("closed connection still stored in b")
	}
}

// Each refusal with its own error: a spoofed domain, an unknown domain, a
// domain not federated, no matching endpoint.
func TestRefusals(t *testing.T) {
	s := New(t, "a.example", "b.example", "c.example")
	a, b, c := s.D("a.example"), s.D("b.example"), s.D("c.example")
	b.Apply(reference + picky)
	// a stops federating with c.
	if _, err := federationpb.NewFederationClient(a.admin).RemovePeer(context.Background(), &federationpb.RemovePeerRequest{Domain: "c.example"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		service string
		labels  map[string]string
		code    codes.Code
		want    string
	}{
		{"secure-intranet-connectivity@nowhere.example", nil, codes.NotFound, `unknown domain "nowhere.example"`},
		{"secure-intranet-connectivity@c.example", nil, codes.FailedPrecondition, `domain "c.example" is not federated with "a.example"`},
		{"picky@b.example", map[string]string{"tier": "gold"}, codes.NotFound, `no endpoint of network service "picky" matches labels`},
		{"none@b.example", nil, codes.NotFound, `network service "none" is not registered`},
	} {
		_, err := a.Request(tc.service, "spiffe://a.example/ns/x", tc.labels, "")
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v\nwant %s with %q", tc.service, err, tc.code, tc.want)
		}
	}
	// c's proxy claims to speak for a.
	p, _ := c.Peers.Lookup("b.example")
	spoof, err := federation.DialPeer(b.Addr().String(), c.Identity, "a.example", p)
	if err != nil {
		t.Fatal(err)
	}
	defer spoof.Close()
	_, err = proxypb.NewNetworkServiceClient(spoof).Request(context.Background(), &proxypb.NetworkServiceRequest{
		Connection: &proxypb.Connection{NetworkService: "secure-intranet-connectivity"},
	})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `may not speak for domain "a.example"`) {
		t.Errorf("spoofed domain: %v", err)
	}
}

// bareMTLS serves gRPC health servers over mTLS, as the proxies serve
// their peers, and dials them: the yardsticks' parts.
func bareMTLS(b *testing.B) (serve func(healthpb.HealthServer) string, dial func(addr string) *grpc.ClientConn) {
	ca, err := federation.OpenCA(b.TempDir(), spiffeid.RequireTrustDomainFromString("a.example"))
	if err != nil {
		b.Fatal(err)
	}
	td := ca.TrustDomain()
	srvSrc, _ := ca.NewSource(federation.ProxyID(td), time.Hour, nil, slog.Default())
	cliSrc, _ := ca.NewSource(federation.AdminID(td), time.Hour, nil, slog.Default())
	b.Cleanup(func() { srvSrc.Close(); cliSrc.Close() })
	serve = func(h healthpb.HealthServer) string {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := grpc.NewServer(grpc.Creds(federation.ServerCredentials(srvSrc, federation.AuthorizeMember(td), slog.Default())))
		healthpb.RegisterHealthServer(srv, h)
		go srv.Serve(lis)
		b.Cleanup(srv.Stop)
		return lis.Addr().String()
	}
	dial = func(addr string) *grpc.ClientConn {
		conn, err := federation.DialDomain(addr, cliSrc)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		return conn
	}
	return serve, dial
}

// A bare mTLS gRPC round trip on this machine: the yardstick of the
// cross-domain benchmarks.
func BenchmarkBareMTLSRoundTrip(b *testing.B) {
	serve, dial := bareMTLS(b)
	c := healthpb.NewHealthClient(dial(serve(health.NewServer())))
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if _, err := c.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	report(b, lat)
}

// relay passes each call on to next and its first answer back, as a
// proxy does a look-up for another domain, and nothing else.
type relay struct {
	healthpb.UnimplementedHealthServer
	next healthpb.HealthClient
}

func (r relay) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	return r.next.Check(ctx, req)
}

func (r relay) Watch(req *healthpb.HealthCheckRequest, s grpc.ServerStreamingServer[healthpb.HealthCheckResponse]) error {
	st, err := r.next.Watch(s.Context(), req)
	if err != nil {
		return err
	}
	m, err := st.Recv()
	if err != nil {
		return err
	}
	return s.Send(m)
}

// Two bare mTLS hops, a relay between client and server, unary and as
// streams (to the first answer): the least a cross-domain find (client,
// its proxy, the peer's proxy) can cost on this machine, without a
// registry, a policy or a name.
func BenchmarkBareMTLSRelay(b *testing.B) {
	serve, dial := bareMTLS(b)
	front := serve(relay{next: healthpb.NewHealthClient(dial(serve(health.NewServer())))})
	c := healthpb.NewHealthClient(dial(front))
	for _, mode := range []string{"unary", "stream"} {
		b.Run(mode, func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			for i := 0; i < b.N; i++ {
				start := time.Now()
				var err error
				if mode == "unary" {
					_, err = c.Check(context.Background(), &healthpb.HealthCheckRequest{})
				} else {
					ctx, cancel := context.WithCancel(context.Background())
					var st grpc.ServerStreamingClient[healthpb.HealthCheckResponse]
					if st, err = c.Watch(ctx, &healthpb.HealthCheckRequest{}); err == nil {
						_, err = st.Recv()
					}
					cancel()
				}
				lat = append(lat, time.Since(start))
				if err != nil {
					b.Fatal(err)
				}
			}
			report(b, lat)
		})
	}
}

// A look-up of svc@b from a: a's proxy, DNS (cached), the pooled
// connection, b's registry (target: within 3× a bare round trip).
func BenchmarkCrossDomainFind(b *testing.B) {
	s := New(b, "a.example", "b.example")
	s.D("b.example").Apply(reference)
	a := s.D("a.example")
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		got, err := a.Find("secure-intranet-connectivity@b.example", map[string]string{"app": "firewall"})
		lat = append(lat, time.Since(start))
		if err != nil || !slices.Equal(got, []string{"vpn-gateway-1@b.example"}) {
			b.Fatalf("%v %v", got, err)
		}
	}
	b.StopTimer()
	report(b, lat)
}

// A cross-domain request with the fake data plane, from concurrent clients
// (targets: p99 < 20 ms, ≥ 200 requests/s per domain pair), with 2 and 8
// clients at once.
func BenchmarkCrossDomainRequest(b *testing.B) {
	for _, clients := range []int{2, 8} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			s := New(b, "a.example", "b.example")
			s.D("b.example").Apply(reference)
			a := s.D("a.example")
			var mu sync.Mutex
			lat := make([]time.Duration, 0, b.N)
			b.SetParallelism((clients + 1) / 2) // × GOMAXPROCS (2 here)
			start := time.Now()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					t0 := time.Now()
					_, err := a.Request("secure-intranet-connectivity@b.example", "spiffe://a.example/ns/x", map[string]string{"app": "web"}, "")
					d := time.Since(t0)
					if err != nil {
						b.Error(err)
						return
					}
					mu.Lock()
					lat = append(lat, d)
					mu.Unlock()
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(len(lat))/time.Since(start).Seconds(), "requests/s")
			report(b, lat)
		})
	}
}

// The cross-domain hop alone: a's proxy asking b's proxy, as a's proxy
// does for every look-up of service@b (target: within 3× a bare round
// trip). BenchmarkCrossDomainFind adds the caller's hop to its own proxy.
func BenchmarkPeerFind(b *testing.B) {
	s := New(b, "a.example", "b.example")
	s.D("b.example").Apply(reference)
	a, bd := s.D("a.example"), s.D("b.example")
	p, _ := a.Peers.Lookup("b.example")
	conn, err := federation.DialPeer(bd.Addr().String(), a.Identity, "a.example", p)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	c := registrypb.NewRegistryClient(conn)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		stream, err := c.Find(context.Background(), &registrypb.FindRequest{Service: "secure-intranet-connectivity", SourceLabels: map[string]string{"app": "firewall"}})
		if err == nil {
			_, err = stream.Recv()
		}
		lat = append(lat, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	report(b, lat)
}

// The same look-up asked of b itself: the part of a cross-domain find that
// is b's registry (an etcd read).
func BenchmarkLocalFind(b *testing.B) {
	s := New(b, "b.example")
	d := s.D("b.example")
	d.Apply(reference)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if _, err := d.Find("secure-intranet-connectivity", map[string]string{"app": "firewall"}); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	report(b, lat)
}

func report(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(float64(len(lat)-1)*p)]) / float64(time.Millisecond) }
	b.ReportMetric(pct(0.5), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// Four domains around a floating registry: endpoints in a and b register
// as svc@floating.example; a client in c asks for svc@floating.example and
// is connected through the endpoint's own domain.
func TestFloatingDomain(t *testing.T) {
	s := NewWith(t, func(c *domain.Config) {
		if c.Name == "floating.example" {
			c.RegistrationsFrom = []string{"a.example", "b.example"}
		}
	}, "floating.example", "a.example", "b.example", "c.example")
	fl, a, b, c := s.D("floating.example"), s.D("a.example"), s.D("b.example"), s.D("c.example")
	fl.Apply(`
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: svc}
spec:
  payload: IP
  matches:
    - source_selector: {zone: a}
      routes: [{destination_selector: {zone: a}}]
    - routes: [{destination_selector: {zone: b}}]
`)
	for _, r := range []struct {
		d    *Domain
		name string
		zone string
	}{{a, "nse-a", "a"}, {b, "nse-b", "b"}} {
		if err := r.d.Register(&registrypb.Endpoint{Name: r.name, NetworkServiceNames: []string{"svc@floating.example"}, Labels: map[string]string{"zone": r.zone}}); err != nil {
			t.Fatalf("%s registering with the floating domain: %v", r.name, err)
		}
	}
	found, err := c.Find("svc@floating.example", map[string]string{"zone": "a"})
	if err != nil || !slices.Equal(found, []string{"nse-a.a.example@floating.example"}) {
		t.Fatalf("c finds %v, %v", found, err)
	}

	toA, err := c.Request("svc@floating.example", "spiffe://c.example/ns/x", map[string]string{"zone": "a"}, "")
	if err != nil {
		t.Fatal(err)
	}
	toB, err := c.Request("svc@floating.example", "spiffe://c.example/ns/y", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if toA.GetNetworkServiceEndpointName() != "nse-a@a.example" || toB.GetNetworkServiceEndpointName() != "nse-b@b.example" {
		t.Errorf("endpoints: %s, %s", toA.GetNetworkServiceEndpointName(), toB.GetNetworkServiceEndpointName())
	}
	var hops []string
	for _, seg := range toA.GetPath().GetSegments() {
		hops = append(hops, seg.GetName())
	}
	if strings.Join(hops, ">") != "proxy.c.example>proxy.floating.example>proxy.a.example" {
		t.Errorf("path %v", hops)
	}
	if got := a.Dataplane.String(); got != "endpoint "+toA.GetId()+" svc@floating.example -> nse-a" {
		t.Errorf("a's data plane: %q", got)
	}
	if fl.Dataplane.String() != "" {
		t.Errorf("the floating domain programmed something: %s", fl.Dataplane)
	}
	// Close from c removes the state in c, the floating domain and a.
	if err := c.Close(toA); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*Domain{c, fl, a} {
		if d.Knows(toA.GetId()) {
			t.Errorf("%s still knows the closed connection", d.Name)
		}
	}
	if a.Dataplane.String() != "" || strings.Contains(c.Dataplane.String(), toA.GetId()) {
		t.Errorf("close left data-plane state: a %q, c %q", a.Dataplane, c.Dataplane)
	}
	if !b.Knows(toB.GetId()) {
		t.Error("closing one connection closed another")
	}
}

// A connection nobody refreshes lapses at every hop, and both ends are
// removed from the data planes.
func TestConnectionExpiry(t *testing.T) {
	s := NewWith(t, func(c *domain.Config) { c.ConnectionLifetime = 2 * time.Second }, "a.example", "b.example")
	a, b := s.D("a.example"), s.D("b.example")
	b.Apply(reference)
	conn, err := a.Request("secure-intranet-connectivity@b.example", "spiffe://a.example/ns/x", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); a.Knows(conn.GetId()) || b.Knows(conn.GetId()) ||
		a.Dataplane.String() != "" || b.Dataplane.String() != ""; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("15s after a 2s lifetime: a knows %v, b knows %v, a programs %q, b programs %q",
				a.Knows(conn.GetId()), b.Knows(conn.GetId()), a.Dataplane, b.Dataplane)
		}
	}
}

// A watch of service@b from a follows b's registrations, with b's names.
func TestWatchAcrossDomains(t *testing.T) {
	s := New(t, "a.example", "b.example")
	a, b := s.D("a.example"), s.D("b.example")
	b.Apply(reference)
	w, err := a.Watch("secure-intranet-connectivity@b.example", map[string]string{"app": "web"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := w.Recv()
	if err != nil || len(first.GetSnapshot().GetEndpoints()) != 1 {
		t.Fatalf("snapshot %v, %v", first, err)
	}
	if err := b.Register(&registrypb.Endpoint{Name: "firewall-2", NetworkServiceNames: []string{"secure-intranet-connectivity"}, Labels: map[string]string{"app": "firewall"}}); err != nil {
		t.Fatal(err)
	}
	ev, err := w.Recv()
	if err != nil || ev.GetUpdate().GetName() != "firewall-2@b.example" || ev.GetUpdate().GetNetworkServiceNames()[0] != "secure-intranet-connectivity@b.example" {
		t.Fatalf("update %v, %v", ev, err)
	}
}

// b publishes two proxies with different priorities; when the first dies,
// requests fail over to the second.
func TestPriorityFailover(t *testing.T) {
	s := New(t, "a.example", "b.example")
	a, b := s.D("a.example"), s.D("b.example")
	b.Apply(reference)
	// A dead first choice, ahead of b's real proxy (priority 10): a port
	// below the ephemeral range, which no other test's socket takes.
	port := strconv.Itoa(e2e.FreePort(t))
	s.Zone.Add(t, "_vwire._tcp.b.example. 30 IN SRV 5 100 "+port+" dead.b.example.", "dead.b.example. 30 IN A 127.0.0.1")
	if _, err := a.Request("secure-intranet-connectivity@b.example", "spiffe://a.example/ns/x", nil, ""); err != nil {
		t.Fatalf("no failover past a dead first target: %v", err)
	}
}

// A refresh (the returned connection sent again) keeps the endpoint and
// the path, renewing each hop's expiry.
func TestRefreshKeepsPath(t *testing.T) {
	s := New(t, "a.example", "b.example")
	a, b := s.D("a.example"), s.D("b.example")
	b.Apply(reference)
	conn, err := a.Request("secure-intranet-connectivity@b.example", "spiffe://a.example/ns/x", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := a.s.ctx()
	defer cancel()
	again, err := proxypb.NewNetworkServiceClient(a.gateway).Request(metadata.AppendToOutgoingContext(ctx, registry.ClientHeader, "spiffe://a.example/ns/x"),
		&proxypb.NetworkServiceRequest{Connection: conn})
	if err != nil {
		t.Fatal(err)
	}
	if again.GetId() != conn.GetId() || again.GetNetworkServiceEndpointName() != conn.GetNetworkServiceEndpointName() || len(again.GetPath().GetSegments()) != 2 {
		t.Errorf("refresh changed the connection: %v", again)
	}
	if !again.GetPath().GetSegments()[1].GetExpires().AsTime().After(conn.GetPath().GetSegments()[1].GetExpires().AsTime()) {
		t.Error("the refresh did not renew b's segment")
	}
	if _, err := proxypb.NewNetworkServiceClient(a.gateway).Request(ctx, &proxypb.NetworkServiceRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("a request without a connection: %v", err)
	}
}

// The sandbox federates through DNS-located bundle endpoints; without a
// _spiffe-bundle._tcp record, adding a peer needs the URL.
func TestBundleEndpointFromDNS(t *testing.T) {
	s := New(t, "a.example", "b.example")
	a := s.D("a.example")
	list, err := federationpb.NewFederationClient(a.admin).ListPeers(context.Background(), &federationpb.ListPeersRequest{})
	if err != nil || len(list.GetPeers()) != 1 || list.GetPeers()[0].GetPeer().GetBundleEndpointUrl() != s.D("b.example").BundleURL() {
		t.Fatalf("peer located through DNS: %v, %v", list, err)
	}
	b, _ := federationpb.NewFederationClient(s.D("b.example").admin).GetBundle(context.Background(), &federationpb.GetBundleRequest{})
	_, err = federationpb.NewFederationClient(a.admin).AddPeer(context.Background(), &federationpb.AddPeerRequest{
		Peer: &federationpb.Peer{Domain: "elsewhere.example", TrustDomain: "b.example"}, Bundle: b.GetSpiffe(),
	})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "no --bundle-endpoint given, and none found in DNS") {
		t.Errorf("no SRV record: %v", err)
	}
}

// The yardstick of a cross-domain request: the same request to an
// endpoint of the client's own domain.
func BenchmarkLocalRequest(b *testing.B) {
	s := New(b, "b.example")
	d := s.D("b.example")
	d.Apply(reference)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if _, err := d.Request("secure-intranet-connectivity", "spiffe://b.example/ns/x", map[string]string{"app": "web"}, ""); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	report(b, lat)
}

// Memory per federated peer domain: a domain federating with 100 or 1,000
// peers (simulated: each its own trust domain and bundle; its bundle
// endpoint does not answer, so each follower keeps retrying as against a
// peer that is down) — heap after GC, per peer (target < 1 MB).
func BenchmarkPeerMemory(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			s := New(b, "a.example")
			a := s.D("a.example")
			bundles := make([][]byte, n)
			for i := range bundles {
				ca, err := federation.OpenCA(b.TempDir(), spiffeid.RequireTrustDomainFromString(fmt.Sprintf("p%d.example", i)))
				if err != nil {
					b.Fatal(err)
				}
				if bundles[i], err = ca.Bundle().Marshal(); err != nil {
					b.Fatal(err)
				}
			}
			dead, _ := net.Listen("tcp", "127.0.0.1:0")
			deadURL := "https://" + dead.Addr().String()
			dead.Close()
			before := heap()
			b.ResetTimer()
			for i := 0; i < n; i++ {
				_, err := federationpb.NewFederationClient(a.admin).AddPeer(context.Background(), &federationpb.AddPeerRequest{
					Peer: &federationpb.Peer{Domain: fmt.Sprintf("p%d.example", i), BundleEndpointUrl: deadURL}, Bundle: bundles[i],
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(heap()-before)/float64(n)/(1<<20), "MB/peer")
		})
	}
}

// heap is the live heap after a collection.
func heap() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

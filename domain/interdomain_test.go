package domain

import (
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/federation/federationpb"
	"github.com/vwire/vwire/proxy"
	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

// startIn starts a domain that locates its peers through zone.
func startIn(t *testing.T, zone *e2e.Zone, name string) *testDomain {
	t.Helper()
	return startWith(t, name, func(c *Config) { c.DNSServer = zone.Addr })
}

// publish adds name's _vwire._tcp SRV record, pointing at addr.
func publish(t *testing.T, zone *e2e.Zone, name string, priority int, addr string) {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	target := "p" + port + "." + name + "."
	zone.Add(t, "_vwire._tcp."+name+". 30 IN SRV "+strconv.Itoa(priority)+" 100 "+port+" "+target, target+" 30 IN A "+host)
}

func (d *testDomain) findAs(t *testing.T, service string, labels map[string]string) ([]string, error) {
	t.Helper()
	stream, err := registrypb.NewRegistryClient(d.admin).Find(ctx(t), &registrypb.FindRequest{Service: service, SourceLabels: labels})
	if err != nil {
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range resp.GetSnapshot().GetEndpoints() {
		names = append(names, e.GetName()+" "+strings.Join(e.GetNetworkServiceNames(), ","))
	}
	return names, nil
}

func applyFile(t *testing.T, d *testDomain, files ...string) {
	t.Helper()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := registry.DecodeManifests(strings.NewReader(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := registrypb.NewRegistryClient(d.admin).Apply(ctx(t), objs); err != nil {
			t.Fatal(err)
		}
	}
}

// The interdomain issue's "done when", in process: a finds
// secure-intranet-connectivity@b.example through DNS and b's proxy.
func TestCrossDomainFind(t *testing.T) {
	zone := e2e.NewZone(t)
	a, b := startIn(t, zone, "a.example"), startIn(t, zone, "b.example")
	publish(t, zone, "a.example", 10, a.Addr().String())
	publish(t, zone, "b.example", 10, b.Addr().String())
	a.federate(t, b)
	b.federate(t, a)
	applyFile(t, b, "../registry/testdata/secure-intranet-connectivity.yaml", "../registry/testdata/endpoints.yaml")

	got, err := a.findAs(t, "secure-intranet-connectivity@b.example", map[string]string{"app": "firewall"})
	if err != nil || !slices.Equal(got, []string{"vpn-gateway-1@b.example secure-intranet-connectivity@b.example"}) {
		t.Fatalf("a firewall client: %v, %v", got, err)
	}
	got, err = a.findAs(t, "secure-intranet-connectivity@b.example", map[string]string{"app": "web"})
	if err != nil || !slices.Equal(got, []string{"firewall-1@b.example secure-intranet-connectivity@b.example"}) {
		t.Fatalf("any other client: %v, %v", got, err)
	}
	// Naming the own domain is the same as naming none.
	if got, err := b.findAs(t, "secure-intranet-connectivity@b.example", nil); err != nil || len(got) != 1 || strings.Contains(got[0], "@") {
		t.Errorf("own domain by name: %v, %v", got, err)
	}
}

// Each failure reaches the user as its own error.
func TestCrossDomainErrors(t *testing.T) {
	zone := e2e.NewZone(t)
	a, b, c, d := startIn(t, zone, "a.example"), startIn(t, zone, "b.example"), startIn(t, zone, "c.example"), startIn(t, zone, "d.example")
	for _, x := range []*testDomain{a, b, c, d} {
		publish(t, zone, x.Name, 10, x.Addr().String())
	}
	a.federate(t, b)
	b.federate(t, a)
	a.federate(t, d)
	d.federate(t, a)
	applyFile(t, b, "../registry/testdata/secure-intranet-connectivity.yaml", "../registry/testdata/endpoints.yaml")
	d.Close() // d.example's proxy is gone

	for _, tc := range []struct {
		service string
		labels  map[string]string
		code    codes.Code
		want    string
	}{
		{"svc@nowhere.example", nil, codes.NotFound, `unknown domain "nowhere.example": no _vwire._tcp.nowhere.example SRV record`},
		{"svc@c.example", nil, codes.FailedPrecondition, `domain "c.example" is not federated with "a.example"`},
		{"svc@d.example", nil, codes.Unavailable, `peer "d.example" unreachable`},
		{"nope@b.example", nil, codes.NotFound, `b.example: network service "nope" is not registered`},
		{"svc@", nil, codes.InvalidArgument, "empty domain"},
	} {
		_, err := a.findAs(t, tc.service, tc.labels)
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v\nwant %s with %q", tc.service, err, tc.code, tc.want)
		}
	}
}

// tcpProxy forwards TCP to a domain and counts the connections it accepts.
type tcpProxy struct {
	l     net.Listener
	conns atomic.Int64
	mu    sync.Mutex
	open  []net.Conn
}

func newTCPProxy(t *testing.T, to string) *tcpProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{l: l}
	t.Cleanup(p.Close)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.conns.Add(1)
			up, err := net.Dial("tcp", to)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.open = append(p.open, c, up)
			p.mu.Unlock()
			go io.Copy(up, c)
			go io.Copy(c, up)
		}
	}()
	return p
}

func (p *tcpProxy) Addr() string { return p.l.Addr().String() }

// Close stops listening and cuts every connection, as a dead host would.
func (p *tcpProxy) Close() {
	p.l.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.open {
		c.Close()
	}
	p.open = nil
}

// B publishes two proxies with different priorities; requests use the
// first, fail over when it dies, and share one connection: no dial per
// request.
func TestCrossDomainFailoverAndOneConnection(t *testing.T) {
	zone := e2e.NewZone(t)
	a, b := startIn(t, zone, "a.example"), startIn(t, zone, "b.example")
	a.federate(t, b)
	b.federate(t, a)
	applyFile(t, b, "../registry/testdata/secure-intranet-connectivity.yaml", "../registry/testdata/endpoints.yaml")
	first, second := newTCPProxy(t, b.Addr().String()), newTCPProxy(t, b.Addr().String())
	publish(t, zone, "b.example", 10, first.Addr())
	publish(t, zone, "b.example", 20, second.Addr())

	for i := 0; i < 100; i++ {
		if _, err := a.findAs(t, "secure-intranet-connectivity@b.example", nil); err != nil {
			t.Fatal(err)
		}
	}
	if n, m := first.conns.Load(), second.conns.Load(); n != 1 || m != 0 {
		t.Errorf("100 requests opened %d connections to the first proxy and %d to the second, want 1 and 0", n, m)
	}
	// The first proxy dies (its listener closes and its connections drop).
	first.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := a.findAs(t, "secure-intranet-connectivity@b.example", nil)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no failover to the second proxy: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := second.conns.Load(); n != 1 {
		t.Errorf("failover opened %d connections to the second proxy, want 1", n)
	}
}

// --dns-listen serves the domain's own records; a peer pointed at that
// zone finds it.
func TestDNSListenZone(t *testing.T) {
	b := startWith(t, "b.example", func(c *Config) { c.DNSListen = "127.0.0.1:0" })
	if b.DNSAddr() == "" {
		t.Fatal("no zone served")
	}
	a := startWith(t, "a.example", func(c *Config) { c.DNSServer = b.DNSAddr() })
	a.federate(t, b)
	b.federate(t, a)
	applyFile(t, b, "../registry/testdata/secure-intranet-connectivity.yaml", "../registry/testdata/endpoints.yaml")
	got, err := a.findAs(t, "secure-intranet-connectivity@b.example", map[string]string{"app": "firewall"})
	if err != nil || len(got) != 1 || !strings.HasPrefix(got[0], "vpn-gateway-1@b.example") {
		t.Fatalf("through b's own zone: %v, %v", got, err)
	}
	targets, err := proxy.NewResolver(b.DNSAddr()).Lookup(ctx(t), "b.example")
	if err != nil || len(targets) != 1 || targets[0].Addresses()[0] != b.Addr().String() {
		t.Errorf("b's zone: %v, %v", targets, err)
	}
}

// --publish-dns etcd writes SkyDNS records on a lease: they vanish when
// the domain stops.
func TestPublishDNSEtcd(t *testing.T) {
	b := startWith(t, "b.example", func(c *Config) { c.PublishDNS = "etcd"; c.DNSTTL = 2 * time.Second })
	resp, err := b.Etcd.Get(ctx(t), "/skydns/example/b/_tcp/_vwire/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("published: %v, %v", resp, err)
	}
	_, port, _ := net.SplitHostPort(b.Addr().String())
	if v := string(resp.Kvs[0].Value); !strings.Contains(v, `"host":"127.0.0.1"`) || !strings.Contains(v, `"port":`+port) || resp.Kvs[0].Lease == 0 {
		t.Errorf("record %s (lease %x)", v, resp.Kvs[0].Lease)
	}
	bundle, _ := b.Etcd.Get(ctx(t), "/skydns/example/b/_tcp/_spiffe-bundle/", clientv3.WithPrefix())
	if len(bundle.Kvs) != 1 {
		t.Errorf("no _spiffe-bundle._tcp record")
	}
	if err := b.pub.Close(); err != nil {
		t.Fatal(err)
	}
	b.pub = nil
	if resp, _ := b.Etcd.Get(ctx(t), "/skydns/", clientv3.WithPrefix()); len(resp.Kvs) != 0 {
		t.Errorf("records stayed after the publisher closed: %d", len(resp.Kvs))
	}
}

// The pool hands out a connection to a peer only while the peer is
// federated as it was when the connection was made: not to a removed peer
// whose DNS stopped answering, and not to one whose trust domain changed.
func TestPoolFollowsFederation(t *testing.T) {
	svc := "secure-intranet-connectivity@b.example"
	t.Run("removed while DNS is out", func(t *testing.T) {
		zone := e2e.NewZone(t)
		a, b := startIn(t, zone, "a.example"), startIn(t, zone, "b.example")
		host, port, _ := net.SplitHostPort(b.Addr().String())
		zone.Add(t, "_vwire._tcp.b.example. 1 IN SRV 10 100 "+port+" proxy.b.example.", "proxy.b.example. 1 IN A "+host)
		a.federate(t, b)
		b.federate(t, a)
		applyFile(t, b, "../registry/testdata/secure-intranet-connectivity.yaml", "../registry/testdata/endpoints.yaml")
		if _, err := a.findAs(t, svc, nil); err != nil {
			t.Fatal(err)
		}
		zone.Silence(true)
		key := "_vwire._tcp.b.example./SRV"
		asked := zone.Asked("", key)
		waitFor(t, "a asks DNS again once the 1 s TTL is over", func() bool {
			if _, err := a.findAs(t, svc, nil); err != nil {
				t.Fatalf("with DNS out, the pooled connection to a federated peer should still serve: %v", err)
			}
			return zone.Asked("", key) > asked
		})
		if _, err := a.fed().RemovePeer(ctx(t), &federationpb.RemovePeerRequest{Domain: "b.example"}); err != nil {
			t.Fatal(err)
		}
		// DNS's last answer still locates b, and federation refuses it: no
		// pooled connection is handed out.
		_, err := a.findAs(t, svc, nil)
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), `domain "b.example" is not federated with "a.example"`) {
			t.Errorf("a removed peer, DNS out: %v", err)
		}
	})
	t.Run("trust domain changed", func(t *testing.T) {
		zone := e2e.NewZone(t)
		a, b := startIn(t, zone, "a.example"), startIn(t, zone, "b.example")
		publish(t, zone, "b.example", 10, b.Addr().String())
		a.federate(t, b)
		b.federate(t, a)
		applyFile(t, b, "../registry/testdata/secure-intranet-connectivity.yaml", "../registry/testdata/endpoints.yaml")
		if _, err := a.findAs(t, svc, nil); err != nil {
			t.Fatal(err)
		}
		// The admin says another trust domain speaks for b.example.
		other, err := federation.OpenCA(t.TempDir(), spiffeid.RequireTrustDomainFromString("other.example"))
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := spiffebundle.FromX509Bundle(other.Bundle()).Marshal()
		if _, err := a.fed().AddPeer(ctx(t), &federationpb.AddPeerRequest{
			Peer:   &federationpb.Peer{Domain: "b.example", TrustDomain: "other.example", BundleEndpointUrl: b.BundleURL()},
			Bundle: raw,
		}); err != nil {
			t.Fatal(err)
		}
		// b's proxy proves b.example's trust domain, which a no longer
		// trusts: the connection made before the change is not used.
		_, err = a.findAs(t, svc, nil)
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), `trust domain \"b.example\" is not trusted here`) {
			t.Errorf("b.example under another trust domain: %v", err)
		}
	})
}

// A DNS answer that sends a's proxy to the wrong domain's proxy: the
// handshake fails, saying which identity a expected and which it got, and
// the server logs that the client gave up, not that it refused the client.
func TestMisdirectedPeer(t *testing.T) {
	zone := e2e.NewZone(t)
	var logB e2e.Buffer
	a := startIn(t, zone, "a.example")
	b := startWith(t, "b.example", func(c *Config) {
		c.DNSServer = zone.Addr
		c.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(testLog{t, "b.example"}, &logB), nil))
	})
	c := startIn(t, zone, "c.example")
	publish(t, zone, "c.example", 10, b.Addr().String()) // c's record, b's address
	a.federate(t, b)
	b.federate(t, a)
	a.federate(t, c)
	_, err := a.findAs(t, "svc@c.example", nil)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "unexpected SPIFFE ID: expected spiffe://c.example/vwire/proxy, got spiffe://b.example/vwire/proxy") {
		t.Errorf("c.example's name, b.example's proxy: %v", err)
	}
	waitFor(t, "b logs that a client gave up", func() bool { return strings.Contains(logB.String(), "a client gave up the TLS handshake") })
	if strings.Contains(logB.String(), "refused a TLS connection") {
		t.Errorf("b logged the client's abort as its own refusal:\n%s", logB.String())
	}
}

// Across domains a's admin is judged by b's policies as a workload is, by
// its own SPIFFE ID; and a local workload cannot have a's proxy name a
// more privileged workload to b.
func TestOriginalClientAcrossDomains(t *testing.T) {
	zone := e2e.NewZone(t)
	a, b := startIn(t, zone, "a.example"), startIn(t, zone, "b.example")
	publish(t, zone, "b.example", 10, b.Addr().String())
	a.federate(t, b)
	b.federate(t, a)
	objs, err := registry.DecodeManifests(strings.NewReader(`
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: admins}
spec: {payload: IP, allowedSpiffeIDs: [spiffe://a.example/vwire/admin]}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: prod}
spec: {payload: IP, allowedSpiffeIDs: [spiffe://a.example/ns/prod/*]}
`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := registrypb.NewRegistryClient(b.admin).Apply(ctx(t), objs); err != nil {
		t.Fatal(err)
	}
	if _, err := a.findAs(t, "admins@b.example", nil); err != nil {
		t.Errorf("a's admin, named by b's policy: %v", err)
	}
	if _, err := a.findAs(t, "prod@b.example", nil); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "spiffe://a.example/vwire/admin may not connect") {
		t.Errorf("a's admin, not named: %v", err)
	}
	// A dev workload of a names a prod workload: b judges the dev one.
	dev := registrypb.NewRegistryClient(a.asWorkloadConn(t, "/ns/dev/sa/x"))
	stream, err := dev.Find(metadata.AppendToOutgoingContext(ctx(t), registry.ClientHeader, "spiffe://a.example/ns/prod/sa/web"), &registrypb.FindRequest{Service: "prod@b.example"})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "spiffe://a.example/ns/dev/sa/x may not connect") {
		t.Errorf("a dev workload naming a prod one: %v", err)
	}
}

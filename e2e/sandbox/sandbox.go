// Package sandbox builds N vwire domains in one process for tests and
// benchmarks: each a real domain (embedded etcd, registry, proxy, built-in
// CA, bundle endpoint) on loopback, over real gRPC and mutual TLS, found
// through an in-process DNS server and federated with every other through
// the federation API, with a fake data plane that renders its state as
// text. A two-domain scenario reads in a screenful:
//
//	s := sandbox.New(t, "a.example", "b.example")
//	s.D("b.example").Apply(manifest)
//	conn, err := s.D("a.example").Request("svc@b.example", "spiffe://a.example/ns/web", labels)
package sandbox

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/vwire/vwire/domain"
	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/federation/federationpb"
	"github.com/vwire/vwire/proxy"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

// Sandbox is a set of federated domains sharing one DNS zone.
type Sandbox struct {
	t       testing.TB
	Zone    *e2e.Zone
	domains map[string]*Domain
}

// Domain is one domain of a sandbox.
type Domain struct {
	*domain.Domain
	Dataplane *proxy.FakeDataplane
	s         *Sandbox
	cfg       *domain.Config
	admin     *grpc.ClientConn
	gateway   *grpc.ClientConn
	published bool
}

// New starts the named domains, publishes each in the zone and federates
// every pair. Everything stops when the test ends.
func New(t testing.TB, names ...string) *Sandbox {
	t.Helper()
	return NewWith(t, nil, names...)
}

// NewWith is New with each domain's config changed by opt first.
func NewWith(t testing.TB, opt func(*domain.Config), names ...string) *Sandbox {
	t.Helper()
	s := &Sandbox{t: t, Zone: e2e.NewZone(t), domains: map[string]*Domain{}}
	dir := t.TempDir()
	for _, name := range names {
		cfg := domain.NewConfig()
		cfg.Name, cfg.DataDir, cfg.Listen, cfg.BundleListen = name, filepath.Join(dir, name), "127.0.0.1:0", "127.0.0.1:0"
		cfg.DNSServer = s.Zone.Addr
		cfg.RefreshHint, cfg.RotationPropagation, cfg.RotationOverlap = time.Second, 2500*time.Millisecond, 2*time.Second
		cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t, name}, &slog.HandlerOptions{Level: slog.LevelWarn}))
		d := &Domain{Dataplane: proxy.NewFakeDataplane(), s: s, cfg: cfg}
		cfg.Dataplane = d.Dataplane
		if opt != nil {
			opt(cfg)
		}
		d.start()
		s.domains[name] = d
	}
	for _, a := range names {
		for _, b := range names {
			if a != b {
				s.domains[a].Federate(s.domains[b])
			}
		}
	}
	return s
}

// D is the named domain.
func (s *Sandbox) D(name string) *Domain {
	d, ok := s.domains[name]
	if !ok {
		s.t.Fatalf("sandbox has no domain %q", name)
	}
	return d
}

func (d *Domain) start() {
	t := d.s.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dom, err := domain.Start(ctx, d.cfg)
	if err != nil {
		t.Fatalf("starting %s: %v", d.cfg.Name, err)
	}
	d.Domain = dom
	// Restarts keep the address, so that DNS and peers stay right.
	d.cfg.Listen = dom.Addr().String()
	d.cfg.BundleListen = strings.TrimPrefix(dom.BundleURL(), "https://")
	t.Cleanup(func() { dom.Close() })
	if !d.published {
		host, port := splitHostPort(dom.Addr().String())
		_, bundlePort := splitHostPort(d.cfg.BundleListen)
		target := "proxy." + d.cfg.Name + "."
		d.s.Zone.Add(t, "_vwire._tcp."+d.cfg.Name+". 30 IN SRV 10 100 "+port+" "+target, target+" 30 IN A "+host,
			"_spiffe-bundle._tcp."+d.cfg.Name+". 30 IN SRV 10 100 "+bundlePort+" "+target)
		d.published = true
	}
	admin, err := federation.LoadCredentials(filepath.Join(d.cfg.DataDir, "admin"))
	if err != nil {
		t.Fatal(err)
	}
	if d.admin, err = federation.DialDomain(dom.Addr().String(), admin); err != nil {
		t.Fatal(err)
	}
	gw, err := dom.Identity.CA.NewSource(spiffeid.RequireFromPath(dom.TD, "/vwire/gateway/n1"), time.Hour, dom.Identity.Trust, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if d.gateway, err = federation.DialDomain(dom.Addr().String(), gw); err != nil {
		t.Fatal(err)
	}
	conns := []*grpc.ClientConn{d.admin, d.gateway}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
		gw.Close()
	})
}

// Restart stops the domain and starts it again on the same data and
// address.
func (d *Domain) Restart() {
	d.Domain.Close()
	d.start()
}

// Federate makes d federate with peer, as `vwire federation add` does
// with the peer's bundle and no --bundle-endpoint: the endpoint comes from
// the peer's _spiffe-bundle._tcp SRV record.
func (d *Domain) Federate(peer *Domain) {
	ctx, cancel := d.s.ctx()
	defer cancel()
	t := d.s.t
	t.Helper()
	b, err := federationpb.NewFederationClient(peer.admin).GetBundle(ctx, &federationpb.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := federationpb.NewFederationClient(d.admin).AddPeer(ctx, &federationpb.AddPeerRequest{
		Peer: &federationpb.Peer{Domain: peer.Name}, Bundle: b.GetSpiffe(),
	}); err != nil {
		t.Fatal(err)
	}
}

// Apply applies a YAML manifest stream as the domain's admin.
func (d *Domain) Apply(manifests string) {
	ctx, cancel := d.s.ctx()
	defer cancel()
	t := d.s.t
	t.Helper()
	objs, err := registry.DecodeManifests(strings.NewReader(manifests))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := registrypb.NewRegistryClient(d.admin).Apply(ctx, objs); err != nil {
		t.Fatal(err)
	}
}

// Register registers an endpoint with this domain as its gateway would;
// a service of another (floating) domain is registered there too.
func (d *Domain) Register(ep *registrypb.Endpoint) error {
	ctx, cancel := d.s.ctx()
	defer cancel()
	_, err := registrypb.NewRegistryClient(d.gateway).RegisterEndpoint(ctx, &registrypb.RegisterEndpointRequest{Endpoint: ep})
	return err
}

// Watch finds with watch and returns the stream, for as long as the test
// runs.
func (d *Domain) Watch(service string, labels map[string]string) (grpc.ServerStreamingClient[registrypb.FindResponse], error) {
	ctx, cancel := context.WithCancel(context.Background())
	d.s.t.Cleanup(cancel)
	return registrypb.NewRegistryClient(d.admin).Find(ctx, &registrypb.FindRequest{Service: service, SourceLabels: labels, Watch: true})
}

// Find is what the match rules select for a client with labels, as
// "name service,..." lines, asked of this domain (service@other is
// forwarded).
func (d *Domain) Find(service string, labels map[string]string) ([]string, error) {
	ctx, cancel := d.s.ctx()
	defer cancel()
	stream, err := registrypb.NewRegistryClient(d.admin).Find(ctx, &registrypb.FindRequest{Service: service, SourceLabels: labels})
	if err != nil {
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range resp.GetSnapshot().GetEndpoints() {
		out = append(out, e.GetName())
	}
	return out, nil
}

// Request asks, as the domain's gateway acting for workload, for a
// connection to service (id "" for a new one).
func (d *Domain) Request(service, workload string, labels map[string]string, id string) (*proxypb.Connection, error) {
	ctx, cancel := d.s.ctx()
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, registry.ClientHeader, workload)
	return proxypb.NewNetworkServiceClient(d.gateway).Request(ctx, &proxypb.NetworkServiceRequest{
		Connection: &proxypb.Connection{Id: id, NetworkService: service, Labels: labels},
	})
}

// Close closes a connection as the gateway that requested it.
func (d *Domain) Close(conn *proxypb.Connection) error {
	ctx, cancel := d.s.ctx()
	defer cancel()
	_, err := proxypb.NewNetworkServiceClient(d.gateway).Close(ctx, conn)
	return err
}

// Knows reports whether the domain stores connection id.
func (d *Domain) Knows(id string) bool {
	ctx, cancel := d.s.ctx()
	defer cancel()
	c, err := d.NetworkService.Conns.Get(ctx, id)
	if err != nil {
		d.s.t.Fatal(err)
	}
	return c != nil
}

func (s *Sandbox) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 20*time.Second)
}

func splitHostPort(addr string) (string, string) {
	i := strings.LastIndex(addr, ":")
	return addr[:i], addr[i+1:]
}

type testWriter struct {
	t    testing.TB
	name string
}

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(w.name + ": " + strings.TrimSpace(string(p)))
	return len(p), nil
}

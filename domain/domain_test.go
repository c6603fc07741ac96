package domain

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/federation/federationpb"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type testDomain struct {
	*Domain
	dataDir string
	admin   *grpc.ClientConn
}

func start(t *testing.T, name string) *testDomain { return startWith(t, name) }

// startWith starts a domain with a bundle endpoint and quick refreshes and
// rotations, after opts have changed its config.
func startWith(t *testing.T, name string, opts ...func(*Config)) *testDomain {
	t.Helper()
	cfg := NewConfig()
	cfg.Name, cfg.DataDir, cfg.Listen, cfg.BundleListen = name, filepath.Join(t.TempDir(), name), "127.0.0.1:0", "127.0.0.1:0"
	cfg.RefreshHint, cfg.RotationPropagation, cfg.RotationOverlap = time.Second, 2500*time.Millisecond, 2*time.Second
	cfg.Logger = slog.New(slog.NewTextHandler(testLog{t, name}, nil))
	for _, o := range opts {
		o(cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	admin, err := federation.LoadCredentials(filepath.Join(cfg.DataDir, "admin"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := federation.DialDomain(d.Addr().String(), admin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &testDomain{Domain: d, dataDir: cfg.DataDir, admin: conn}
}

func (d *testDomain) fed() federationpb.FederationClient {
	return federationpb.NewFederationClient(d.admin)
}

// federate makes d federate with peer as `vwire federation add` does.
func (d *testDomain) federate(t *testing.T, peer *testDomain) {
	t.Helper()
	b, err := peer.fed().GetBundle(ctx(t), &federationpb.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.fed().AddPeer(ctx(t), &federationpb.AddPeerRequest{
		Peer:   &federationpb.Peer{Domain: peer.Name, BundleEndpointUrl: peer.BundleURL()},
		Bundle: b.GetSpiffe(),
	}); err != nil {
		t.Fatal(err)
	}
}

// asPeer is d's proxy calling peer's registry, saying it speaks for domain.
func (d *testDomain) asPeer(t *testing.T, peer *testDomain, speaksFor string) registrypb.RegistryClient {
	t.Helper()
	p, ok := d.Peers.Lookup(peer.Name)
	if !ok { // calling a domain d does not federate with: assume its defaults
		p = federation.Peer{Domain: peer.Name, TrustDomain: peer.TD}
	}
	conn, err := federation.DialPeer(peer.Addr().String(), d.Identity, speaksFor, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return registrypb.NewRegistryClient(conn)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func findOnce(ctx context.Context, c registrypb.RegistryClient, svc string) ([]*registrypb.Endpoint, error) {
	stream, err := c.Find(ctx, &registrypb.FindRequest{Service: svc, SourceLabels: map[string]string{"app": "firewall"}})
	if err != nil {
		return nil, err
	}
	resp, err := stream.Recv()
	return resp.GetSnapshot().GetEndpoints(), err
}

func applyReference(t *testing.T, d *testDomain) {
	t.Helper()
	objs, err := registry.DecodeManifests(strings.NewReader(`
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: secure-intranet-connectivity}
spec:
  payload: IP
  matches:
    - source_selector: {app: firewall}
      routes: [{destination_selector: {app: vpn-gateway}}]
---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {name: vpn-gateway-1, labels: {app: vpn-gateway}}
spec: {networkServiceNames: [secure-intranet-connectivity]}
`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := registrypb.NewRegistryClient(d.admin).Apply(ctx(t), objs); err != nil {
		t.Fatal(err)
	}
}

// Two domains federate with one call each, list each other, and a proxy
// of one may look up the other's services; spoofing, unknown and
// unfederated domains, and calls beyond look-ups are refused.
func TestFederationAndDomainBinding(t *testing.T) {
	a, b, c := start(t, "a.example"), start(t, "b.example"), start(t, "c.example")
	a.federate(t, b)
	b.federate(t, a)
	b.federate(t, c) // c is federated with b, but not with a
	c.federate(t, b)
	applyReference(t, b)

	list, err := a.fed().ListPeers(ctx(t), &federationpb.ListPeersRequest{})
	if err != nil || len(list.GetPeers()) != 1 || list.GetPeers()[0].GetPeer().GetDomain() != "b.example" {
		t.Fatalf("a's peers: %v, %v", list, err)
	}
	waitFor(t, "a fetched b's bundle", func() bool {
		l, _ := a.fed().ListPeers(ctx(t), &federationpb.ListPeersRequest{})
		return l.GetPeers()[0].GetLastFetched() != nil && l.GetPeers()[0].GetLastError() == ""
	})

	eps, err := findOnce(ctx(t), a.asPeer(t, b, "a.example"), "secure-intranet-connectivity")
	if err != nil || len(eps) != 1 || eps[0].GetName() != "vpn-gateway-1" {
		t.Fatalf("a's proxy finding on b: %v, %v", eps, err)
	}

	for _, tc := range []struct {
		name string
		call func() error
		want string
	}{
		{"c speaks for a", func() error {
			_, err := findOnce(ctx(t), c.asPeer(t, b, "a.example"), "secure-intranet-connectivity")
			return err
		},
			`spiffe://c.example/vwire/proxy may not speak for domain "a.example": only spiffe://a.example/vwire/proxy may`},
		{"a claims an unknown domain", func() error {
			_, err := findOnce(ctx(t), a.asPeer(t, b, "z.example"), "secure-intranet-connectivity")
			return err
		},
			`domain "z.example" is not federated with this domain`},
		{"c calls a, which does not federate with it", func() error {
			_, err := findOnce(ctx(t), c.asPeer(t, a, "c.example"), "secure-intranet-connectivity")
			return err
		},
			"authentication handshake failed"},
		{"a's proxy writes to b", func() error {
			_, err := a.asPeer(t, b, "a.example").Apply(ctx(t), &registrypb.ApplyRequest{})
			return err
		}, `domain "a.example" may not call /vwire.registry.v1.Registry/Apply`},
	} {
		err := tc.call()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v\nwant %q", tc.name, err, tc.want)
		}
	}
	// Federation is the admin's: a's proxy may not add peers to b.
	proxyConn, _ := federation.DialDomain(a.Addr().String(), a.Identity)
	defer proxyConn.Close()
	if _, err := federationpb.NewFederationClient(proxyConn).AddPeer(ctx(t), &federationpb.AddPeerRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a non-admin changed federation: %v", err)
	}
}

// Peers and their latest bundles survive a restart of the domain.
func TestPeersPersist(t *testing.T) {
	a, b := start(t, "a.example"), start(t, "b.example")
	a.federate(t, b)
	b.federate(t, a)
	cfg := NewConfig()
	cfg.Name, cfg.DataDir, cfg.Listen = "a.example", a.dataDir, "127.0.0.1:0"
	cfg.Logger = slog.New(slog.NewTextHandler(testLog{t, "a2"}, nil))
	a.Close()
	restarted, err := Start(ctx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer restarted.Close()
	p, ok := restarted.Peers.Lookup("b.example")
	if !ok || p.BundleEndpointURL != b.BundleURL() {
		t.Fatalf("after restart: %+v, %v", p, ok)
	}
	conn, err := federation.DialPeer(b.Addr().String(), restarted.Identity, "a.example", p)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := findOnce(ctx(t), registrypb.NewRegistryClient(conn), "none"); status.Code(err) != codes.NotFound {
		t.Errorf("a cross-domain call after restart: %v, want it to reach b (NotFound)", err)
	}
}

// `vwire ca rotate` on b, twice, while a's proxy keeps calling b over a
// pooled and over new connections: no call fails.
func TestCARotateAcrossDomains(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about 12 s")
	}
	a, b := start(t, "a.example"), start(t, "b.example")
	a.federate(t, b)
	b.federate(t, a)
	applyReference(t, b)
	pooled := a.asPeer(t, b, "a.example")
	p, _ := a.Peers.Lookup("b.example")

	var calls, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			fresh, err := federation.DialPeer(b.Addr().String(), a.Identity, "a.example", p)
			if err != nil {
				t.Error(err)
				continue
			}
			for _, c := range []registrypb.RegistryClient{pooled, registrypb.NewRegistryClient(fresh)} {
				calls.Add(1)
				c2, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				if _, err := findOnce(c2, c, "secure-intranet-connectivity"); err != nil {
					failed.Add(1)
					t.Errorf("cross-domain call failed: %v", err)
				}
				cancel()
			}
			fresh.Close()
		}
	}()
	old, _ := b.fed().GetBundle(ctx(t), &federationpb.GetBundleRequest{})
	for i := 0; i < 2; i++ {
		if _, err := b.fed().RotateCA(ctx(t), &federationpb.RotateCARequest{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "rotation done", func() bool { step, _ := b.Identity.CA.RotationStatus(); return step == "" })
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%d cross-domain calls, %d failed, across two rotations of b's CA", calls.Load(), failed.Load())
	now, _ := b.fed().GetBundle(ctx(t), &federationpb.GetBundleRequest{})
	if bytes.Equal(old.GetSpiffe(), now.GetSpiffe()) {
		t.Error("b's bundle did not change")
	}
	// The admin credentials were rewritten: the CLI still reaches b.
	if _, err := b.fed().ListPeers(ctx(t), &federationpb.ListPeersRequest{}); err != nil {
		t.Errorf("admin after rotation: %v", err)
	}
	admin, err := federation.LoadCredentials(filepath.Join(b.dataDir, "admin"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := federation.DialDomain(b.Addr().String(), admin)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := federationpb.NewFederationClient(conn).ListPeers(ctx(t), &federationpb.ListPeersRequest{}); err != nil {
		t.Errorf("a new admin connection after rotation: %v", err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("not within 20s: %s", what)
}

type testLog struct {
	t    *testing.T
	name string
}

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(l.name + ": " + strings.TrimSpace(string(p)))
	return len(p), nil
}

// The per-service policy, for local workloads and for workloads of
// federated domains whose proxy asks on their behalf.
func TestPerServicePolicy(t *testing.T) {
	a, b, c := start(t, "a.example"), start(t, "b.example"), start(t, "c.example")
	a.federate(t, b)
	b.federate(t, a)
	c.federate(t, b)
	// b trusts c, but does not let c's workloads in by default.
	cb, _ := c.fed().GetBundle(ctx(t), &federationpb.GetBundleRequest{})
	if _, err := b.fed().AddPeer(ctx(t), &federationpb.AddPeerRequest{
		Peer: &federationpb.Peer{Domain: "c.example", BundleEndpointUrl: c.BundleURL(), TrustOnly: true}, Bundle: cb.GetSpiffe(),
	}); err != nil {
		t.Fatal(err)
	}
	objs, err := registry.DecodeManifests(strings.NewReader(`
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: open}
spec: {payload: IP}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: restricted}
spec:
  payload: IP
  allowedSpiffeIDs: [spiffe://a.example/ns/prod/*, spiffe://b.example/ns/ops/sa/admin]
`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := registrypb.NewRegistryClient(b.admin).Apply(ctx(t), objs); err != nil {
		t.Fatal(err)
	}
	local := func(path string) registrypb.RegistryClient {
		src, err := b.Identity.CA.NewSource(spiffeid.RequireFromPath(b.TD, path), time.Hour, b.Identity.Trust, slog.Default())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { src.Close() })
		conn, err := federation.DialDomain(b.Addr().String(), src)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return registrypb.NewRegistryClient(conn)
	}
	find := func(c registrypb.RegistryClient, svc, actingFor string) error {
		cx := ctx(t)
		if actingFor != "" {
			cx = metadata.AppendToOutgoingContext(cx, registry.ClientHeader, actingFor)
		}
		stream, err := c.Find(cx, &registrypb.FindRequest{Service: svc})
		if err == nil {
			_, err = stream.Recv()
		}
		return err
	}
	fromA, fromC := a.asPeer(t, b, "a.example"), c.asPeer(t, b, "c.example")
	for _, tc := range []struct {
		name      string
		c         registrypb.RegistryClient
		svc, acts string
		want      string // "" allowed
	}{
		{"local workload, open service", local("/ns/web"), "open", "", ""},
		{"local workload, restricted", local("/ns/web"), "restricted", "", "spiffe://b.example/ns/web may not connect"},
		{"local admin workload, restricted", local("/ns/ops/sa/admin"), "restricted", "", ""},
		{"a's workload, open", fromA, "open", "spiffe://a.example/ns/dev/sa/x", ""},
		{"a's prod workload, restricted", fromA, "restricted", "spiffe://a.example/ns/prod/sa/web", ""},
		{"a's dev workload, restricted", fromA, "restricted", "spiffe://a.example/ns/dev/sa/x", "spiffe://a.example/ns/dev/sa/x may not connect"},
		{"a's proxy acting for c's workload", fromA, "open", "spiffe://c.example/x", `may not act for spiffe://c.example/x of another trust domain`},
		{"c's workload (trust-only peer), open", fromC, "open", "spiffe://c.example/x", `trust domain "c.example" is neither`},
		{"b's gateway acting for a local workload, restricted", local("/vwire/gateway/n1"), "restricted", "spiffe://b.example/ns/web", "may not connect"},
	} {
		err := find(tc.c, tc.svc, tc.acts)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: refused: %v", tc.name, err)
		case tc.want != "" && (status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want PermissionDenied with %q", tc.name, err, tc.want)
		}
	}
}

// Peers can come from configuration (--peer, or the YAML file's peer list).
func TestPeersFromConfig(t *testing.T) {
	b := start(t, "b.example")
	bb, err := b.fed().GetBundle(ctx(t), &federationpb.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "b.bundle")
	if err := os.WriteFile(file, bb.GetSpiffe(), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := NewConfig()
	cfg.Name, cfg.DataDir, cfg.Listen = "a.example", filepath.Join(t.TempDir(), "a"), "127.0.0.1:0"
	cfg.Peers = []string{"b.example;bundle-endpoint=" + b.BundleURL() + ";bundle=" + file + ";trust-only"}
	cfg.Logger = slog.New(slog.NewTextHandler(testLog{t, "a"}, nil))
	a, err := Start(ctx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	p, ok := a.Peers.Lookup("b.example")
	if !ok || !p.TrustOnly || p.BundleEndpointURL != b.BundleURL() || p.EndpointID != federation.ProxyID(b.TD) {
		t.Fatalf("configured peer: %+v, %v", p, ok)
	}
	waitFor(t, "a fetched b's bundle", func() bool { return !a.Peers.List()[0].LastFetched.IsZero() })

	for spec, want := range map[string]string{
		"b.example;bundle-endpoint=https://x": "bundle=FILE is required",
		"B_x;bundle=f":                        `domain "B_x"`,
		"b.example;bundle=f;colour=red":       `unknown part "colour=red"`,
		"b.example;bundle-endpoint=https://x;bundle=" + filepath.Join(t.TempDir(), "none"): "no such file",
	} {
		cfg := NewConfig()
		cfg.Name, cfg.DataDir, cfg.Listen = "c.example", filepath.Join(t.TempDir(), "c"), "127.0.0.1:0"
		cfg.Peers = []string{spec}
		d, err := Start(ctx(t), cfg)
		if err == nil {
			d.Close()
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("--peer %q: %v, want %q", spec, err, want)
		}
	}
}

func testLogger(t *testing.T, name string) *slog.Logger {
	return slog.New(slog.NewTextHandler(testLog{t, name}, nil))
}

func freeAddr(t testing.TB) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(e2e.FreePort(t)))
}

func registryClient(d *testDomain) registrypb.RegistryClient {
	return registrypb.NewRegistryClient(d.admin)
}

// asWorkload connects to d's network service API as a workload of d.
func (d *testDomain) asWorkload(t *testing.T, path string) proxypb.NetworkServiceClient {
	t.Helper()
	return proxypb.NewNetworkServiceClient(d.asWorkloadConn(t, path))
}

// asWorkloadConn connects to d as its workload spiffe://TD/path.
func (d *testDomain) asWorkloadConn(t *testing.T, path string) *grpc.ClientConn {
	t.Helper()
	src, err := d.Identity.CA.NewSource(spiffeid.RequireFromPath(d.TD, path), time.Hour, d.Identity.Trust, testLogger(t, path))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	conn, err := federation.DialDomain(d.Addr().String(), src)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// A connection that never starts its TLS handshake (slowloris) is closed
// after federation.HandshakeTimeout, not gRPC's two minutes; the domain
// serves others meanwhile.
func TestSilentConnectionClosed(t *testing.T) {
	d := start(t, "a.example")
	var silent []net.Conn
	for range 20 {
		c, err := net.Dial("tcp", d.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		silent = append(silent, c)
	}
	if _, err := registryClient(d).ListServices(ctx(t), &registrypb.ListServicesRequest{}); err != nil {
		t.Fatalf("with 20 silent connections open: %v", err)
	}
	start := time.Now()
	for _, c := range silent {
		c.SetReadDeadline(start.Add(federation.HandshakeTimeout + 10*time.Second))
		_, err := c.Read(make([]byte, 1))
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("a silent connection still open %v after it was made", time.Since(start).Round(time.Second))
		}
	}
	t.Logf("20 silent connections closed %v after the last was made", time.Since(start).Round(100*time.Millisecond))
}

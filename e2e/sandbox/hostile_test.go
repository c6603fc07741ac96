package sandbox

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	spiffefed "github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/federation/federationpb"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry/registrypb"
)

// hostile is domain c acting against domain b as a federated peer's proxy
// would, with c's real proxy SVID (or another it chooses).
type hostile struct {
	conn *grpc.ClientConn
	ctx  context.Context
}

func dialAs(t *testing.T, from, to *Domain, speaksFor string, src federation.Source) *hostile {
	t.Helper()
	p, _ := from.Peers.Lookup(to.Name)
	conn, err := federation.DialPeer(to.Addr().String(), src, speaksFor, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &hostile{conn: conn, ctx: context.Background()}
}

// refused checks an error's code and words.
func refused(t *testing.T, what string, err error, code codes.Code, says string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(err.Error(), says) {
		t.Errorf("%s: %v\nwant %s saying %q", what, err, code, says)
	}
}

// A hostile federated domain (c) against a real one (b), which a serves a
// connection of: each attempt is refused with the exact reason, and what b
// stores (services, endpoints, connections) is as before.
func TestHostilePeer(t *testing.T) {
	s := New(t, "a.example", "b.example", "c.example", "d.example")
	a, b, c, d := s.D("a.example"), s.D("b.example"), s.D("c.example"), s.D("d.example")
	b.Apply(reference)
	victim, err := a.Request("secure-intranet-connectivity@b.example", "spiffe://a.example/ns/x", map[string]string{"app": "web"}, "")
	if err != nil {
		t.Fatal(err)
	}
	stored := func() string {
		ctx := context.Background()
		reg := registrypb.NewRegistryClient(b.admin)
		svcs, _ := reg.ListServices(ctx, &registrypb.ListServicesRequest{})
		eps, _ := reg.ListEndpoints(ctx, &registrypb.ListEndpointsRequest{})
		conns, _, _ := b.NetworkService.Conns.List(ctx)
		var out []string
		for _, s := range svcs.GetServices() {
			out = append(out, "service "+s.GetName())
		}
		for _, e := range eps.GetEndpoints() {
			out = append(out, "endpoint "+e.GetName())
		}
		for _, c := range conns {
			out = append(out, "connection "+c.GetId()+" "+c.GetRequester())
		}
		return strings.Join(out, "\n")
	}
	before := stored()
	ev := dialAs(t, c, b, "c.example", c.Identity)
	reg, ns := registrypb.NewRegistryClient(ev.conn), proxypb.NewNetworkServiceClient(ev.conn)

	t.Run("register under the victim's own names", func(t *testing.T) {
		_, err := reg.RegisterEndpoint(ev.ctx, &registrypb.RegisterEndpointRequest{Endpoint: &registrypb.Endpoint{
			Name: "firewall-1", NetworkServiceNames: []string{"secure-intranet-connectivity"}, Url: "tcp://127.0.0.1:1"}})
		refused(t, "an endpoint of b's own service", err, codes.PermissionDenied, `domain "c.example" may not register endpoints here: this domain takes registrations only from the peers it names (--registrations-from`)
		_, err = reg.RegisterEndpoint(ev.ctx, &registrypb.RegisterEndpointRequest{Endpoint: &registrypb.Endpoint{
			Name: "x", NetworkServiceNames: []string{"svc@b.example"}, Url: "tcp://127.0.0.1:1"}})
		refused(t, "b as a floating domain it does not offer", err, codes.PermissionDenied, `domain "c.example" may not register endpoints here`)
	})
	t.Run("refresh, close or watch another domain's connection", func(t *testing.T) {
		_, err := ns.Request(ev.ctx, &proxypb.NetworkServiceRequest{Connection: &proxypb.Connection{
			Id: victim.GetId(), NetworkService: "secure-intranet-connectivity"}})
		refused(t, "refreshing a's connection", err, codes.PermissionDenied, "belongs to spiffe://a.example/vwire/proxy")
		_, err = ns.Close(ev.ctx, &proxypb.Connection{Id: victim.GetId()})
		refused(t, "closing a's connection", err, codes.PermissionDenied, "belongs to spiffe://a.example/vwire/proxy")
		for range 50 { // guessing ids
			id := make([]byte, 16)
			rand.Read(id)
			if _, err := ns.Close(ev.ctx, &proxypb.Connection{Id: hex.EncodeToString(id)}); status.Code(err) != codes.NotFound {
				t.Fatalf("closing a guessed id: %v", err)
			}
		}
		mon, err := ns.Monitor(ev.ctx, &proxypb.MonitorScope{ConnectionIds: []string{victim.GetId()}})
		if err == nil {
			_, err = mon.Recv()
		}
		refused(t, "monitoring a's connection", err, codes.PermissionDenied, `domain "c.example" may not call /vwire.networkservice.v1.NetworkService/Monitor`)
	})
	t.Run("speak for a third domain with its own SVID", func(t *testing.T) {
		spoof := dialAs(t, c, b, "a.example", c.Identity)
		stream, err := registrypb.NewRegistryClient(spoof.conn).Find(spoof.ctx, &registrypb.FindRequest{Service: "secure-intranet-connectivity"})
		if err == nil {
			_, err = stream.Recv()
		}
		refused(t, "c speaking for a", err, codes.PermissionDenied, `spiffe://c.example/vwire/proxy may not speak for domain "a.example"`)
	})
	t.Run("a workload SVID where a proxy SVID is required", func(t *testing.T) {
		wl, err := c.Identity.CA.NewSource(spiffeid.RequireFromPath(c.TD, "/ns/attacker"), time.Hour, c.Identity.Trust, slog.Default())
		if err != nil {
			t.Fatal(err)
		}
		defer wl.Close()
		w := dialAs(t, c, b, "c.example", wl)
		_, err = proxypb.NewNetworkServiceClient(w.conn).Request(w.ctx, &proxypb.NetworkServiceRequest{Connection: &proxypb.Connection{NetworkService: "secure-intranet-connectivity"}})
		// Refused in the TLS handshake (the client sees a bad-certificate
		// alert or a reset, whichever comes first; b logs why).
		refused(t, "c's workload SVID", err, codes.Unavailable, "")
	})
	t.Run("a DNS answer sends a's proxy to the attacker", func(t *testing.T) {
		// b's SRV record now leads to c's proxy: a's mTLS expects b's
		// proxy ID, and says which it was shown.
		s.Zone.Remove("_vwire._tcp.b.example.", "SRV")
		port := c.Addr().String()[strings.LastIndex(c.Addr().String(), ":")+1:]
		s.Zone.Add(t, "_vwire._tcp.b.example. 30 IN SRV 10 100 "+port+" proxy.c.example.")
		defer func() {
			s.Zone.Remove("_vwire._tcp.b.example.", "SRV")
			bport := b.Addr().String()[strings.LastIndex(b.Addr().String(), ":")+1:]
			s.Zone.Add(t, "_vwire._tcp.b.example. 30 IN SRV 10 100 "+bport+" proxy.b.example.")
		}()
		// d has no connection to b yet: its first goes where DNS says.
		_, err := d.Find("secure-intranet-connectivity@b.example", nil)
		refused(t, "d's look-up through the forged SRV record", err, codes.Unavailable,
			"expected spiffe://b.example/vwire/proxy, got spiffe://c.example/vwire/proxy")
	})
	t.Run("an SVID of a trust domain federated and then removed", func(t *testing.T) {
		if _, err := federationpb.NewFederationClient(b.admin).RemovePeer(context.Background(), &federationpb.RemovePeerRequest{Domain: "c.example"}); err != nil {
			t.Fatal(err)
		}
		again := dialAs(t, c, b, "c.example", c.Identity)
		_, err := proxypb.NewNetworkServiceClient(again.conn).Request(again.ctx,
			&proxypb.NetworkServiceRequest{Connection: &proxypb.Connection{NetworkService: "secure-intranet-connectivity"}})
		refused(t, "c after b removed it", err, codes.Unavailable, "") // in the TLS handshake, as above
	})
	if after := stored(); after != before {
		t.Errorf("b's state changed:\nbefore\n%s\nafter\n%s", before, after)
	}
}

// A peer's answer with addresses outside the ranges it may assign (vwire
// federation add --addresses) is refused before the client's side is
// programmed, and the peer's side is closed again.
func TestPeerAnswerOutsideRanges(t *testing.T) {
	s := New(t, "a.example", "b.example")
	a, b := s.D("a.example"), s.D("b.example")
	b.Apply(reference)
	b.Dataplane.Addresses = &proxypb.IPContext{SrcIpAddrs: []string{"10.1.2.3/32"}, DstIpAddrs: []string{"10.1.2.4/32"}}
	bundle, err := federationpb.NewFederationClient(b.admin).GetBundle(context.Background(), &federationpb.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// a narrows what b may assign.
	if _, err := federationpb.NewFederationClient(a.admin).AddPeer(context.Background(), &federationpb.AddPeerRequest{
		Peer: &federationpb.Peer{Domain: "b.example", Addresses: []string{"172.16.0.0/12"}}, Bundle: bundle.GetSpiffe()}); err != nil {
		t.Fatal(err)
	}
	_, err = a.Request("secure-intranet-connectivity@b.example", "spiffe://a.example/ns/x", map[string]string{"app": "web"}, "")
	refused(t, "an answer outside a's ranges for b", err, codes.PermissionDenied,
		`domain "b.example" answered address 10.1.2.3/32, outside the ranges it may assign ([172.16.0.0/12]; vwire federation add --addresses)`)
	if a.Dataplane.String() != "" || b.Dataplane.String() != "" {
		t.Errorf("programmed after the refusal: a %q, b %q", a.Dataplane, b.Dataplane)
	}
	b.Dataplane.Addresses = &proxypb.IPContext{SrcIpAddrs: []string{"172.16.0.2/32"}, DstIpAddrs: []string{"172.16.0.3/32"}}
	if _, err := a.Request("secure-intranet-connectivity@b.example", "spiffe://a.example/ns/x", map[string]string{"app": "web"}, ""); err != nil {
		t.Errorf("an answer inside the ranges: %v", err)
	}
}

// A federated peer whose bundle endpoint turns hostile: it serves garbage,
// an expired bundle, a bundle of another trust domain. b refuses each with
// its reason in the peer's status (what `vwire federation list` shows) and
// keeps trusting the last good bundle; a proper rotation afterwards is
// taken and clears the error.
func TestHostileBundleEndpoint(t *testing.T) {
	s := New(t, "b.example")
	b := s.D("b.example")
	td := spiffeid.RequireTrustDomainFromString("e.example")
	ca, err := federation.OpenCA(t.TempDir(), td)
	if err != nil {
		t.Fatal(err)
	}
	src, err := ca.NewSource(federation.ProxyID(td), time.Hour, nil, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	var garbage atomic.Bool
	var serving atomic.Pointer[spiffebundle.Bundle]
	good := spiffebundle.FromX509Bundle(ca.Bundle())
	good.SetRefreshHint(federation.MinRefresh)
	serving.Store(good)
	h, err := spiffefed.NewHandler(td, federation.BundleFunc(func() (*spiffebundle.Bundle, error) { return serving.Load(), nil }))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.TLSServerConfig(src))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if garbage.Load() {
			w.Write([]byte("<html>garbage</html>"))
			return
		}
		h.ServeHTTP(w, r)
	})}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	pem, err := ca.Bundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := federationpb.NewFederationClient(b.admin).AddPeer(context.Background(), &federationpb.AddPeerRequest{
		Peer: &federationpb.Peer{Domain: "e.example", BundleEndpointUrl: "https://" + lis.Addr().String()}, Bundle: pem}); err != nil {
		t.Fatal(err)
	}
	status := func() federation.PeerStatus {
		for _, p := range b.Peers.List() {
			if p.Domain == "e.example" {
				return p
			}
		}
		t.Fatal("e.example is not among b's peers")
		return federation.PeerStatus{}
	}
	waitFor(t, "b fetches e's bundle", func() bool { return status().Source == federation.FromBundleEndpoint })
	trusted := func(st federation.PeerStatus) string { return fmt.Sprint(st.Authorities, st.Expires) }
	before := trusted(status())

	now := time.Now()
	expired := spiffebundle.FromX509Authorities(td, []*x509.Certificate{caCert(t, td, now.Add(-2*time.Hour), now.Add(-time.Hour))})
	alien := spiffebundle.FromX509Authorities(td, []*x509.Certificate{caCert(t, spiffeid.RequireTrustDomainFromString("c.example"), now.Add(-time.Hour), now.Add(time.Hour))})
	for _, c := range []struct {
		name, says string
		serve      func()
	}{
		{"garbage", "unable to parse", func() { garbage.Store(true) }},
		{"an expired bundle", `every authority of the bundle for "e.example" has expired`, func() { garbage.Store(false); serving.Store(expired) }},
		{"another trust domain's bundle", `belongs to trust domain "c.example"`, func() { serving.Store(alien) }},
	} {
		c.serve()
		waitFor(t, c.name+" refused", func() bool { return strings.Contains(status().LastError, c.says) })
		if got := trusted(status()); got != before {
			t.Errorf("%s: b trusts %s for e.example, not the last good bundle (%s)", c.name, got, before)
		}
	}
	rotated := spiffebundle.FromX509Authorities(td, append(ca.Bundle().X509Authorities(), caCert(t, td, now.Add(-time.Minute), now.Add(2*time.Hour))))
	rotated.SetRefreshHint(federation.MinRefresh)
	serving.Store(rotated)
	waitFor(t, "a rotated bundle taken", func() bool { st := status(); return st.Authorities == 2 && st.LastError == "" })
}

// caCert is a self-signed CA certificate of trust domain td, valid from
// from to to.
func caCert(t *testing.T, td spiffeid.TrustDomain, from, to time.Time) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(from.UnixNano()), Subject: pkix.Name{CommonName: "test"}, URIs: []*url.URL{td.ID().URL()},
		NotBefore: from, NotAfter: to, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10 s: %s", what)
		}
	}
}

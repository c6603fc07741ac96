package sandbox

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/vwire/vwire/federation/federationpb"
	"github.com/vwire/vwire/proxy/proxypb"
)

// vwire diagnose stops at the hop a broken set-up breaks, and says why
// and what to do: each case breaks exactly one hop.
func TestDiagnoseFindsTheBrokenHop(t *testing.T) {
	s := New(t, "a.example", "b.example", "c.example")
	a, b, c := s.D("a.example"), s.D("b.example"), s.D("c.example")
	b.Apply(reference + picky + private)
	c.Apply(reference)
	// a no longer federates with c; c no longer with b.
	ctx := context.Background()
	if _, err := federationpb.NewFederationClient(a.admin).RemovePeer(ctx, &federationpb.RemovePeerRequest{Domain: "c.example"}); err != nil {
		t.Fatal(err)
	}
	if _, err := federationpb.NewFederationClient(c.admin).RemovePeer(ctx, &federationpb.RemovePeerRequest{Domain: "b.example"}); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		service, labels string
		from            *Domain
		hop             string // the first that fails ("": none)
		detail, advice  string
	}{
		{"secure-intranet-connectivity@nowhere.example", "", a, "dns", `no _vwire._tcp.nowhere.example SRV record (asked the DNS server ` + s.Zone.Addr, "publish SRV records _vwire._tcp.nowhere.example"},
		{"secure-intranet-connectivity@c.example", "", a, "federation", "c.example is not federated with a.example", "vwire federation add c.example"},
		{"secure-intranet-connectivity@c.example", "", b, "peer-proxy", "c.example's proxy refuses this domain's", "c.example must federate with b.example"},
		{"none@b.example", "", a, "service", `network service "none" is not registered`, "b.example's administrator defines none"},
		{"private@b.example", "", a, "policy", "spiffe://a.example/workload/uid/0 may not connect to network service \"private\"", "allowedSpiffeIDs must admit"},
		{"picky@b.example", "tier=gold", a, "endpoints", `no endpoint of "picky" matches labels`, "register an endpoint"},
		{"secure-intranet-connectivity@b.example", "app=web", a, "", "", ""},
		{"secure-intranet-connectivity", "", b, "", "", ""},
	} {
		labels := map[string]string{}
		if k, v, ok := strings.Cut(tc.labels, "="); ok {
			labels[k] = v
		}
		resp, err := proxypb.NewOperatorClient(tc.from.admin).Diagnose(ctx, &proxypb.DiagnoseRequest{NetworkService: tc.service, Labels: labels})
		if err != nil {
			t.Fatalf("%s from %s: %v", tc.service, tc.from.cfg.Name, err)
		}
		failed := ""
		for _, st := range resp.GetSteps() {
			switch {
			case st.GetResult() == proxypb.DiagnoseStep_FAILED && failed == "":
				failed = st.GetHop()
				if !strings.Contains(st.GetDetail(), tc.detail) || !strings.Contains(st.GetAdvice(), tc.advice) {
					t.Errorf("%s from %s, hop %s: %q → %q\nwant %q → %q", tc.service, tc.from.cfg.Name, failed, st.GetDetail(), st.GetAdvice(), tc.detail, tc.advice)
				}
			case failed != "" && st.GetResult() != proxypb.DiagnoseStep_SKIPPED:
				t.Errorf("%s from %s: hop %s after the failed %s is %v, want skipped", tc.service, tc.from.cfg.Name, st.GetHop(), failed, st.GetResult())
			case failed == "" && st.GetResult() == proxypb.DiagnoseStep_OK && st.GetDetail() == "":
				t.Errorf("%s: hop %s passed without saying what it found", tc.service, st.GetHop())
			}
		}
		if failed != tc.hop {
			t.Errorf("%s from %s: first failed hop %q, want %q; steps: %v", tc.service, tc.from.cfg.Name, failed, tc.hop, resp.GetSteps())
		}
	}

	// Only the domain's admin may diagnose: the gateway's identity may not.
	if _, err := proxypb.NewOperatorClient(a.gateway).Diagnose(ctx, &proxypb.DiagnoseRequest{NetworkService: "none@b.example"}); err == nil || !strings.Contains(err.Error(), "only spiffe://a.example/vwire/admin may diagnose") {
		t.Errorf("a gateway diagnosing: %v", err)
	}
}

// vwire status: the domain's etcd and its leader, its proxies as its SRV
// records resolve, its peers (one whose proxy refuses this domain is not
// reachable, and says why), connections by state.
func TestStatus(t *testing.T) {
	s := New(t, "a.example", "b.example", "c.example")
	a, b, c := s.D("a.example"), s.D("b.example"), s.D("c.example")
	b.Apply(reference)
	ctx := context.Background()
	if _, err := federationpb.NewFederationClient(c.admin).RemovePeer(ctx, &federationpb.RemovePeerRequest{Domain: "a.example"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Request("secure-intranet-connectivity@b.example", "spiffe://a.example/ns/web", map[string]string{"app": "web"}, ""); err != nil {
		t.Fatal(err)
	}
	st, err := proxypb.NewOperatorClient(a.admin).Status(ctx, &proxypb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.GetEtcdMembers()) != 1 || !st.GetEtcdMembers()[0].GetLeader() || st.GetEtcdError() != "" {
		t.Errorf("etcd: %v (%s), want its one member, the leader", st.GetEtcdMembers(), st.GetEtcdError())
	}
	if len(st.GetProxies()) != 1 || st.GetProxies()[0].GetAddresses()[0] != a.Addr().String() {
		t.Errorf("proxies: %v (%s), want the one at %s", st.GetProxies(), st.GetProxiesError(), a.Addr())
	}
	peers := map[string]*proxypb.PeerHealth{}
	for _, p := range st.GetPeers() {
		peers[p.GetDomain()] = p
	}
	if p := peers["b.example"]; p == nil || !p.GetReachable() || p.GetBundleSource() == "" || p.GetBundleExpires() == nil {
		t.Errorf("peer b: %v, want reachable with a trusted bundle", p)
	}
	if p := peers["c.example"]; p == nil || p.GetReachable() || !strings.Contains(p.GetError(), "refused this domain's SVID") {
		t.Errorf("peer c, which no longer federates with a: %v, want unreachable, saying it refuses a", p)
	}
	if st.GetConnections()["up"] != 1 {
		t.Errorf("connections: %v, want 1 up", st.GetConnections())
	}
	if _, err := proxypb.NewOperatorClient(a.gateway).Status(ctx, &proxypb.StatusRequest{}); err == nil {
		t.Error("a gateway's identity read the domain's status")
	}
}

// vwire describe: a connection hop by hop with each hop's lease, and a
// service with what each route of its rules selects now.
func TestDescribe(t *testing.T) {
	s := New(t, "a.example", "b.example")
	a, b := s.D("a.example"), s.D("b.example")
	b.Apply(reference)
	conn, err := a.Request("secure-intranet-connectivity@b.example", "spiffe://a.example/ns/fw", map[string]string{"app": "firewall"}, "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	resp, err := proxypb.NewOperatorClient(a.admin).Describe(ctx, &proxypb.DescribeRequest{What: &proxypb.DescribeRequest_Connection{Connection: conn.GetId()}})
	if err != nil {
		t.Fatal(err)
	}
	c := resp.GetConnection().GetConnection()
	var hops []string
	for _, seg := range c.GetPath().GetSegments() {
		if seg.GetExpires() == nil {
			t.Errorf("hop %s has no lease expiry", seg.GetName())
		}
		hops = append(hops, seg.GetName())
	}
	if strings.Join(hops, " ") != "proxy.a.example proxy.b.example" || c.GetNetworkServiceEndpointName() != "vpn-gateway-1@b.example" {
		t.Errorf("a's connection: hops %v, endpoint %s", hops, c.GetNetworkServiceEndpointName())
	}

	resp, err = proxypb.NewOperatorClient(b.admin).Describe(ctx, &proxypb.DescribeRequest{What: &proxypb.DescribeRequest_Service{Service: "secure-intranet-connectivity"}})
	if err != nil {
		t.Fatal(err)
	}
	var selects []string
	for _, m := range resp.GetService().GetMatches() {
		for _, r := range m.GetRoutes() {
			selects = append(selects, formatSelector(m.GetSourceSelector())+"→"+strings.Join(r.GetEndpoints(), ","))
		}
	}
	if got := strings.Join(selects, " "); got != "app=firewall→vpn-gateway-1 →firewall-1" {
		t.Errorf("b's service's routes select %q", got)
	}

	for _, tc := range []struct {
		req  *proxypb.DescribeRequest
		want string
	}{
		{&proxypb.DescribeRequest{What: &proxypb.DescribeRequest_Connection{Connection: "0123456789abcdef0123456789abcdef"}}, "is not known in"},
		{&proxypb.DescribeRequest{What: &proxypb.DescribeRequest_Connection{Connection: "../x"}}, "connection id"},
		{&proxypb.DescribeRequest{What: &proxypb.DescribeRequest_Service{Service: "nosuch"}}, `network service "nosuch" is not registered`},
		{&proxypb.DescribeRequest{What: &proxypb.DescribeRequest_Service{Service: "No_Such"}}, `network service name "No_Such"`},
		{&proxypb.DescribeRequest{}, "describe a connection or a service"},
	} {
		if _, err := proxypb.NewOperatorClient(a.admin).Describe(ctx, tc.req); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("describe %v: %v, want %q", tc.req, err, tc.want)
		}
	}
}

func formatSelector(s map[string]string) string {
	var kv []string
	for k, v := range s {
		kv = append(kv, k+"="+v)
	}
	return strings.Join(kv, ",")
}

// A peer whose bundle expired (its only authority's lifetime ended, and no
// new bundle came from its bundle endpoint) fails the federation hop, with
// when it expired and why no new one came.
func TestDiagnoseExpiredBundle(t *testing.T) {
	s := New(t, "a.example")
	a := s.D("a.example")
	s.Zone.Add(t, "_vwire._tcp.d.example. 30 IN SRV 10 100 7001 proxy.d.example.", "proxy.d.example. 30 IN A 127.0.0.1")
	// d's CA, valid for two seconds from now.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	expires := time.Now().Add(2 * time.Second)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "d.example"}, NotBefore: time.Now().Add(-time.Minute), NotAfter: expires,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, URIs: []*url.URL{{Scheme: "spiffe", Host: "d.example"}}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := federationpb.NewFederationClient(a.admin).AddPeer(ctx, &federationpb.AddPeerRequest{
		Peer:   &federationpb.Peer{Domain: "d.example", BundleEndpointUrl: "https://127.0.0.1:1"},
		Bundle: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
	}); err != nil {
		t.Fatal(err)
	}
	for time.Now().Before(expires.Add(100 * time.Millisecond)) {
		time.Sleep(100 * time.Millisecond) // until the authority's NotAfter: the certificate says when
	}
	resp, err := proxypb.NewOperatorClient(a.admin).Diagnose(ctx, &proxypb.DiagnoseRequest{NetworkService: "svc@d.example"})
	if err != nil {
		t.Fatal(err)
	}
	var fed *proxypb.DiagnoseStep
	for _, st := range resp.GetSteps() {
		if st.GetHop() == "federation" {
			fed = st
		}
	}
	if fed.GetResult() != proxypb.DiagnoseStep_FAILED || !strings.Contains(fed.GetDetail(), "d.example's bundle expired at "+expires.UTC().Format(time.RFC3339)) ||
		!strings.Contains(fed.GetDetail(), "127.0.0.1:1") || !strings.Contains(fed.GetAdvice(), "https://127.0.0.1:1") {
		t.Errorf("the federation hop: %v", fed)
	}
}

package registry_test

import (
	"crypto/tls"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/registry/registrypb"
)

// staticSource presents a fixed SVID and trusts fixed bundles.
type staticSource struct {
	*federation.Trust
	svid *x509svid.SVID
}

func (s staticSource) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }
func (s staticSource) Close() error                         { return nil }

// The registry refuses clients without an SVID, from an unknown trust
// domain, or with an expired SVID, and its log says which.
func TestMTLSRefusesAndSaysWhy(t *testing.T) {
	d := startDomain(t, "a.example")
	evilCA, err := federation.OpenCA(t.TempDir(), spiffeid.RequireTrustDomainFromString("evil.example"))
	if err != nil {
		t.Fatal(err)
	}
	// The bad clients trust the real registry, so only the server can refuse.
	trust := federation.NewTrust(d.ca.Bundle(), evilCA.Bundle())
	issue := func(ca *federation.CA, path string, ttl time.Duration) staticSource {
		svid, err := ca.Issue(spiffeid.RequireFromPath(ca.TrustDomain(), path), ttl)
		if err != nil {
			t.Fatal(err)
		}
		return staticSource{trust, svid}
	}
	td := d.ca.TrustDomain()
	cases := []struct {
		name  string
		creds credentials.TransportCredentials
		log   string
	}{
		{"no SVID", credentials.NewTLS(&tls.Config{InsecureSkipVerify: true}), "client didn't provide a certificate"},
		{"unknown trust domain", federation.ClientCredentials(issue(evilCA, "/vwire/admin", time.Hour), federation.AuthorizeOf(federation.RegistryID(td))),
			`trust domain \"evil.example\" is not trusted here`},
		{"expired SVID", federation.ClientCredentials(issue(d.ca, "/vwire/admin", -30*time.Second), federation.AuthorizeOf(federation.RegistryID(td))),
			"certificate has expired"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn, err := grpc.NewClient(d.reg.Addr().String(), grpc.WithTransportCredentials(c.creds))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_, err = registrypb.NewRegistryClient(conn).ListServices(ctx(t), &registrypb.ListServicesRequest{})
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("call succeeded or failed oddly: %v", err)
			}
			if !waitFor(func() bool { return strings.Contains(d.logs.String(), c.log) }) {
				t.Errorf("server log lacks %q:\n%s", c.log, d.logs.String())
			}
		})
	}
	if !strings.Contains(d.logs.String(), "refused a TLS connection") {
		t.Errorf("no refusal logged")
	}
}

// A client of the registry refuses a server that is not its domain's
// registry or proxy, even with a valid SVID of the same trust domain.
func TestDialRefusesImpostor(t *testing.T) {
	d := startDomain(t, "a.example")
	impostor, err := d.ca.NewSource(spiffeid.RequireFromPath(d.ca.TrustDomain(), "/ns/default/sa/web"), time.Hour, nil, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer impostor.Close()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(federation.ServerCredentials(impostor, federation.AuthorizeMember(d.ca.TrustDomain()), slog.Default())))
	registrypb.RegisterRegistryServer(srv, registrypb.UnimplementedRegistryServer{})
	go srv.Serve(lis)
	defer srv.Stop()

	c := dialCredentials(t, lis.Addr().String(), d.dataDir+"/admin")
	_, err = c.ListServices(ctx(t), &registrypb.ListServicesRequest{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "expected spiffe://a.example/vwire/registry or spiffe://a.example/vwire/proxy, got spiffe://a.example/ns/default/sa/web") {
		t.Errorf("impostor accepted or refused unclearly: %v", err)
	}
}

func waitFor(cond func() bool) bool {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return false
}

package federation

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var td = spiffeid.RequireTrustDomainFromString("a.example")

// The CA is created once and the same one is loaded afterwards; its SVIDs
// verify against its bundle.
func TestCAPersistsAndIssuesVerifiableSVIDs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := OpenCA(dir, td)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "ca.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("ca.key: %v, mode %v; want 0600", err, fi.Mode())
	}
	again, err := OpenCA(dir, td)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Bundle().Equal(ca.Bundle()) {
		t.Fatal("reopening the CA made a new one")
	}
	svid, err := again.Issue(RegistryID(td), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := x509svid.Verify(svid.Certificates, ca.Bundle())
	if err != nil || id != RegistryID(td) {
		t.Errorf("verify: %v, %v", id, err)
	}
	if _, err := ca.Issue(spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString("b.example"), "/x"), time.Hour); err == nil {
		t.Error("the CA issued for another trust domain")
	}
	if _, err := OpenCA(dir, spiffeid.RequireTrustDomainFromString("b.example")); err == nil || !strings.Contains(err.Error(), "another trust domain") {
		t.Errorf("opening a's CA as b's: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "ca.pem"), []byte("garbage"), 0o644)
	if _, err := OpenCA(dir, td); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("corrupt CA: %v", err)
	}
}

// A source renews its SVID before it expires.
func TestSourceRenews(t *testing.T) {
	ca, err := OpenCA(t.TempDir(), td)
	if err != nil {
		t.Fatal(err)
	}
	src, err := ca.NewSource(ProxyID(td), 2*time.Second, nil, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	first, _ := src.GetX509SVID()
	time.Sleep(1300 * time.Millisecond) // X.509 times have whole seconds
	second, _ := src.GetX509SVID()
	if first.Certificates[0].SerialNumber.Cmp(second.Certificates[0].SerialNumber) == 0 {
		t.Error("the SVID was not renewed at half its lifetime")
	}
	if !time.Now().Before(second.Certificates[0].NotAfter) {
		t.Error("the current SVID has expired")
	}
}

func TestCredentials(t *testing.T) {
	ca, err := OpenCA(t.TempDir(), td)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := ca.WriteCredentials(dir, AdminID(td), time.Hour); err != nil {
		t.Fatal(err)
	}
	src, err := LoadCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	if src.ID() != AdminID(td) {
		t.Errorf("id %v", src.ID())
	}
	if b, err := src.GetX509BundleForTrustDomain(td); err != nil || !b.Equal(ca.Bundle()) {
		t.Errorf("bundle %v, %v", b, err)
	}
	if _, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("c.example")); err == nil || !strings.Contains(err.Error(), `"c.example" is not trusted here`) {
		t.Errorf("unknown trust domain: %v", err)
	}
	if err := ca.WriteCredentials(dir, AdminID(td), -time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCredentials(dir); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired credentials: %v", err)
	}
}

// The built-in identity writes admin credentials and stops its goroutines
// on Close (goleak checks).
func TestOpenIdentityBuiltin(t *testing.T) {
	dir := t.TempDir()
	src, err := OpenIdentity(t.Context(), "", dir, RegistryID(td), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	svid, _ := src.GetX509SVID()
	if svid.ID != RegistryID(td) {
		t.Errorf("id %v", svid.ID)
	}
	if _, err := LoadCredentials(filepath.Join(dir, "admin")); err != nil {
		t.Error(err)
	}
	src.Close()
}

// A server on a credentials directory (`vwire gateway --credentials`) keeps
// admitting new connections after its first SVID expired, once the SVID was
// issued again into the directory; and it follows a new CA's bundle.
func TestCredentialsReissued(t *testing.T) {
	ca, err := OpenCA(t.TempDir(), td)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	gw := spiffeid.RequireFromPath(td, "/vwire/gateway/n1")
	if err := ca.WriteCredentials(dir, gw, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	src, err := LoadCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	first, _ := src.GetX509SVID()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(ServerCredentials(src, AuthorizeOf(ProxyID(td)), slog.Default())))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	defer srv.Stop()
	check := func() error { // a new connection each time: a new handshake
		proxy, err := ca.NewSource(ProxyID(td), time.Hour, NewTrust(ca.Bundle()), slog.Default())
		if err != nil {
			t.Fatal(err)
		}
		defer proxy.Close()
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(ClientCredentials(proxy, AuthorizeOf(gw))))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	if err := check(); err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteCredentials(dir, gw, time.Hour); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(first.Certificates[0].NotAfter) + 100*time.Millisecond) // the first SVID has expired
	if err := check(); err != nil {
		t.Errorf("after the SVID was issued again: %v", err)
	}
	if now, _ := src.GetX509SVID(); !time.Now().Before(now.Certificates[0].NotAfter) {
		t.Errorf("the source still holds an expired SVID (until %v)", now.Certificates[0].NotAfter)
	}

	// Files for another ID are not taken: the source keeps its identity.
	if err := ca.WriteCredentials(dir, AdminID(td), time.Hour); err != nil {
		t.Fatal(err)
	}
	time.Sleep(reloadEvery)
	if now, _ := src.GetX509SVID(); now.ID != gw {
		t.Errorf("the source took credentials for %v", now.ID)
	}

	// The domain's CA changed: the new bundle is trusted once written.
	ca2, err := OpenCA(t.TempDir(), td)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca2.WriteCredentials(dir, gw, time.Hour); err != nil {
		t.Fatal(err)
	}
	time.Sleep(reloadEvery)
	if b, err := src.GetX509BundleForTrustDomain(td); err != nil || !b.Equal(ca2.Bundle()) {
		t.Errorf("bundle after the CA changed: %v", err)
	}
}

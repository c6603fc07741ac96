package federation

import (
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

var tdB = spiffeid.RequireTrustDomainFromString("b.example")

// peerEndpoint is b.example's bundle endpoint whose answer a test changes.
type peerEndpoint struct {
	url    string
	bundle atomic.Pointer[spiffebundle.Bundle]
}

func servePeer(t *testing.T, ca *CA, id spiffeid.ID) *peerEndpoint {
	t.Helper()
	src, err := ca.NewSource(id, time.Hour, nil, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	p := &peerEndpoint{}
	good := spiffebundle.FromX509Bundle(ca.Bundle())
	good.SetRefreshHint(MinRefresh)
	p.bundle.Store(good)
	h, err := federation.NewHandler(tdB, BundleFunc(func() (*spiffebundle.Bundle, error) { return p.bundle.Load(), nil }))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, TLSConfig: tlsconfig.TLSServerConfig(src)}
	go srv.Serve(tls.NewListener(lis, srv.TLSConfig))
	t.Cleanup(func() { srv.Close() })
	p.url = "https://" + lis.Addr().String()
	return p
}

func follow(t *testing.T, ca *CA, url string, endpointID spiffeid.ID) (*Follower, *Trust) {
	t.Helper()
	trust := NewTrust()
	f, err := NewFollower(Peer{Domain: "b.example", TrustDomain: tdB, BundleEndpointURL: url, EndpointID: endpointID},
		spiffebundle.FromX509Bundle(ca.Bundle()), trust, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	f.Start()
	t.Cleanup(f.Close)
	return f, trust
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("not within 10s: %s", what)
}

// An endpoint that presents another SPIFFE ID than configured is refused.
func TestFollowerRefusesWrongEndpointID(t *testing.T) {
	caB, err := OpenCA(t.TempDir(), tdB)
	if err != nil {
		t.Fatal(err)
	}
	ep := servePeer(t, caB, spiffeid.RequireFromPath(tdB, "/not-the-endpoint"))
	f, _ := follow(t, caB, ep.url, ProxyID(tdB))
	eventually(t, "refused", func() bool {
		return strings.Contains(f.Status().LastError, "expected spiffe://b.example/vwire/proxy, got spiffe://b.example/not-the-endpoint")
	})
	if !f.Status().LastFetched.IsZero() {
		t.Error("a bundle from an impostor endpoint was taken")
	}
}

func TestValidateBootstrap(t *testing.T) {
	if _, err := NewFollower(Peer{Domain: "b.example", TrustDomain: tdB}, spiffebundle.New(tdB), NewTrust(), slog.Default()); err == nil || !strings.Contains(err.Error(), "no X.509 authorities") {
		t.Errorf("empty bootstrap: %v", err)
	}
}

package federation

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"log/slog"
	"net"
	"net/http"
	"net/url"
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

// caCert makes a self-signed CA certificate for td valid in [from, to).
func caCert(t *testing.T, td spiffeid.TrustDomain, from, to time.Time) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: "test"}, URIs: []*url.URL{td.ID().URL()},
		NotBefore: from, NotAfter: to, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// peerEndpoint is b.example's bundle endpoint whose answer a test changes.
type peerEndpoint struct {
	url     string
	garbage atomic.Bool
	bundle  atomic.Pointer[spiffebundle.Bundle]
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
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.garbage.Load() {
			w.Write([]byte("<html>garbage</html>"))
			return
		}
		h.ServeHTTP(w, r)
	}), TLSConfig: tlsconfig.TLSServerConfig(src)}
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

// Garbage, an expired bundle, a bundle of another trust domain: each is
// refused with its reason in the status, and the last good bundle stays.
func TestFollowerRefusesBadBundles(t *testing.T) {
	caB, err := OpenCA(t.TempDir(), tdB)
	if err != nil {
		t.Fatal(err)
	}
	ep := servePeer(t, caB, ProxyID(tdB))
	f, trust := follow(t, caB, ep.url, ProxyID(tdB))
	eventually(t, "first fetch", func() bool { return !f.Status().LastFetched.IsZero() })
	good, _ := trust.GetX509BundleForTrustDomain(tdB)

	now := time.Now()
	expired := spiffebundle.FromX509Authorities(tdB, []*x509.Certificate{caCert(t, tdB, now.Add(-2*time.Hour), now.Add(-time.Hour))})
	alien := spiffebundle.FromX509Authorities(tdB, []*x509.Certificate{caCert(t, spiffeid.RequireTrustDomainFromString("c.example"), now.Add(-time.Hour), now.Add(time.Hour))})
	cases := []struct {
		name  string
		set   func()
		error string
	}{
		{"garbage", func() { ep.garbage.Store(true) }, "unable to parse"},
		{"expired", func() { ep.garbage.Store(false); ep.bundle.Store(expired) }, "every authority of the bundle for \"b.example\" has expired"},
		{"wrong trust domain", func() { ep.bundle.Store(alien) }, `belongs to trust domain "c.example"`},
	}
	for _, c := range cases {
		c.set()
		eventually(t, c.name+" refused", func() bool { return strings.Contains(f.Status().LastError, c.error) })
		if b, _ := trust.GetX509BundleForTrustDomain(tdB); !b.Equal(good) {
			t.Errorf("%s: the last good bundle was replaced", c.name)
		}
	}

	// A rotation: the peer publishes a second root; it is taken, and the
	// error clears.
	rotated := spiffebundle.FromX509Authorities(tdB, append(caB.Bundle().X509Authorities(), caCert(t, tdB, now.Add(-time.Minute), now.Add(time.Hour))))
	rotated.SetRefreshHint(MinRefresh)
	ep.bundle.Store(rotated)
	eventually(t, "rotated bundle taken", func() bool {
		b, _ := trust.GetX509BundleForTrustDomain(tdB)
		return len(b.X509Authorities()) == 2 && f.Status().LastError == ""
	})
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

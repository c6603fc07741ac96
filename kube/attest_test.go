package kube_test

import (
	"context"
	"crypto/tls"
	"io"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/kube"
)

// serveAttestor serves h over TLS with an SVID of proxy's from ca, and
// returns its https:// URL.
func serveAttestor(t *testing.T, ca *federation.CA, h http.Handler) string {
	t.Helper()
	src, err := ca.NewSource(federation.ProxyID(ca.TrustDomain()), 0, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, TLSConfig: tlsconfig.TLSServerConfig(src), ErrorLog: stdlog.New(io.Discard, "", 0)}
	go srv.Serve(tls.NewListener(lis, srv.TLSConfig))
	t.Cleanup(func() { srv.Close() })
	return "https://" + lis.Addr().String()
}

// A gateway pod gets the SVID of its node's gateway for its projected
// service account token, and renews it; the token of another service
// account, of another audience or of no pod gets nothing, with the reason;
// and a gateway does not hand its token to a server that is not its
// domain's proxy.
func TestAttest(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a Kubernetes API server")
	}
	k := e2e.StartKubeAPI(t)
	kubectl(t, k, true, "", "create", "namespace", "vwire")
	kubectl(t, k, true, "", "create", "serviceaccount", "-n", "vwire", "gateway")
	kubectl(t, k, true, "", "create", "serviceaccount", "-n", "vwire", "other")
	pod := func(name, sa, node string) {
		kubectl(t, k, true, "apiVersion: v1\nkind: Pod\nmetadata: {name: "+name+", namespace: vwire}\nspec:\n  nodeName: \""+node+"\"\n  serviceAccountName: "+sa+"\n  containers: [{name: c, image: x}]\n", "apply", "-f", "-")
	}
	pod("gateway-a", "gateway", "node-a")
	pod("other-b", "other", "node-b")
	dir := t.TempDir()
	token := func(name string, args ...string) string {
		out := kubectl(t, k, true, "", append([]string{"create", "token", "-n", "vwire"}, args...)...)
		path := filepath.Join(dir, name)
		os.WriteFile(path, []byte(out), 0o600)
		return path
	}
	gatewayToken := token("gateway", "gateway", "--bound-object-kind", "Pod", "--bound-object-name", "gateway-a", "--audience", kube.AttestAudience)

	td := spiffeid.RequireTrustDomainFromString("a.example")
	ca, err := federation.OpenCA(filepath.Join(dir, "ca"), td)
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "bundle.pem")
	if err := ca.WriteCredentials(filepath.Join(dir, "creds"), federation.AdminID(td), time.Hour); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "creds", "bundle.pem"))
	os.WriteFile(bundle, b, 0o644)
	log := slog.New(slog.NewTextHandler(logWriter{t}, nil))
	url := serveAttestor(t, ca, &kube.Attestor{Client: dynamicClient(t, k), CA: ca, ServiceAccount: "vwire/gateway", TTL: 4 * time.Second, Log: log})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	src, err := kube.NewAttestSource(ctx, url, gatewayToken, bundle, td, log)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	svid, _ := src.GetX509SVID()
	if want := "spiffe://a.example/vwire/gateway/node-a"; svid.ID.String() != want {
		t.Fatalf("the gateway on node-a got %s, want %s", svid.ID, want)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, ca.Bundle()); err != nil {
		t.Errorf("the SVID does not chain to the domain's CA: %v", err)
	}
	first := svid.Certificates[0].SerialNumber.String()
	waitFor(t, "the SVID renewed before it expires", func() bool {
		s, _ := src.GetX509SVID()
		return s.Certificates[0].SerialNumber.String() != first && time.Now().Before(s.Certificates[0].NotAfter)
	})

	for _, c := range []struct {
		what, token, want string
	}{
		{"another service account's token", token("other", "other", "--bound-object-kind", "Pod", "--bound-object-name", "other-b", "--audience", kube.AttestAudience),
			"the token is system:serviceaccount:vwire:other's, not the gateways' service account (system:serviceaccount:vwire:gateway)"},
		{"a token for the API server", token("api", "gateway", "--bound-object-kind", "Pod", "--bound-object-name", "gateway-a"),
			`the API server does not accept the token for audience "vwire"`},
		{"a token of no pod", token("nopod", "gateway", "--audience", kube.AttestAudience),
			"the token is bound to no pod on a node"},
	} {
		_, err := kube.NewAttestSource(ctx, url, c.token, bundle, td, log)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.what, err, c.want)
		}
	}

	// A server with another domain's proxy SVID never sees the token.
	other, err := federation.OpenCA(filepath.Join(dir, "other-ca"), td)
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan struct{}, 1)
	impostor := serveAttestor(t, other, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { seen <- struct{}{} }))
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	defer cancelShort()
	_, err = kube.NewAttestSource(short, impostor, gatewayToken, bundle, td, log)
	if err == nil || !strings.Contains(err.Error(), "x509") {
		t.Errorf("attesting to an impostor: %v", err)
	}
	select {
	case <-seen:
		t.Error("the impostor got the gateway's request")
	default:
	}

	// What is not an attestation is refused before the API server is asked.
	resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}).Post(url+kube.AttestPath, "application/json", strings.NewReader(`{"token": "`+strings.Repeat("x", 64<<10)+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a 64 KiB attestation: %s, want 400", resp.Status)
	}
}

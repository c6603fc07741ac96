package sandbox

import (
	"testing"

	"github.com/vwire/vwire/domain"
	"github.com/vwire/vwire/e2e"
)

// Each domain's proxy counts what a user would look for: set-ups by scope,
// refreshes, closes, refusals by the reason (the endpoint domain's reason
// reaches the client's domain too), connections by service, domain and
// state, DNS look-ups, the peers' bundles, the registry's contents, etcd's
// and gRPC's calls; and promtool finds nothing wrong with the exposition.
func TestMetricsCount(t *testing.T) {
	s := NewWith(t, func(c *domain.Config) { c.MetricsListen = "127.0.0.1:0" }, "a.example", "b.example")
	a, b := s.D("a.example"), s.D("b.example")
	b.Apply(reference + picky + private + `---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata: {name: private-1}
spec: {networkServiceNames: [private]}
`)
	before := e2e.Scrape(t, a.MetricsAddr())

	conn, err := a.Request("secure-intranet-connectivity@b.example", "spiffe://a.example/ns/web", map[string]string{"app": "web"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Request("secure-intranet-connectivity@b.example", "spiffe://a.example/ns/web", map[string]string{"app": "web"}, conn.GetId()); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Request("secure-intranet-connectivity", "spiffe://a.example/ns/web", nil, ""); err == nil {
		t.Fatal("a has no such service, yet a request for it was answered")
	}
	refused := map[string]string{
		"picky@b.example":   "no_endpoint",
		"none@b.example":    "unknown_service",
		"private@b.example": "policy",
		"x@nowhere.example": "peer_unreachable",
	}
	for service := range refused {
		if _, err := a.Request(service, "spiffe://a.example/ns/x", map[string]string{"tier": "gold"}, ""); err == nil {
			t.Fatalf("%s: answered, want a refusal", service)
		}
	}

	ma, mb := e2e.Scrape(t, a.MetricsAddr()), e2e.Scrape(t, b.MetricsAddr())
	delta := func(m e2e.Metrics, name string, labels ...string) float64 {
		return m.Value(name, labels...) - before.Value(name, labels...)
	}
	for _, c := range []struct {
		what string
		got  float64
		want float64
	}{
		{"a: cross-domain set-ups", delta(ma, "vwire_proxy_setup_duration_seconds", "scope=cross_domain"), 1},
		{"b: cross-domain set-ups", mb.Value("vwire_proxy_setup_duration_seconds", "scope=cross_domain"), 1},
		{"a: local set-ups", delta(ma, "vwire_proxy_setup_duration_seconds", "scope=local"), 0},
		{"a: refreshes", delta(ma, "vwire_proxy_refreshes_total"), 1},
		{"a: live connections of the service to b", ma.Value("vwire_proxy_connections", "service=secure-intranet-connectivity", "remote_domain=b.example", "state=up"), 1},
		{"b: live connections of the service from a", mb.Value("vwire_proxy_connections", "service=secure-intranet-connectivity", "remote_domain=a.example", "state=up"), 1},
		{"a: refused, unknown service here", delta(ma, "vwire_proxy_refusals_total", "reason=unknown_service"), 2},
		{"a: refused, no endpoint at b", delta(ma, "vwire_proxy_refusals_total", "reason=no_endpoint"), 1},
		{"a: refused, b's policy", delta(ma, "vwire_proxy_refusals_total", "reason=policy"), 1},
		{"a: refused, no such domain", delta(ma, "vwire_proxy_refusals_total", "reason=peer_unreachable"), 1},
		{"b: refused, its policy", mb.Value("vwire_proxy_refusals_total", "reason=policy"), 1},
		{"b: refused, no endpoint", mb.Value("vwire_proxy_refusals_total", "reason=no_endpoint"), 1},
		{"a: DNS look-ups with no such name", delta(ma, "vwire_dns_lookups_total", "result=nxdomain"), 1},
		{"b: services", mb.Value("vwire_registry_services"), 3},
		{"b: endpoints", mb.Value("vwire_registry_endpoints"), 3},
		{"a: b's bundle is trusted", ma.Value("vwire_federation_peer_bundle_trusted", "peer=b.example"), 1},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.what, c.got, c.want)
		}
	}
	if n := delta(ma, "vwire_dns_lookups_total", "result=answer") + delta(ma, "vwire_dns_lookups_total", "result=cached"); n < 1 {
		t.Errorf("a looked b up %v times", n)
	}
	if ma.Value("vwire_federation_bundle_expiry_timestamp_seconds", "peer=b.example") <= 0 {
		t.Error("a does not say when b's bundle expires")
	}
	if ma.Value("vwire_registry_etcd_request_duration_seconds") <= before.Value("vwire_registry_etcd_request_duration_seconds") {
		t.Error("a's calls to etcd were not timed")
	}
	if n := mb.Value("grpc_server_handled_total", "grpc_method=Request", "grpc_code=OK"); n != 2 {
		t.Errorf("b's gRPC server handled %v Requests with OK, want 2 (a set-up and its refresh)", n)
	}
	if n := delta(ma, "grpc_client_handled_total", "grpc_method=Request", "grpc_code=OK"); n != 2 {
		t.Errorf("a's gRPC client saw %v Requests answered OK, want 2", n)
	}

	if err := a.Close(conn); err != nil {
		t.Fatal(err)
	}
	after := e2e.Scrape(t, a.MetricsAddr())
	if n := after.Value("vwire_proxy_closes_total") - ma.Value("vwire_proxy_closes_total"); n != 1 {
		t.Errorf("a counted %v closes, want 1", n)
	}
	after.Promtool(t)
	mb.Promtool(t)
}

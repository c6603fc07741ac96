package netns

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/gateway/kernel"
)

// Every server role serves metrics that move with what a test does: two
// vwire domains and a node's `vwire gateway`, scraped before and after a
// vWire is set up and carries pings, and after a request is refused; each
// exposition passes promtool.
func TestMetricsMove(t *testing.T) {
	e2e.RequireRoot(t, "ping")
	w := newWorld(t, vwireBin, "a.example", "b.example")
	a, b := w.domains["a.example"], w.domains["b.example"]
	for _, h := range []*host{a, b} {
		w.restart(h, "--metrics-listen", h.addr+":9090")
	}
	os.WriteFile(filepath.Join(w.dir, "svc.yaml"), []byte(ipService), 0o600)
	w.cli("b.example", "apply", "-f", filepath.Join(w.dir, "svc.yaml"))
	b2 := w.gatewayNode("b.example", "b2", "10.99.0.12", "--metrics-listen", "10.99.0.12:9090")
	epNS := w.workload("e2")
	e2e.StartVwire(t, "ip", nil, "netns", "exec", b2.ns, w.bin, "endpoint", "--name", "ep-b2", "--service", "svc",
		"--cidr", "172.16.9.0/24", "--netns", epNS, "--gateway", "unix://"+filepath.Join(b2.data, "gateway.sock"))
	scrape := func(h *host) e2e.Metrics { return e2e.ScrapeWith(t, clientIn(h.ns), h.addr+":9090") }
	beforeA, beforeB := scrape(a), scrape(b)

	clientNS := w.workload("c")
	c := w.connect("a.example", "svc@b.example", clientNS)
	if err := ping(clientNS, c.Up.peer()); err != nil { // the handshake
		t.Fatal(err)
	}
	upA, upB2 := scrape(a), scrape(b2)
	const pings, size = 20, 1000
	if err := ping(clientNS, c.Up.peer(), "-c", "20", "-i", "0.01", "-s", "1000"); err != nil {
		t.Fatal(err)
	}
	out, err := inNS(a.ns, w.bin, "connect", "nosuch@b.example", "--once", "--netns", clientNS, "--interface", "nsm1",
		"--gateway", "unix://"+filepath.Join(a.data, "gateway.sock")).CombinedOutput()
	if err == nil {
		t.Fatalf("a vWire to a service b does not have:\n%s", out)
	}
	t.Logf("vwire connect nosuch@b.example: %v\n%s", err, out)
	ma, mb, mb2 := scrape(a), scrape(b), scrape(b2)

	moved := func(after, before e2e.Metrics, name string, labels ...string) float64 {
		return after.Value(name, labels...) - before.Value(name, labels...)
	}
	for _, c := range []struct {
		what     string
		got, min float64
	}{
		{"a: cross-domain set-ups", moved(ma, beforeA, "vwire_proxy_setup_duration_seconds", "scope=cross_domain"), 1},
		{"b: cross-domain set-ups", moved(mb, beforeB, "vwire_proxy_setup_duration_seconds", "scope=cross_domain"), 1},
		{"a: live connections to b", ma.Value("vwire_proxy_connections", "service=svc", "remote_domain=b.example", "state=up"), 1},
		{"a: refusals, unknown service (b's reason)", moved(ma, beforeA, "vwire_proxy_refusals_total", "reason=unknown_service"), 1},
		{"b: refusals, unknown service", moved(mb, beforeB, "vwire_proxy_refusals_total", "reason=unknown_service"), 1},
		{"a: DNS answers for b", moved(ma, beforeA, "vwire_dns_lookups_total", "result=answer"), 1},
		{"b: endpoints", mb.Value("vwire_registry_endpoints"), 1},
		{"a: vWire ends on a's gateway", ma.Value("vwire_gateway_vwires"), 1},
		{"b2: vWire ends on b2's gateway", mb2.Value("vwire_gateway_vwires"), 1},
		{"a: tunnels to peer gateways", ma.Value("vwire_gateway_peer_tunnels"), 1},
		{"a: bytes sent to b2 by WireGuard", moved(ma, upA, "vwire_gateway_peer_sent_bytes_total"), pings * size},
		{"b2: bytes received from a by WireGuard", moved(mb2, upB2, "vwire_gateway_peer_received_bytes_total"), pings * size},
		{"a: bytes from the client into its vWire", moved(ma, upA, "vwire_gateway_interface_bytes", "direction=from_workloads"), pings * size},
		{"b2: bytes from the vWire to the endpoint", moved(mb2, upB2, "vwire_gateway_interface_bytes", "direction=to_workloads"), pings * size},
		{"b2: packets from the vWire to the endpoint", moved(mb2, upB2, "vwire_gateway_interface_packets", "direction=to_workloads"), pings},
		{"b2: calls from b's proxy it answered", mb2.Value("grpc_server_handled_total", "grpc_code=OK"), 1},
		{"a: etcd calls timed", ma.Value("vwire_registry_etcd_request_duration_seconds"), 1},
	} {
		if c.got < c.min {
			t.Errorf("%s: %v, want at least %v", c.what, c.got, c.min)
		}
	}
	if !ma.Has("vwire_gateway_peer_last_handshake_age_seconds") || !mb2.Has("vwire_gateway_peer_last_handshake_age_seconds") {
		t.Error("a handshake completed, yet a gateway reports no handshake age")
	}
	for name, m := range map[string]e2e.Metrics{"a": ma, "b": mb, "b2": mb2} {
		t.Run("promtool "+name, func(t *testing.T) { m.Promtool(t) })
	}
	// A peer's bundle age is served once its bundle came from the bundle
	// endpoint, not only the bootstrap one: a's first fetch may have met
	// b restarting, and its retry comes a moment later.
	for deadline := time.Now().Add(30 * time.Second); !ma.Has("vwire_federation_bundle_age_seconds"); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a has not fetched b's bundle from its bundle endpoint in 30 s")
		}
		ma = scrape(a)
	}
	t.Run("the Grafana dashboard uses these metrics only", func(t *testing.T) {
		raw, err := os.ReadFile("../../deploy/grafana/vwire.json")
		if err != nil {
			t.Fatal(err)
		}
		// (A selector follows each metric's name in its queries.)
		found := regexp.MustCompile(`\b((?:vwire|grpc)_[a-z_]+)\{`).FindAllStringSubmatch(string(raw), -1)
		if len(found) < 10 {
			t.Fatalf("the dashboard names %d metrics", len(found))
		}
		for _, f := range found {
			n := f[1]
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_count"), "_sum")
			if !ma.Has(n) && !ma.Has(base) && !mb2.Has(n) && !mb2.Has(base) {
				t.Errorf("the dashboard queries %s, which no role serves", n)
			}
		}
	})
}

// clientIn is an HTTP client that dials from network namespace ns.
func clientIn(ns string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = kernel.Do(ns, func() (err error) { c, err = (&net.Dialer{}).DialContext(ctx, network, addr); return err })
		return c, err
	}}}
}

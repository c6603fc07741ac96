package netns

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/gateway/kernel"
)

// hop is a span a request's trace must have: the process's service name,
// the hop (vwire.hop) and the span's name.
type hop struct{ service, hop, name string }

// One `vwire connect svc@b.example` is one trace, exported over OTLP by
// every process on its path: the client, a's gateway and proxy, b's proxy,
// the gateway of b's node that serves the endpoint, and the endpoint, with
// the DNS look-up, the endpoint's selection and the data-plane programming
// as spans; a's log line for the connection names the trace; a refused
// request's spans say why.
func TestTraceAcrossDomains(t *testing.T) {
	e2e.RequireRoot(t, "ping")
	w := newWorld(t, vwireBin, "a.example", "b.example")
	var lis net.Listener
	if err := kernel.Do(w.internet, func() (err error) { lis, err = net.Listen("tcp", "10.99.0.254:4317"); return err }); err != nil {
		t.Fatal(err)
	}
	traces := e2e.ReceiveOTLP(t, lis)
	const otlp = "10.99.0.254:4317"
	a, b := w.domains["a.example"], w.domains["b.example"]
	for _, h := range []*host{a, b} {
		w.restart(h, "--otlp-endpoint", otlp)
	}
	os.WriteFile(filepath.Join(w.dir, "svc.yaml"), []byte(ipService), 0o600)
	w.cli("b.example", "apply", "-f", filepath.Join(w.dir, "svc.yaml"))
	b2 := w.gatewayNode("b.example", "b2", "10.99.0.12", "--otlp-endpoint", otlp)
	epNS := w.workload("e2")
	e2e.StartVwire(t, "ip", nil, "netns", "exec", b2.ns, w.bin, "endpoint", "--name", "ep-b2", "--service", "svc",
		"--cidr", "172.16.9.0/24", "--netns", epNS, "--gateway", "unix://"+filepath.Join(b2.data, "gateway.sock"), "--otlp-endpoint", otlp)
	clientNS := w.workload("c")
	c := w.connect("a.example", "svc@b.example", clientNS, "--otlp-endpoint", otlp)
	if err := ping(clientNS, c.Up.peer()); err != nil {
		t.Fatal(err)
	}

	const request = "vwire.networkservice.v1.NetworkService/Request"
	want := []hop{
		{"vwire-connect", "client", request},
		{"a.example", "gateway", request}, // the workloads' socket
		{"a.example", "gateway", request}, // its call to a's proxy
		{"a.example", "proxy", request},
		{"a.example", "", "dns lookup"},
		{"a.example", "proxy", request}, // a's call to b
		{"b.example", "proxy", request},
		{"b.example", "", "select endpoint"},
		{"b.example", "proxy", "vwire.networkservice.v1.Gateway/Apply"}, // b's call to b2
		{"b.example", "gateway", "vwire.networkservice.v1.Gateway/Apply"},
		{"b.example", "gateway", request}, // b2's call to the endpoint
		{"vwire-endpoint", "endpoint", request},
		{"b.example", "", "program vWire end"},
		{"a.example", "", "program vWire end"},
	}
	var trace []e2e.Span
	ok := traces.WaitFor(20*time.Second, func(spans []e2e.Span) bool {
		root := firstRoot(spans, "vwire-connect")
		if root == nil {
			return false
		}
		trace = traces.Trace(root.TraceID)
		return missing(trace, want) == nil
	})
	if !ok {
		t.Fatalf("the connect's trace lacks %v; it has:\n%s", missing(trace, want), spanLines(trace))
	}
	// One trace: every span's parent is in it, but the client's.
	ids := map[string]bool{}
	for _, s := range trace {
		ids[s.ID] = true
	}
	for _, s := range trace {
		if s.Parent != "" && !ids[s.Parent] {
			t.Errorf("span %s: its parent is not in the trace", s)
		}
	}
	for _, s := range trace {
		if s.Service == "a.example" && s.Attrs["vwire.hop"] == "proxy" && s.Kind == v1.Span_SPAN_KIND_SERVER {
			if s.Attrs["vwire.service"] != "svc@b.example" || s.Attrs["vwire.endpoint"] != "ep-b2@b.example" ||
				s.Attrs["vwire.tunnel"] != "wireguard" || s.Attrs["vwire.mtu"] == "" || s.Attrs["vwire.remote_domain"] != "b.example" {
				t.Errorf("a's proxy's span says %v; want the service, endpoint, tunnel, MTU and remote domain", s.Attrs)
			}
		}
	}
	if l := a.proc.WaitFor(5*time.Second, "connection up", "trace_id="+trace[0].TraceID); l == "" {
		t.Errorf("a's log has no \"connection up\" line with trace_id=%s", trace[0].TraceID)
	}

	t.Run("a refused request's spans say why", func(t *testing.T) {
		out, err := inNS(a.ns, w.bin, "connect", "nosuch@b.example", "--once", "--netns", clientNS, "--interface", "nsm1",
			"--gateway", "unix://"+filepath.Join(a.data, "gateway.sock"), "--otlp-endpoint", otlp).CombinedOutput()
		if err == nil {
			t.Fatalf("a vWire to a service b does not have:\n%s", out)
		}
		var refused []e2e.Span
		ok := traces.WaitFor(20*time.Second, func(spans []e2e.Span) bool {
			refused = nil
			for _, s := range spans {
				if s.Attrs["vwire.service"] == "nosuch@b.example" || (s.Attrs["vwire.service"] == "nosuch" && s.Attrs["vwire.hop"] == "proxy") {
					refused = append(refused, s)
				}
			}
			return len(refused) >= 2
		})
		if !ok {
			t.Fatalf("no span of a's and b's proxies for the refused request: %v", refused)
		}
		for _, s := range refused {
			if !s.Failed || s.Attrs["vwire.refusal"] != "unknown_service" || s.TraceID != refused[0].TraceID {
				t.Errorf("span %s: failed %v (%q), want failed with vwire.refusal=unknown_service, in one trace", s, s.Failed, s.StatusMessage)
			}
		}
	})
}

// firstRoot is the earliest span of service without a parent.
func firstRoot(spans []e2e.Span, service string) *e2e.Span {
	var root *e2e.Span
	for i, s := range spans {
		if s.Service == service && s.Parent == "" && (root == nil || s.Start.Before(root.Start)) {
			root = &spans[i]
		}
	}
	return root
}

// missing is what of want (each as often as it is listed) trace lacks.
func missing(trace []e2e.Span, want []hop) []hop {
	left := slices.Clone(trace)
	var out []hop
	for _, h := range want {
		i := slices.IndexFunc(left, func(s e2e.Span) bool {
			return s.Service == h.service && s.Attrs["vwire.hop"] == h.hop && s.Name == h.name
		})
		if i < 0 {
			out = append(out, h)
			continue
		}
		left = slices.Delete(left, i, i+1)
	}
	return out
}

func spanLines(spans []e2e.Span) string {
	var b strings.Builder
	for _, s := range spans {
		b.WriteString(s.String() + "\n")
	}
	return b.String()
}

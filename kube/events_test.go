package kube_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net/url"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/kube"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry"
)

// A pod that asked for a vWire shows, in kubectl describe, that it got it
// or why not; the labels of a request count only when the gateway that
// carried it runs on the pod's node, and a refresh that works is quiet.
func TestPodEvents(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a Kubernetes API server")
	}
	k := e2e.StartKubeAPI(t)
	kubectl(t, k, true, "", "create", "namespace", "web")
	kubectl(t, k, true, `{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1", "namespace": "web"},
"spec": {"nodeName": "node1", "containers": [{"name": "app", "image": "app"}]}}`, "apply", "-f", "-")
	events := kube.NewPodEvents(dynamicClient(t, k), spiffeid.RequireTrustDomainFromString("a.example"), slog.New(slog.NewTextHandler(logWriter{t}, nil)))

	from := func(id string) context.Context {
		u, _ := url.Parse("spiffe://" + id)
		cert := &x509.Certificate{URIs: []*url.URL{u}}
		return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}}})
	}
	req := func(id, pod string) *proxypb.NetworkServiceRequest {
		return &proxypb.NetworkServiceRequest{Connection: &proxypb.Connection{Id: id, NetworkService: "svc@b.example",
			Labels: map[string]string{registry.LabelPod: pod, kube.LabelPodNamespace: "web"}}}
	}
	up := &proxypb.Connection{Id: "c1", NetworkServiceEndpointName: "svc-1@b.example",
		IpContext: &proxypb.IPContext{SrcIpAddrs: []string{"172.16.0.2/32"}, DstIpAddrs: []string{"172.16.0.3/32"}}}
	refused := errors.New("no endpoint of svc@b.example")

	events.Observe(from("a.example/vwire/gateway/node2"), req("c1", "p1"), up, nil, false)        // not the pod's node
	events.Observe(from("b.example/vwire/gateway/node1"), req("c1", "p1"), up, nil, false)        // another trust domain
	events.Observe(from("a.example/vwire/proxy"), req("c1", "p1"), up, nil, false)                // not a gateway
	events.Observe(from("a.example/vwire/gateway/node1"), req("c1", "p1"), up, nil, true)         // a refresh that worked
	events.Observe(from("a.example/vwire/gateway/node1"), req("c1", "nosuchpod"), up, nil, false) // no such pod
	events.Settle()
	if out := kubectl(t, k, true, "", "get", "events", "-n", "web", "-o", "name"); out != "" {
		t.Fatalf("events were written that no gateway on the pod's node proved:\n%s", out)
	}

	events.Observe(from("a.example/vwire/gateway/node1"), req("c1", "p1"), up, nil, false)
	events.Observe(from("a.example/vwire/gateway/node1"), req("c1", "p1"), nil, refused, false)
	events.Observe(from("a.example/vwire/gateway/node1"), req("c1", "p1"), nil, refused, true)
	events.Settle()
	out := kubectl(t, k, true, "", "get", "events", "-n", "web", "--field-selector", "involvedObject.name=p1",
		"-o", "jsonpath={range .items[*]}{.type} {.reason} {.source.host}: {.message}{\"\\n\"}{end}")
	for _, want := range []string{
		"Normal VWireUp node1: vWire to svc@b.example up: connection c1, endpoint svc-1@b.example, 172.16.0.2/32 -> 172.16.0.3/32",
		"Warning VWireFailed node1: no vWire to svc@b.example: no endpoint of svc@b.example",
		"Warning VWireRefreshFailed node1: refreshing the vWire to svc@b.example failed: no endpoint of svc@b.example",
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("the pod's events lack %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "\n"); n != 3 {
		t.Errorf("the pod has %d events, want 3:\n%s", n, out)
	}
	// A peer's long refusal is cut before it is stored.
	events.Observe(from("a.example/vwire/gateway/node1"), req("c3", "p1"), nil, errors.New(strings.Repeat("x", 1<<20)), true)
	events.Settle()
	long := kubectl(t, k, true, "", "get", "events", "-n", "web", "--field-selector", "involvedObject.name=p1,reason=VWireRefreshFailed", "-o", "jsonpath={.items[0].message}")
	if len(long) > 1100 || !strings.HasSuffix(long, "…") {
		t.Errorf("an event's message from a 1 MiB refusal is %d bytes long", len(long))
	}
	// The sidecar asks again: the same event counts twice.
	events.Observe(from("a.example/vwire/gateway/node1"), req("c2", "p1"), nil, refused, false)
	events.Settle()
	counts := kubectl(t, k, true, "", "get", "events", "-n", "web", "--field-selector", "involvedObject.name=p1",
		"-o", "jsonpath={range .items[*]}{.reason}={.count} {end}")
	if !strings.Contains(counts, "VWireFailed=2 ") || strings.Count(counts, "=") != 3 {
		t.Errorf("a failure again is not counted on the first one's event: %s", counts)
	}
	if describe := kubectl(t, k, true, "", "describe", "pod", "-n", "web", "p1"); !strings.Contains(describe, "VWireUp") {
		t.Errorf("kubectl describe pod does not show the vWire:\n%s", describe)
	}
}

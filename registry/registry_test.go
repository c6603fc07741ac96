package registry_test

import (
	"context"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

func applyFiles(t *testing.T, c registrypb.RegistryClient, files ...string) {
	t.Helper()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := registry.DecodeManifests(strings.NewReader(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Apply(ctx(t), objs); err != nil {
			t.Fatalf("apply %s: %v", f, err)
		}
	}
}

func find(t *testing.T, c registrypb.RegistryClient, service string, labels map[string]string) []string {
	t.Helper()
	stream, err := c.Find(ctx(t), &registrypb.FindRequest{Service: service, SourceLabels: labels})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("find %s %v: %v", service, labels, err)
	}
	return names(resp.GetSnapshot().GetEndpoints())
}

// The "done when": the reference manifest routes firewalls to the
// vpn-gateway and everyone else to the firewall.
func TestReferenceManifestSelection(t *testing.T) {
	d := startDomain(t, "a.example")
	admin := d.admin()
	applyFiles(t, admin, "testdata/secure-intranet-connectivity.yaml", "testdata/endpoints.yaml")

	if got := find(t, admin, "secure-intranet-connectivity", map[string]string{"app": "firewall"}); !slices.Equal(got, []string{"vpn-gateway-1"}) {
		t.Errorf("app=firewall selects %v, want [vpn-gateway-1]", got)
	}
	for _, labels := range []map[string]string{nil, {"app": "web"}, {"team": "x"}} {
		if got := find(t, admin, "secure-intranet-connectivity", labels); !slices.Equal(got, []string{"firewall-1"}) {
			t.Errorf("%v selects %v, want [firewall-1]", labels, got)
		}
	}
	_, err := admin.Find(ctx(t), &registrypb.FindRequest{Service: "nope"})
	if err == nil {
		stream, _ := admin.Find(ctx(t), &registrypb.FindRequest{Service: "nope"})
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), `"nope" is not registered`) {
		t.Errorf("find of an unknown service: %v, want NotFound naming it", err)
	}
}

func TestEndpointOwnership(t *testing.T) {
	d := startDomain(t, "a.example")
	alice, mallory := d.client("/ns/default/sa/alice"), d.client("/ns/default/sa/mallory")
	ep := &registrypb.Endpoint{Name: "nse-1", NetworkServiceNames: []string{"svc"}, Labels: map[string]string{"app": "x"}}

	got, err := alice.RegisterEndpoint(ctx(t), &registrypb.RegisterEndpointRequest{Endpoint: ep})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetOwner() != "spiffe://a.example/ns/default/sa/alice" {
		t.Errorf("owner %q", got.GetOwner())
	}
	if left := time.Until(got.GetExpiresAt().AsTime()); left < 55*time.Second || left > 61*time.Second {
		t.Errorf("default registration expires in %v, want 60s", left)
	}
	for what, err := range map[string]error{
		"register":   second(mallory.RegisterEndpoint(ctx(t), &registrypb.RegisterEndpointRequest{Endpoint: ep})),
		"refresh":    second(mallory.RefreshEndpoint(ctx(t), &registrypb.RefreshEndpointRequest{Name: "nse-1"})),
		"unregister": second(mallory.UnregisterEndpoint(ctx(t), &registrypb.UnregisterEndpointRequest{Name: "nse-1"})),
	} {
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "belongs to spiffe://a.example/ns/default/sa/alice") {
			t.Errorf("mallory's %s: %v, want PermissionDenied naming the owner", what, err)
		}
	}
	// Workloads may not define services; the admin may.
	svc := &registrypb.NetworkService{Name: "svc", Payload: registrypb.Payload_IP}
	if _, err := alice.RegisterService(ctx(t), &registrypb.RegisterServiceRequest{Service: svc}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a workload registered a service: %v", err)
	}
	if _, err := d.admin().RegisterService(ctx(t), &registrypb.RegisterServiceRequest{Service: svc}); err != nil {
		t.Errorf("admin: %v", err)
	}
	// The owner keeps full control.
	if _, err := alice.RefreshEndpoint(ctx(t), &registrypb.RefreshEndpointRequest{Name: "nse-1"}); err != nil {
		t.Errorf("owner refresh: %v", err)
	}
	if _, err := alice.UnregisterEndpoint(ctx(t), &registrypb.UnregisterEndpointRequest{Name: "nse-1"}); err != nil {
		t.Errorf("owner unregister: %v", err)
	}
	if _, err := alice.GetEndpoint(ctx(t), &registrypb.GetEndpointRequest{Name: "nse-1"}); status.Code(err) != codes.NotFound {
		t.Errorf("after unregister: %v", err)
	}
}

func second[T any](_ T, err error) error { return err }

// A registration that asks to live for a century lives MaxEndpointLifetime
// unless refreshed.
func TestEndpointLifetimeClamped(t *testing.T) {
	d := startDomain(t, "a.example")
	admin, nse := d.admin(), d.client("/nse")
	if _, err := admin.RegisterService(ctx(t), &registrypb.RegisterServiceRequest{Service: &registrypb.NetworkService{Name: "svc", Payload: registrypb.Payload_IP}}); err != nil {
		t.Fatal(err)
	}
	ep, err := nse.RegisterEndpoint(ctx(t), &registrypb.RegisterEndpointRequest{
		Endpoint: &registrypb.Endpoint{Name: "greedy", NetworkServiceNames: []string{"svc"}},
		Lifetime: durationpb.New(100 * 365 * 24 * time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(ep.GetExpiresAt().AsTime()); left > registry.MaxEndpointLifetime || left < registry.MaxEndpointLifetime-time.Minute {
		t.Errorf("a registration asking for a century expires in %v, want %v", left.Round(time.Second), registry.MaxEndpointLifetime)
	}
}

// An endpoint that is not refreshed expires through its etcd lease, and a
// watcher sees it go; one that is refreshed stays.
func TestLeaseExpiryAndWatch(t *testing.T) {
	d := startDomain(t, "a.example")
	admin, nse := d.admin(), d.client("/nse")
	if _, err := admin.RegisterService(ctx(t), &registrypb.RegisterServiceRequest{Service: &registrypb.NetworkService{Name: "svc", Payload: registrypb.Payload_IP}}); err != nil {
		t.Fatal(err)
	}
	watch, err := admin.Find(ctx(t), &registrypb.FindRequest{Service: "svc", Watch: true})
	if err != nil {
		t.Fatal(err)
	}
	first, err := watch.Recv()
	if err != nil || len(first.GetSnapshot().GetEndpoints()) != 0 {
		t.Fatalf("first message %v, %v; want an empty snapshot", first, err)
	}
	register := func(name string) {
		_, err := nse.RegisterEndpoint(ctx(t), &registrypb.RegisterEndpointRequest{
			Endpoint: &registrypb.Endpoint{Name: name, NetworkServiceNames: []string{"svc"}},
			Lifetime: durationpb.New(2 * time.Second),
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	register("lapsing")
	register("kept")
	stop := make(chan struct{})
	defer close(stop)
	go func() { // refresh "kept" at a third of its lifetime, as endpoints do
		for {
			select {
			case <-stop:
				return
			case <-time.After(600 * time.Millisecond):
				nse.RefreshEndpoint(ctx(t), &registrypb.RefreshEndpointRequest{Name: "kept"})
			}
		}
	}()
	start := time.Now()
	var deleted string
	for deleted == "" {
		ev, err := watch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if del := ev.GetDelete(); del != nil {
			deleted = del.GetName()
		}
	}
	if deleted != "lapsing" {
		t.Fatalf("watch saw %q deleted, want lapsing", deleted)
	}
	t.Logf("lease expiry seen by the watcher %v after registration (lifetime 2s)", time.Since(start).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	list, err := admin.ListEndpoints(ctx(t), &registrypb.ListEndpointsRequest{Service: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	if got := names(list.GetEndpoints()); !slices.Equal(got, []string{"kept"}) {
		t.Errorf("after expiry: %v, want [kept]", got)
	}
	if _, err := nse.RefreshEndpoint(ctx(t), &registrypb.RefreshEndpointRequest{Name: "lapsing"}); status.Code(err) != codes.NotFound {
		t.Errorf("refresh of an expired endpoint: %v, want NotFound", err)
	}
}

// Stopping the registry and starting it on the same data directory keeps
// services, static endpoints, expiring endpoints and the CA.
func TestRestartKeepsEverything(t *testing.T) {
	d := startDomain(t, "a.example")
	applyFiles(t, d.admin(), "testdata/secure-intranet-connectivity.yaml", "testdata/endpoints.yaml")
	if _, err := d.client("/nse").RegisterEndpoint(ctx(t), &registrypb.RegisterEndpointRequest{
		Endpoint: &registrypb.Endpoint{Name: "leased", NetworkServiceNames: []string{"secure-intranet-connectivity"}, Labels: map[string]string{"app": "firewall"}},
	}); err != nil {
		t.Fatal(err)
	}
	bundle := d.ca.Bundle()
	d.stop()
	d.start()
	if !d.ca.Bundle().Equal(bundle) {
		t.Error("the CA changed across a restart: peers would stop trusting the domain")
	}
	admin := d.admin()
	svcs, err := admin.ListServices(ctx(t), &registrypb.ListServicesRequest{})
	if err != nil || len(svcs.GetServices()) != 1 || len(svcs.GetServices()[0].GetMatches()) != 2 {
		t.Fatalf("services after restart: %v, %v", svcs, err)
	}
	if got := find(t, admin, "secure-intranet-connectivity", nil); !slices.Equal(got, []string{"firewall-1", "leased"}) {
		t.Errorf("after restart the firewall route selects %v", got)
	}
	ep, err := admin.GetEndpoint(ctx(t), &registrypb.GetEndpointRequest{Name: "leased"})
	if err != nil || ep.GetOwner() != "spiffe://a.example/nse" {
		t.Errorf("leased endpoint after restart: %v, %v", ep, err)
	}
}

// Apply stores everything or nothing.
func TestApplyAllOrNothing(t *testing.T) {
	d := startDomain(t, "a.example")
	nse := d.client("/nse")
	if _, err := nse.RegisterEndpoint(ctx(t), &registrypb.RegisterEndpointRequest{Endpoint: &registrypb.Endpoint{Name: "taken", NetworkServiceNames: []string{"svc"}}}); err != nil {
		t.Fatal(err)
	}
	admin := d.admin()
	_, err := admin.Apply(ctx(t), &registrypb.ApplyRequest{
		Services: []*registrypb.NetworkService{{Name: "svc", Payload: registrypb.Payload_IP}},
		Endpoints: []*registrypb.ApplyEndpoint{
			{Endpoint: &registrypb.Endpoint{Name: "fresh", NetworkServiceNames: []string{"svc"}}},
			{Endpoint: &registrypb.Endpoint{Name: "taken", NetworkServiceNames: []string{"svc"}}},
		},
	})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("apply over another's endpoint: %v, want PermissionDenied", err)
	}
	if _, err := admin.GetService(ctx(t), &registrypb.GetServiceRequest{Name: "svc"}); status.Code(err) != codes.NotFound {
		t.Errorf("the service of a refused apply was stored: %v", err)
	}
	if _, err := admin.GetEndpoint(ctx(t), &registrypb.GetEndpointRequest{Name: "fresh"}); status.Code(err) != codes.NotFound {
		t.Errorf("an endpoint of a refused apply was stored: %v", err)
	}
	// Invalid objects are refused by the server too, not only by the CLI.
	_, err = admin.Apply(ctx(t), &registrypb.ApplyRequest{Services: []*registrypb.NetworkService{{Name: "Bad_Name", Payload: registrypb.Payload_IP}}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "Bad_Name") {
		t.Errorf("invalid service: %v", err)
	}
}

func TestWatchFollowsRuleChanges(t *testing.T) {
	d := startDomain(t, "a.example")
	admin := d.admin()
	applyFiles(t, admin, "testdata/secure-intranet-connectivity.yaml", "testdata/endpoints.yaml")
	watch, err := admin.Find(ctx(t), &registrypb.FindRequest{Service: "secure-intranet-connectivity", SourceLabels: map[string]string{"app": "firewall"}, Watch: true})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := watch.Recv(); err != nil || !slices.Equal(names(ev.GetSnapshot().GetEndpoints()), []string{"vpn-gateway-1"}) {
		t.Fatalf("snapshot %v %v", ev, err)
	}
	// Drop the firewall rule: firewalls now reach the firewall endpoint.
	svc, err := admin.GetService(ctx(t), &registrypb.GetServiceRequest{Name: "secure-intranet-connectivity"})
	if err != nil {
		t.Fatal(err)
	}
	svc.Matches = svc.Matches[1:]
	if _, err := admin.RegisterService(ctx(t), &registrypb.RegisterServiceRequest{Service: svc}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < 2 {
		ev, err := watch.Recv()
		if err == io.EOF || err != nil {
			t.Fatal(err)
		}
		if ev.GetDelete() != nil {
			got = append(got, "-"+ev.GetDelete().GetName())
		}
		if ev.GetUpdate() != nil {
			got = append(got, "+"+ev.GetUpdate().GetName())
		}
	}
	if !slices.Equal(got, []string{"-vpn-gateway-1", "+firewall-1"}) {
		t.Errorf("events %v", got)
	}
}

// A registry that fails half-way through starting says why and leaves
// nothing running: its data directory can be used again at once.
func TestStartFailureCleansUp(t *testing.T) {
	d := startDomain(t, "a.example")
	cfg := registry.NewConfig()
	cfg.Name, cfg.DataDir, cfg.Listen = "b.example", t.TempDir(), d.reg.Addr().String() // taken
	if _, err := registry.Start(ctx(t), cfg); err == nil || !strings.Contains(err.Error(), "--listen") {
		t.Fatalf("start on a taken address: %v", err)
	}
	cfg.Listen = "127.0.0.1:0"
	r, err := registry.Start(ctx(t), cfg)
	if err != nil {
		t.Fatalf("the failed start left the data directory locked: %v", err)
	}
	r.Close()
}

// Finds read the mirror: a second registry process on the same etcd (a
// replica) sees another's writes and lease expiries, and a store always
// sees its own writes at once.
func TestMirrorFollowsOtherWritersAndExpiry(t *testing.T) {
	d := startDomain(t, "a.example")
	replica := registry.NewStore(d.reg.Etcd.Client, "a.example")
	c, cancel := context.WithCancel(context.Background())
	stopped := replica.Mirror(c)
	defer func() { cancel(); <-stopped }()

	own := d.reg.Store
	if err := own.PutService(ctx(t), &registrypb.NetworkService{Name: "svc", Payload: registrypb.Payload_IP}); err != nil {
		t.Fatal(err)
	}
	if _, err := own.RegisterEndpoint(ctx(t), "spiffe://a.example/nse", &registrypb.Endpoint{Name: "e1", NetworkServiceNames: []string{"svc"}}, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	// Read-your-writes on the writer, with no wait.
	if eps, err := own.Find(ctx(t), "svc", nil); err != nil || len(eps) != 1 {
		t.Fatalf("own write not visible: %v %v", eps, err)
	}
	if !waitFor(func() bool { eps, err := replica.Find(ctx(t), "svc", nil); return err == nil && len(eps) == 1 }) {
		t.Fatal("the replica never saw the endpoint")
	}
	if !waitFor(func() bool { eps, err := replica.Find(ctx(t), "svc", nil); return err == nil && len(eps) == 0 }) {
		t.Fatal("the replica still finds the endpoint after its lease expired")
	}
	if err := own.DeleteService(ctx(t), "svc"); err != nil {
		t.Fatal(err)
	}
	if _, err := own.Find(ctx(t), "svc", nil); status.Code(registry.ToStatus(err)) != codes.NotFound {
		t.Errorf("a deleted service is still found: %v", err)
	}
}

// Only a node's gateway says where it serves an endpoint, and the registry
// records the gateway's own ID with it; anyone else's address is dropped.
func TestEndpointGatewayIsTheRegistrants(t *testing.T) {
	d := startDomain(t, "a.example")
	for _, tc := range []struct{ path, gateway, id string }{
		{"/vwire/gateway/n1", "10.0.0.1:7003", "spiffe://a.example/vwire/gateway/n1"},
		{"/ns/default/sa/mallory", "", ""},
	} {
		ep := &registrypb.Endpoint{Name: "nse" + strings.ReplaceAll(tc.path, "/", "-"), NetworkServiceNames: []string{"svc"},
			Url: "unix:///x.sock", Gateway: "10.0.0.1:7003", GatewayId: "spiffe://a.example/vwire/gateway/forged"}
		got, err := d.client(tc.path).RegisterEndpoint(ctx(t), &registrypb.RegisterEndpointRequest{Endpoint: ep})
		if err != nil {
			t.Fatal(err)
		}
		if got.GetGateway() != tc.gateway || got.GetGatewayId() != tc.id {
			t.Errorf("registered by %s: gateway %q (%q), want %q (%q)", tc.path, got.GetGateway(), got.GetGatewayId(), tc.gateway, tc.id)
		}
	}
}

// Network Service Mesh's own manifests apply as they are, and select as
// they do in Network Service Mesh: the chain's hops by per-service labels,
// a client's node by template, "" for a missing label, a match with
// metadata and no routes offering everything; the reference manifest is
// unchanged.
func TestNSMManifests(t *testing.T) {
	d := startDomain(t, "a.example")
	admin := d.admin()
	applyFiles(t, admin, "testdata/nsm-manifests.yaml", "testdata/secure-intranet-connectivity.yaml", "testdata/endpoints.yaml")
	for _, c := range []struct {
		service string
		client  map[string]string
		want    []string
	}{
		{"chain", map[string]string{"app": "filter"}, []string{"shaper-1"}},
		{"chain", map[string]string{"app": "shaper"}, []string{"exit-1"}},
		{"chain", map[string]string{"nodeName": "node-2"}, []string{"filter-node-2"}},
		{"chain", map[string]string{"nodeName": "node-9"}, []string{"filter-node-1", "filter-node-2"}}, // no filter on its node: fallthrough
		{"chain", nil, []string{"filter-node-1", "filter-node-2"}},                                     // no node to fill the template with: likewise
		{"lab", map[string]string{"tenant": "red"}, []string{"filter-node-1"}},
		{"lab", map[string]string{"tenant": "green"}, nil},
		{"lab", nil, []string{"filter-node-1", "filter-node-2"}}, // no tenant: metadata, no routes
		{"secure-intranet-connectivity", map[string]string{"app": "firewall"}, []string{"vpn-gateway-1"}},
		{"secure-intranet-connectivity", nil, []string{"firewall-1"}},
	} {
		if got := find(t, admin, c.service, c.client); !slices.Equal(got, c.want) {
			t.Errorf("%s for %v: %v, want %v", c.service, c.client, got, c.want)
		}
	}
	// What was applied comes back as it was written (weights, metadata,
	// per-service labels), and the expiration time became a lease.
	ep, err := admin.GetEndpoint(ctx(t), &registrypb.GetEndpointRequest{Name: "filter-node-1"})
	if err != nil {
		t.Fatal(err)
	}
	if l := ep.GetServiceLabels()["chain"].GetLabels(); l["nodeName"] != "node-1" || ep.GetExpiresAt() == nil ||
		ep.GetExpiresAt().AsTime().Sub(time.Unix(4102444800, 0)).Abs() > time.Minute {
		t.Errorf("filter-node-1 as stored: %v", ep)
	}
	svc, err := admin.GetService(ctx(t), &registrypb.GetServiceRequest{Name: "chain"})
	if err != nil {
		t.Fatal(err)
	}
	if svc.GetMatches()[1].GetRoutes()[0].GetWeight() != 100 || svc.GetMatches()[2].GetRoutes()[0].GetDestinationSelector()["nodeName"] != "{{.nodeName}}" {
		t.Errorf("chain as stored: %v", svc)
	}
	var out strings.Builder
	if err := registry.EncodeManifests(&out, []*registrypb.NetworkService{svc}, []*registrypb.Endpoint{ep}); err != nil {
		t.Fatal(err)
	}
	again, err := registry.DecodeManifests(strings.NewReader(out.String()))
	if err != nil {
		t.Fatalf("the output does not apply again: %v\n%s", err, out.String())
	}
	if !proto.Equal(again.GetServices()[0], svc) {
		t.Errorf("the service does not survive a round trip:\n%s", out.String())
	}
}

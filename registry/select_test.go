package registry

import (
	"slices"
	"testing"

	"github.com/vwire/vwire/registry/registrypb"
)

func ep(name string, labels ...string) *registrypb.Endpoint {
	l := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		l[labels[i]] = labels[i+1]
	}
	return &registrypb.Endpoint{Name: name, Labels: l}
}

func TestSelect(t *testing.T) {
	eps := []*registrypb.Endpoint{
		ep("vpn-2", "app", "vpn-gateway", "zone", "b"),
		ep("fw", "app", "firewall"),
		ep("vpn-1", "app", "vpn-gateway", "zone", "a"),
		ep("other"),
	}
	route := func(sel ...string) *registrypb.Route {
		return &registrypb.Route{DestinationSelector: ep("", sel...).Labels}
	}
	svc := &registrypb.NetworkService{Matches: []*registrypb.Match{
		{SourceSelector: map[string]string{"app": "firewall"}, Routes: []*registrypb.Route{route("app", "vpn-gateway", "zone", "b"), route("app", "vpn-gateway")}},
		{SourceSelector: map[string]string{"app": "lonely"}, Routes: []*registrypb.Route{route("app", "nothing")}, Fallthrough: true},
		{SourceSelector: map[string]string{"app": "strict"}, Routes: []*registrypb.Route{route("app", "nothing")}},
		{Routes: []*registrypb.Route{route("app", "firewall")}},
	}}
	for _, c := range []struct {
		client map[string]string
		want   []string
	}{
		// Routes in order, each endpoint once, name order within a route.
		{map[string]string{"app": "firewall", "x": "y"}, []string{"vpn-2", "vpn-1"}},
		// A fallthrough match that selects nothing passes on.
		{map[string]string{"app": "lonely"}, []string{"fw"}},
		// Without fallthrough the first match wins even when empty.
		{map[string]string{"app": "strict"}, nil},
		// The empty source selector matches everyone.
		{nil, []string{"fw"}},
		{map[string]string{"app": "fire"}, []string{"fw"}},
	} {
		if got := names(Select(svc, c.client, eps, nil)); !slices.Equal(got, c.want) {
			t.Errorf("client %v: got %v, want %v", c.client, got, c.want)
		}
	}
	if got := names(Select(&registrypb.NetworkService{}, nil, eps, nil)); !slices.Equal(got, []string{"fw", "other", "vpn-1", "vpn-2"}) {
		t.Errorf("no matches: %v, want every endpoint", got)
	}
	if eps[0].GetName() != "vpn-2" {
		t.Error("Select reordered its input")
	}
}

func names(eps []*registrypb.Endpoint) []string {
	var out []string
	for _, e := range eps {
		out = append(out, e.GetName())
	}
	return out
}

// Network Service Mesh's selection, as its users write it: a destination
// selector that is a template over the client's labels, "" for a label an
// endpoint lacks, labels per service over an endpoint's own, labels every
// endpoint of the domain has, and a match with metadata and no routes.
func TestSelectNSM(t *testing.T) {
	forwarders := []*registrypb.Endpoint{
		ep("fwd-1", "nodeName", "node-1"),
		ep("fwd-2", "nodeName", "node-2"),
		ep("fwd-any"),
	}
	byNode := &registrypb.NetworkService{Name: "forwarder", Matches: []*registrypb.Match{{
		Routes: []*registrypb.Route{{DestinationSelector: map[string]string{"nodeName": "{{.nodeName}}"}}},
	}}}
	if got := names(Select(byNode, map[string]string{"nodeName": "node-2"}, forwarders, nil)); !slices.Equal(got, []string{"fwd-2"}) {
		t.Errorf("{{.nodeName}} for a client on node-2: %v", got)
	}
	// A client without the label: the template cannot be filled, and
	// selects nothing (Network Service Mesh's "<no value>").
	if got := names(Select(byNode, nil, forwarders, nil)); got != nil {
		t.Errorf("{{.nodeName}} for a client without one: %v, want nothing", got)
	}
	// A template in a source selector, and "" for a missing label.
	src := &registrypb.NetworkService{Name: "s", Matches: []*registrypb.Match{
		{SourceSelector: map[string]string{"app": "{{.role}}"}, Routes: []*registrypb.Route{{DestinationSelector: map[string]string{"nodeName": "node-1"}}}},
		{SourceSelector: map[string]string{"tier": ""}, Routes: []*registrypb.Route{{DestinationSelector: map[string]string{"nodeName": ""}}}},
	}}
	if got := names(Select(src, map[string]string{"app": "db", "role": "db"}, forwarders, nil)); !slices.Equal(got, []string{"fwd-1"}) {
		t.Errorf("app={{.role}} for app=db role=db: %v", got)
	}
	if got := names(Select(src, map[string]string{"app": "web"}, forwarders, nil)); !slices.Equal(got, []string{"fwd-any"}) {
		t.Errorf("tier=\"\" for a client without tier: %v", got)
	}

	// network_service_labels: labels for one service over the endpoint's own.
	multi := &registrypb.Endpoint{Name: "nse", Labels: map[string]string{"app": "gw"},
		ServiceLabels: map[string]*registrypb.Labels{"red": {Labels: map[string]string{"app": "red-gw"}}}}
	want := func(svc, app string) *registrypb.NetworkService {
		return &registrypb.NetworkService{Name: svc, Matches: []*registrypb.Match{{Routes: []*registrypb.Route{{DestinationSelector: map[string]string{"app": app}}}}}}
	}
	for _, c := range []struct {
		svc, app string
		found    bool
	}{{"red", "red-gw", true}, {"red", "gw", false}, {"blue", "gw", true}, {"blue", "red-gw", false}} {
		if got := len(Select(want(c.svc, c.app), nil, []*registrypb.Endpoint{multi}, nil)) == 1; got != c.found {
			t.Errorf("service %s selecting app=%s: selected %v, want %v", c.svc, c.app, got, c.found)
		}
	}

	// The domain's implicit labels, under the endpoint's own.
	inDomain := &registrypb.NetworkService{Name: "s", Matches: []*registrypb.Match{{Routes: []*registrypb.Route{{DestinationSelector: map[string]string{"domain": "{{.domain}}"}}}}}}
	implicit := map[string]string{"domain": "b.example", "clusterName": "b.example"}
	eps := []*registrypb.Endpoint{ep("here"), ep("said-elsewhere", "domain", "c.example")}
	if got := names(Select(inDomain, map[string]string{"domain": "b.example"}, eps, implicit)); !slices.Equal(got, []string{"here"}) {
		t.Errorf("domain={{.domain}} for a client of b.example: %v", got)
	}

	// A match with metadata and no routes offers every endpoint; with
	// routes, metadata changes nothing.
	meta := &registrypb.NetworkService{Name: "s", Matches: []*registrypb.Match{
		{SourceSelector: map[string]string{"app": "a"}, Metadata: &registrypb.Metadata{Labels: map[string]string{"k": "v"}}},
		{Metadata: &registrypb.Metadata{}, Routes: []*registrypb.Route{{DestinationSelector: map[string]string{"nodeName": "node-1"}}}},
	}}
	if got := names(Select(meta, map[string]string{"app": "a"}, forwarders, nil)); !slices.Equal(got, []string{"fwd-1", "fwd-2", "fwd-any"}) {
		t.Errorf("a match with metadata and no routes: %v, want every endpoint", got)
	}
	if got := names(Select(meta, nil, forwarders, nil)); !slices.Equal(got, []string{"fwd-1"}) {
		t.Errorf("a match with metadata and routes: %v", got)
	}
}

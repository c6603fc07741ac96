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
		if got := names(Select(svc, c.client, eps)); !slices.Equal(got, c.want) {
			t.Errorf("client %v: got %v, want %v", c.client, got, c.want)
		}
	}
	if got := names(Select(&registrypb.NetworkService{}, nil, eps)); !slices.Equal(got, []string{"fw", "other", "vpn-1", "vpn-2"}) {
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

package registry

import (
	"sort"

	"github.com/vwire/vwire/registry/registrypb"
)

// Select returns the endpoints that svc's match rules give a client with
// the given labels, in order: the first match whose source selector the
// client's labels include wins (an empty selector matches everyone), and its
// routes select, in route order, the endpoints whose labels include all of
// the route's destination selector. A match with fallthrough that selects
// nothing passes the client on to the next match. A service without matches
// offers all its endpoints to everyone. eps is not modified.
func Select(svc *registrypb.NetworkService, client map[string]string, eps []*registrypb.Endpoint) []*registrypb.Endpoint {
	sorted := append([]*registrypb.Endpoint(nil), eps...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].GetName() < sorted[j].GetName() })
	if len(svc.GetMatches()) == 0 {
		return sorted
	}
	for _, m := range svc.GetMatches() {
		if !includes(client, m.GetSourceSelector()) {
			continue
		}
		var out []*registrypb.Endpoint
		seen := map[string]bool{}
		for _, r := range m.GetRoutes() {
			for _, ep := range sorted {
				if !seen[ep.GetName()] && includes(ep.GetLabels(), r.GetDestinationSelector()) {
					seen[ep.GetName()] = true
					out = append(out, ep)
				}
			}
		}
		if len(out) > 0 || !m.GetFallthrough() {
			return out
		}
	}
	return nil
}

// includes reports whether labels has every pair of selector.
func includes(labels, selector map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

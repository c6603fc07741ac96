package registry

import (
	"bytes"
	"fmt"
	"sort"
	"strings"
	"text/template"

	"github.com/vwire/vwire/registry/registrypb"
)

// Labels that vwire gives clients and endpoints, as Network Service Mesh
// does, for match rules to select by (a template "{{.nodeName}}" in a
// destination selector picks an endpoint on the client's node). A label the
// workload sets itself wins.
const (
	// LabelNode is the node of the gateway the workload uses.
	LabelNode = "nodeName"
	// LabelPod is the workload's pod (or container, or host) name.
	LabelPod = "podName"
	// LabelCluster and LabelDomain are the workload's domain.
	LabelCluster = "clusterName"
	LabelDomain  = "domain"
)

// Select returns the endpoints that svc's match rules give a client with
// the given labels, in order: the first match whose source selector the
// client's labels include wins (an empty selector matches everyone), and its
// routes select, in route order, the endpoints whose labels include all of
// the route's destination selector. A match with fallthrough that selects
// nothing passes the client on to the next match; a match with metadata and
// no routes offers every endpoint. A service without matches offers all its
// endpoints to everyone. Selector values may be Go templates over the
// client's labels (one over a label the client lacks matches nothing); ""
// matches a missing label. An endpoint's labels for svc
// are its service labels for svc over its own, over implicit (the labels
// every endpoint of the domain has). eps is not modified.
func Select(svc *registrypb.NetworkService, client map[string]string, eps []*registrypb.Endpoint, implicit map[string]string) []*registrypb.Endpoint {
	sorted := byName(eps)
	if len(svc.GetMatches()) == 0 {
		return sorted
	}
	for _, m := range svc.GetMatches() {
		if !includes(client, nil, resolve(m.GetSourceSelector(), client)) {
			continue
		}
		if m.GetMetadata() != nil && len(m.GetRoutes()) == 0 {
			return sorted
		}
		var out []*registrypb.Endpoint
		seen := map[string]bool{}
		for _, r := range m.GetRoutes() {
			selector := resolve(r.GetDestinationSelector(), client)
			for _, ep := range sorted {
				if !seen[ep.GetName()] && selects(svc, ep, selector, implicit) {
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

// selects says whether a route's (resolved) destination selector picks
// ep for svc: its labels for svc are its service labels for svc over its
// own, over implicit.
func selects(svc *registrypb.NetworkService, ep *registrypb.Endpoint, selector, implicit map[string]string) bool {
	own := ep.GetLabels()
	if sl := ep.GetServiceLabels()[svc.GetName()]; sl != nil {
		own = overlay(own, sl.GetLabels())
	}
	return includes(own, implicit, selector)
}

// MatchSelection is what one match of a service selects now, route by
// route (vwire describe service).
type MatchSelection struct {
	Source       map[string]string
	Fallthrough  bool
	AllEndpoints bool // metadata and no routes: every endpoint
	Routes       []RouteSelection
}

// RouteSelection is what one route's destination selector picks now;
// one with templates over the client's labels picks per client
// (PerClient, no Endpoints).
type RouteSelection struct {
	Destination map[string]string
	PerClient   bool
	Endpoints   []string
}

// Selections is, for each match of svc, what each of its routes selects
// among eps now (see Select).
func Selections(svc *registrypb.NetworkService, eps []*registrypb.Endpoint, implicit map[string]string) []MatchSelection {
	sorted := byName(eps)
	var out []MatchSelection
	for _, m := range svc.GetMatches() {
		ms := MatchSelection{Source: m.GetSourceSelector(), Fallthrough: m.GetFallthrough(), AllEndpoints: m.GetMetadata() != nil && len(m.GetRoutes()) == 0}
		for _, r := range m.GetRoutes() {
			rs := RouteSelection{Destination: r.GetDestinationSelector()}
			for _, v := range r.GetDestinationSelector() {
				rs.PerClient = rs.PerClient || isTemplate(v)
			}
			for _, ep := range sorted {
				if !rs.PerClient && selects(svc, ep, rs.Destination, implicit) {
					rs.Endpoints = append(rs.Endpoints, ep.GetName())
				}
			}
			ms.Routes = append(ms.Routes, rs)
		}
		out = append(out, ms)
	}
	return out
}

// byName is a copy of eps in name order.
func byName(eps []*registrypb.Endpoint) []*registrypb.Endpoint {
	sorted := append([]*registrypb.Endpoint(nil), eps...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].GetName() < sorted[j].GetName() })
	return sorted
}

// includes reports whether labels (or, for a key it lacks, implicit) has
// every pair of selector; a selector value "" matches a missing label.
func includes(labels, implicit, selector map[string]string) bool {
	for k, want := range selector {
		got, ok := labels[k]
		if !ok {
			got = implicit[k]
		}
		if got != want {
			return false
		}
	}
	return true
}

// resolve fills selector's template values with vars (the client's
// labels); a selector without templates is returned as it is.
func resolve(selector, vars map[string]string) map[string]string {
	var out map[string]string
	for k, v := range selector {
		if !isTemplate(v) {
			continue
		}
		if out == nil {
			out = overlay(selector, nil)
		}
		out[k] = render(v, vars)
	}
	if out == nil {
		return selector
	}
	return out
}

func overlay(base, top map[string]string) map[string]string {
	out := make(map[string]string, len(base)+len(top))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range top {
		out[k] = v
	}
	return out
}

func isTemplate(s string) bool { return strings.Contains(s, "{{") }

// render fills template s with vars. A template over a label vars lacks
// matches nothing, as in Network Service Mesh (whose templates then render
// "<no value>"); so does one that does not render.
func render(s string, vars map[string]string) string {
	t, err := parseSelector(s)
	if err != nil {
		return "\x00" // no label value is this
	}
	var b bytes.Buffer
	if vars == nil {
		vars = map[string]string{}
	}
	if err := t.Execute(&b, vars); err != nil {
		return "\x00"
	}
	return b.String()
}

func parseSelector(s string) (*template.Template, error) {
	t, err := template.New("selector").Option("missingkey=error").Parse(s)
	if err != nil {
		return nil, fmt.Errorf("template %q: %v", s, err)
	}
	return t, nil
}

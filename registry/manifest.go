package registry

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/vwire/vwire/registry/registrypb"
)

// APIVersion is the apiVersion of vwire's manifests: Network Service Mesh's.
const APIVersion = "networkservicemesh.io/v1"

// Manifest kinds.
const (
	KindNetworkService = "NetworkService"
	KindEndpoint       = "NetworkServiceEndpoint"
)

// document is one manifest as written. Fields are checked strictly: a key
// that is not listed here is an error, not silently dropped.
type document struct {
	APIVersion string     `yaml:"apiVersion"`
	Kind       string     `yaml:"kind"`
	Metadata   objectMeta `yaml:"metadata"`
	Spec       yaml.Node  `yaml:"spec"`
	// What `vwire get -o yaml` reports (owner, expiry); ignored on input so
	// that its output applies again.
	Status yaml.Node `yaml:"status,omitempty"`
}

type objectMeta struct {
	Name   string            `yaml:"name"`
	Labels map[string]string `yaml:"labels,omitempty"`
	// Accepted so that Kubernetes manifests apply unchanged; vwire has no
	// namespaces and keeps no annotations.
	Namespace   string            `yaml:"namespace,omitempty"`
	Annotations map[string]string `yaml:"annotations,omitempty"`
}

type serviceSpec struct {
	// Network Service Mesh's manifests repeat the name in the spec.
	Name    string      `yaml:"name,omitempty"`
	Payload string      `yaml:"payload"`
	Matches []matchSpec `yaml:"matches,omitempty"`
	// Who may connect (see registrypb.NetworkService.allowed_spiffe_ids).
	AllowedSpiffeIDs []string `yaml:"allowedSpiffeIDs,omitempty"`
	// Ethernet across domains as plain VXLAN (see plain_vxlan).
	PlainVXLAN bool `yaml:"plainVxlan,omitempty"`
}

// matchSpec takes both spellings: the one of Network Service Mesh's
// introduction (a "match:" key beside sourceSelector and route, or with
// them nested under it) and the current API's (source_selector, routes).
type matchSpec struct {
	Match          *matchSpec        `yaml:"match,omitempty"`
	SourceSelector map[string]string `yaml:"sourceSelector,omitempty"`
	SourceSel      map[string]string `yaml:"source_selector,omitempty"`
	Route          []routeSpec       `yaml:"route,omitempty"`
	Routes         []routeSpec       `yaml:"routes,omitempty"`
	Fallthrough    bool              `yaml:"fallthrough,omitempty"`
	Metadata       *labelSet         `yaml:"metadata,omitempty"`
}

type routeSpec struct {
	Destination         *routeSpec        `yaml:"destination,omitempty"`
	DestinationSelector map[string]string `yaml:"destinationSelector,omitempty"`
	DestinationSel      map[string]string `yaml:"destination_selector,omitempty"`
	Weight              uint32            `yaml:"weight,omitempty"`
}

// labelSet is Network Service Mesh's {labels: {...}} (match metadata, an
// endpoint's labels for one service).
type labelSet struct {
	Labels map[string]string `yaml:"labels,omitempty"`
}

type endpointSpec struct {
	Name                string              `yaml:"name,omitempty"`
	NetworkServiceNames []string            `yaml:"networkServiceNames,omitempty"`
	NSMServiceNames     []string            `yaml:"network_service_names,omitempty"`
	ServiceLabels       map[string]labelSet `yaml:"networkServiceLabels,omitempty"`
	NSMServiceLabels    map[string]labelSet `yaml:"network_service_labels,omitempty"`
	URL                 string              `yaml:"url,omitempty"`
	// A Go duration ("90s", "5m"); empty for a static endpoint.
	ExpiresIn string `yaml:"expiresIn,omitempty"`
	// Or, as Network Service Mesh writes it, when the registration lapses.
	ExpirationTime    timeSpec `yaml:"expirationTime,omitempty"`
	NSMExpirationTime timeSpec `yaml:"expiration_time,omitempty"`
	// Set by Network Service Mesh's registry; accepted and ignored, so
	// that its objects apply as they are.
	InitialRegistrationTime    timeSpec `yaml:"initialRegistrationTime,omitempty"`
	NSMInitialRegistrationTime timeSpec `yaml:"initial_registration_time,omitempty"`
}

// timeSpec is a time as RFC 3339 text or as protobuf's {seconds, nanos}
// (how Network Service Mesh's CRDs hold a timestamp).
type timeSpec struct{ time.Time }

func (t *timeSpec) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		v, err := time.Parse(time.RFC3339Nano, n.Value)
		if err != nil {
			return fmt.Errorf("line %d: %q is not an RFC 3339 time (e.g. 2026-12-31T23:00:00Z)", n.Line, n.Value)
		}
		t.Time = v
		return nil
	}
	var pb struct {
		Seconds int64 `yaml:"seconds"`
		Nanos   int64 `yaml:"nanos"`
	}
	if err := n.Decode(&pb); err != nil {
		return fmt.Errorf("line %d: want an RFC 3339 time or {seconds, nanos}", n.Line)
	}
	t.Time = time.Unix(pb.Seconds, pb.Nanos)
	return nil
}

// Objects is what a manifest stream holds, in the order it holds them.
type Objects = registrypb.ApplyRequest

// ErrManifest wraps every refusal of a manifest.
var ErrManifest = errors.New("bad manifest")

// DecodeManifests reads a stream of YAML documents (separated by "---") and
// returns the objects they describe. It refuses the whole stream at the first
// bad document, with an error that names the document and the field.
func DecodeManifests(r io.Reader) (*Objects, error) {
	dec := yaml.NewDecoder(r)
	out := &Objects{}
	for i := 1; ; i++ {
		var root yaml.Node
		err := dec.Decode(&root)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: document %d: %v", ErrManifest, i, err)
		}
		if len(root.Content) == 0 || root.Content[0].Tag == "!!null" {
			continue // an empty document, as after a trailing "---"
		}
		if err := decodeDocument(&root, out); err != nil {
			return nil, fmt.Errorf("%w: document %d%v", ErrManifest, i, err)
		}
	}
	if len(out.Services)+len(out.Endpoints) == 0 {
		return nil, fmt.Errorf("%w: no objects in the input", ErrManifest)
	}
	return out, nil
}

func decodeDocument(root *yaml.Node, out *Objects) error {
	var doc document
	if err := strictDecode(root.Content[0], &doc, ""); err != nil {
		return fmt.Errorf(": %v", err)
	}
	name := fmt.Sprintf(" (%s %q)", doc.Kind, doc.Metadata.Name)
	switch {
	case doc.Kind == "":
		return errors.New(": kind is missing (want NetworkService or NetworkServiceEndpoint)")
	case doc.Kind != KindNetworkService && doc.Kind != KindEndpoint:
		return fmt.Errorf(": unknown kind %q (want NetworkService or NetworkServiceEndpoint)", doc.Kind)
	case doc.APIVersion != APIVersion:
		return fmt.Errorf("%s: apiVersion %q is not %q", name, doc.APIVersion, APIVersion)
	case doc.Metadata.Name == "":
		return fmt.Errorf(" (%s): metadata.name is missing", doc.Kind)
	}
	if doc.Kind == KindNetworkService {
		s, err := decodeService(&doc)
		if err != nil {
			return fmt.Errorf("%s: %v", name, err)
		}
		out.Services = append(out.Services, s)
		return nil
	}
	e, err := decodeEndpoint(&doc)
	if err != nil {
		return fmt.Errorf("%s: %v", name, err)
	}
	out.Endpoints = append(out.Endpoints, e)
	return nil
}

func decodeService(doc *document) (*registrypb.NetworkService, error) {
	if len(doc.Metadata.Labels) > 0 {
		return nil, errors.New("metadata.labels: a NetworkService has no labels (its match rules select endpoints by theirs)")
	}
	var spec serviceSpec
	if err := strictDecode(&doc.Spec, &spec, "spec"); err != nil {
		return nil, err
	}
	payload, ok := registrypb.Payload_value[strings.ToUpper(spec.Payload)]
	if spec.Payload == "" {
		return nil, errors.New("spec.payload is missing (want IP or ETHERNET)")
	}
	if !ok || payload == 0 {
		return nil, fmt.Errorf("spec.payload: unknown payload %q (want IP or ETHERNET)", spec.Payload)
	}
	if err := sameName(doc, spec.Name); err != nil {
		return nil, err
	}
	s := &registrypb.NetworkService{Name: doc.Metadata.Name, Payload: registrypb.Payload(payload), AllowedSpiffeIds: spec.AllowedSpiffeIDs, PlainVxlan: spec.PlainVXLAN}
	for _, m := range spec.Matches {
		if m.Match != nil { // the selectors nested under "match:"
			m = mergeMatch(m, *m.Match)
		}
		pm := &registrypb.Match{SourceSelector: union(m.SourceSelector, m.SourceSel), Fallthrough: m.Fallthrough}
		if m.Metadata != nil {
			pm.Metadata = &registrypb.Metadata{Labels: m.Metadata.Labels}
		}
		for _, r := range append(m.Route, m.Routes...) {
			if r.Destination != nil {
				r.DestinationSelector = union(r.DestinationSelector, r.Destination.DestinationSelector, r.Destination.DestinationSel)
				r.Weight = max(r.Weight, r.Destination.Weight)
			}
			pm.Routes = append(pm.Routes, &registrypb.Route{DestinationSelector: union(r.DestinationSelector, r.DestinationSel), Weight: r.Weight})
		}
		s.Matches = append(s.Matches, pm)
	}
	if err := ValidateService(s); err != nil {
		return nil, err
	}
	return s, nil
}

func mergeMatch(outer, inner matchSpec) matchSpec {
	outer.SourceSelector = union(outer.SourceSelector, outer.SourceSel, inner.SourceSelector, inner.SourceSel)
	outer.SourceSel = nil
	outer.Route = append(append(outer.Route, inner.Route...), inner.Routes...)
	outer.Fallthrough = outer.Fallthrough || inner.Fallthrough
	if outer.Metadata == nil {
		outer.Metadata = inner.Metadata
	}
	return outer
}

// sameName refuses a spec.name other than metadata.name: vwire names an
// object once.
func sameName(doc *document, specName string) error {
	if specName != "" && specName != doc.Metadata.Name {
		return fmt.Errorf("spec.name %q differs from metadata.name %q: an object has one name (write the same in both, or leave spec.name out)", specName, doc.Metadata.Name)
	}
	return nil
}

func union(maps ...map[string]string) map[string]string {
	var out map[string]string
	for _, m := range maps {
		for k, v := range m {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
		}
	}
	return out
}

func decodeEndpoint(doc *document) (*registrypb.ApplyEndpoint, error) {
	var spec endpointSpec
	if err := strictDecode(&doc.Spec, &spec, "spec"); err != nil {
		return nil, err
	}
	if err := sameName(doc, spec.Name); err != nil {
		return nil, err
	}
	e := &registrypb.Endpoint{
		Name:                doc.Metadata.Name,
		Labels:              doc.Metadata.Labels,
		NetworkServiceNames: append(spec.NetworkServiceNames, spec.NSMServiceNames...),
		Url:                 spec.URL,
	}
	for svc, l := range union2(spec.ServiceLabels, spec.NSMServiceLabels) {
		if e.ServiceLabels == nil {
			e.ServiceLabels = map[string]*registrypb.Labels{}
		}
		e.ServiceLabels[svc] = &registrypb.Labels{Labels: l.Labels}
	}
	if err := ValidateStaticEndpoint(e); err != nil {
		return nil, err
	}
	ae := &registrypb.ApplyEndpoint{Endpoint: e}
	expires := spec.ExpirationTime.Time
	if expires.IsZero() {
		expires = spec.NSMExpirationTime.Time
	}
	switch {
	case spec.ExpiresIn != "" && !expires.IsZero():
		return nil, errors.New("spec.expiresIn and spec.expiration_time both say when the registration lapses: give one")
	case spec.ExpiresIn != "":
		d, err := time.ParseDuration(spec.ExpiresIn)
		if err != nil || d < time.Second {
			return nil, fmt.Errorf("spec.expiresIn: %q is not a duration of at least 1s (write e.g. 90s or 5m)", spec.ExpiresIn)
		}
		ae.ExpiresIn = durationpb.New(d)
	case !expires.IsZero():
		d := time.Until(expires).Truncate(time.Second)
		if d < time.Second {
			return nil, fmt.Errorf("spec.expiration_time %s has passed: the registration would lapse before it is stored (leave it out for an endpoint that does not expire, or write a later time or spec.expiresIn)", expires.UTC().Format(time.RFC3339))
		}
		ae.ExpiresIn = durationpb.New(d)
	}
	return ae, nil
}

func union2(a, b map[string]labelSet) map[string]labelSet {
	out := map[string]labelSet{}
	for _, m := range []map[string]labelSet{a, b} {
		for k, v := range m {
			out[k] = labelSet{Labels: union(out[k].Labels, v.Labels)}
		}
	}
	return out
}

// strictDecode decodes n into v after checking that every mapping key in n
// is a field of v: yaml.v3 enforces that only on a whole Decoder, and then
// without the field's path.
func strictDecode(n *yaml.Node, v any, path string) error {
	if n.Kind == 0 { // absent
		return nil
	}
	if err := checkKnown(n, reflect.TypeOf(v).Elem(), path); err != nil {
		return err
	}
	if err := n.Decode(v); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			return fmt.Errorf("%s: %s", orTop(path), strings.Join(te.Errors, "; "))
		}
		return fmt.Errorf("%s: %v", orTop(path), err)
	}
	return nil
}

func checkKnown(n *yaml.Node, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	switch {
	case t == reflect.TypeOf(yaml.Node{}), reflect.PointerTo(t).Implements(reflect.TypeFor[yaml.Unmarshaler]()):
		return nil // it checks its own fields
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			f, ok := fieldByTag(t, key)
			if !ok {
				return fmt.Errorf("line %d: %s: unknown field %q (known: %s)", n.Content[i].Line, join(path, key), key, strings.Join(tags(t), ", "))
			}
			if err := checkKnown(n.Content[i+1], f.Type, join(path, key)); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		for i, c := range n.Content {
			if err := checkKnown(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

func fieldByTag(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); name == key {
			return t.Field(i), true
		}
	}
	return reflect.StructField{}, false
}

func tags(t reflect.Type) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func orTop(path string) string {
	if path == "" {
		return "document"
	}
	return path
}

// EncodeManifests writes services and endpoints as a YAML stream that
// DecodeManifests (and `vwire apply`) reads back.
func EncodeManifests(w io.Writer, services []*registrypb.NetworkService, endpoints []*registrypb.Endpoint) error {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	for _, doc := range ManifestDocuments(services, endpoints) {
		if err := enc.Encode(doc); err != nil {
			return err
		}
	}
	if err := enc.Close(); err != nil {
		return err
	}
	_, err := w.Write(buf.Bytes())
	return err
}

// ManifestDocuments renders objects as manifest documents (for YAML and
// JSON output), in the current Network Service Mesh spelling.
func ManifestDocuments(services []*registrypb.NetworkService, endpoints []*registrypb.Endpoint) []any {
	type route struct {
		DestinationSelector map[string]string `yaml:"destination_selector,omitempty" json:"destination_selector,omitempty"`
		Weight              uint32            `yaml:"weight,omitempty" json:"weight,omitempty"`
	}
	type labels struct {
		Labels map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	}
	type match struct {
		SourceSelector map[string]string `yaml:"source_selector,omitempty" json:"source_selector,omitempty"`
		Routes         []route           `yaml:"routes,omitempty" json:"routes,omitempty"`
		Fallthrough    bool              `yaml:"fallthrough,omitempty" json:"fallthrough,omitempty"`
		Metadata       *labels           `yaml:"metadata,omitempty" json:"metadata,omitempty"`
	}
	type svcSpec struct {
		Payload          string   `yaml:"payload" json:"payload"`
		Matches          []match  `yaml:"matches,omitempty" json:"matches,omitempty"`
		AllowedSpiffeIDs []string `yaml:"allowedSpiffeIDs,omitempty" json:"allowedSpiffeIDs,omitempty"`
		PlainVXLAN       bool     `yaml:"plainVxlan,omitempty" json:"plainVxlan,omitempty"`
	}
	type epSpec struct {
		NetworkServiceNames []string          `yaml:"networkServiceNames" json:"networkServiceNames"`
		ServiceLabels       map[string]labels `yaml:"networkServiceLabels,omitempty" json:"networkServiceLabels,omitempty"`
		URL                 string            `yaml:"url,omitempty" json:"url,omitempty"`
	}
	type epStatus struct {
		ExpiresAt string `yaml:"expiresAt,omitempty" json:"expiresAt,omitempty"`
		Owner     string `yaml:"owner,omitempty" json:"owner,omitempty"`
	}
	type meta struct {
		Name   string            `yaml:"name" json:"name"`
		Labels map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	}
	type doc struct {
		APIVersion string `yaml:"apiVersion" json:"apiVersion"`
		Kind       string `yaml:"kind" json:"kind"`
		Metadata   meta   `yaml:"metadata" json:"metadata"`
		Spec       any    `yaml:"spec" json:"spec"`
		Status     any    `yaml:"status,omitempty" json:"status,omitempty"`
	}
	var out []any
	for _, s := range services {
		spec := svcSpec{Payload: s.GetPayload().String(), AllowedSpiffeIDs: s.GetAllowedSpiffeIds(), PlainVXLAN: s.GetPlainVxlan()}
		for _, m := range s.GetMatches() {
			mm := match{SourceSelector: m.GetSourceSelector(), Fallthrough: m.GetFallthrough()}
			if m.GetMetadata() != nil {
				mm.Metadata = &labels{Labels: m.GetMetadata().GetLabels()}
			}
			for _, r := range m.GetRoutes() {
				mm.Routes = append(mm.Routes, route{DestinationSelector: r.GetDestinationSelector(), Weight: r.GetWeight()})
			}
			spec.Matches = append(spec.Matches, mm)
		}
		out = append(out, doc{APIVersion, KindNetworkService, meta{Name: s.GetName()}, spec, nil})
	}
	for _, e := range endpoints {
		spec := epSpec{NetworkServiceNames: e.GetNetworkServiceNames(), URL: e.GetUrl()}
		for svc, l := range e.GetServiceLabels() {
			if spec.ServiceLabels == nil {
				spec.ServiceLabels = map[string]labels{}
			}
			spec.ServiceLabels[svc] = labels{Labels: l.GetLabels()}
		}
		status := epStatus{Owner: e.GetOwner()}
		if e.GetExpiresAt() != nil {
			status.ExpiresAt = e.GetExpiresAt().AsTime().Format(time.RFC3339)
		}
		out = append(out, doc{APIVersion, KindEndpoint, meta{Name: e.GetName(), Labels: e.GetLabels()}, spec, status})
	}
	return out
}

package kube

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/vwire/vwire/registry"
)

// The annotations that give a pod vWires. Its own interfaces (the CNI's)
// are left alone: each vWire is one more interface, set up by a sidecar
// that runs `vwire connect` (or `vwire endpoint`) in the pod's network
// namespace and hands it to the node's gateway.
const (
	// AnnotationConnect asks for vWires: "svc@domain/ifname?label=value",
	// several comma-separated.
	AnnotationConnect = "vwire.io/connect"
	// AnnotationNSM is Network Service Mesh's: "kernel://svc@domain/nsm-1?app=x".
	AnnotationNSM = "networkservicemesh.io"
	// AnnotationEndpoint makes the pod an endpoint of a service of this
	// domain: "svc?cidr=172.16.0.0/24", registered with the pod's labels.
	AnnotationEndpoint = "vwire.io/endpoint"
	// AnnotationAcceptRoutes is what the pod's vWires accept from the
	// endpoint's side beyond its addresses: "PREFIX,..." (0.0.0.0/0: a
	// default route), as vwire connect --accept-routes.
	AnnotationAcceptRoutes = "vwire.io/accept-routes"
)

// ParseAcceptRoutes reads a pod's vwire.io/accept-routes: prefixes, at
// most 16.
func ParseAcceptRoutes(v string) ([]string, error) {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		if _, err := netip.ParsePrefix(s); err != nil {
			return nil, fmt.Errorf("annotation %s: %q: want a prefix such as 10.8.0.0/16 (0.0.0.0/0 accepts a default route)", AnnotationAcceptRoutes, s)
		}
		out = append(out, s)
	}
	if len(out) > 16 {
		return nil, fmt.Errorf("annotation %s: %d prefixes, at most 16", AnnotationAcceptRoutes, len(out))
	}
	return out, nil
}

// Request is one vWire a pod asks for.
type Request struct {
	Service   string            // svc or svc@domain
	Interface string            // in the pod
	Labels    map[string]string // the client's, beside the pod's own
}

// EndpointSpec is what makes a pod an endpoint.
type EndpointSpec struct {
	Service string
	CIDR    netip.Prefix
	Payload string
}

// ifname is a Linux interface name.
var ifname = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}$`)

// MaxVWiresPerPod bounds the vWires one pod's annotations may ask for:
// each is a sidecar container.
const MaxVWiresPerPod = 16

// ParseRequests reads the vWires a pod's annotations ask for (vwire.io/connect
// and networkservicemesh.io). Interfaces not named are nsm0, nsm1, ... in
// order.
func ParseRequests(annotations map[string]string) ([]Request, error) {
	var out []Request
	for _, key := range []string{AnnotationConnect, AnnotationNSM} {
		v, ok := annotations[key]
		if !ok {
			continue
		}
		for _, item := range strings.Split(v, ",") {
			item = strings.TrimSpace(item)
			if item == "" {
				continue
			}
			r, err := parseRequest(key, item)
			if err != nil {
				return nil, fmt.Errorf("annotation %s: %q: %w", key, item, err)
			}
			out = append(out, r)
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("annotation %s is empty: want SERVICE[@DOMAIN][/IFNAME][?LABEL=VALUE&...], several comma-separated", key)
		}
	}
	if len(out) > MaxVWiresPerPod {
		return nil, fmt.Errorf("%d vWires asked for: a pod gets at most %d (one sidecar each)", len(out), MaxVWiresPerPod)
	}
	used := map[string]bool{}
	for _, r := range out {
		if r.Interface != "" {
			if used[r.Interface] {
				return nil, fmt.Errorf("two vWires ask for interface %s: give each its own name", r.Interface)
			}
			used[r.Interface] = true
		}
	}
	next := 0
	for i := range out {
		for out[i].Interface == "" {
			if name := fmt.Sprintf("nsm%d", next); !used[name] {
				out[i].Interface, used[name] = name, true
			}
			next++
		}
	}
	return out, nil
}

func parseRequest(key, item string) (Request, error) {
	if key == AnnotationNSM {
		if mech, rest, ok := strings.Cut(item, "://"); ok {
			if mech != "kernel" {
				return Request{}, fmt.Errorf("mechanism %s: vwire gives kernel interfaces only (kernel://...)", mech)
			}
			item = rest
		}
	}
	item, query, _ := strings.Cut(item, "?")
	svc, iface, _ := strings.Cut(item, "/")
	if _, err := registry.ParseName(svc); err != nil {
		return Request{}, err
	}
	if iface != "" && !ifname.MatchString(iface) {
		return Request{}, fmt.Errorf("interface %q: a Linux interface name is 1 to 15 letters, digits, '_', '.' or '-'", iface)
	}
	labels, err := parseQuery(query)
	if err != nil {
		return Request{}, err
	}
	return Request{Service: svc, Interface: iface, Labels: labels}, nil
}

func parseQuery(query string) (map[string]string, error) {
	if query == "" {
		return nil, nil
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return nil, fmt.Errorf("labels %q: %w", query, err)
	}
	labels := map[string]string{}
	for k, vs := range q {
		if len(vs) != 1 {
			return nil, fmt.Errorf("label %s given %d times", k, len(vs))
		}
		labels[k] = vs[0]
	}
	if err := registry.ValidateLabels(labels); err != nil {
		return nil, err
	}
	return labels, nil
}

// ParseEndpoint reads vwire.io/endpoint: "SERVICE?cidr=PREFIX[&payload=IP|ETHERNET]".
func ParseEndpoint(v string) (EndpointSpec, error) {
	svc, query, _ := strings.Cut(strings.TrimSpace(v), "?")
	wrap := func(err error) error { return fmt.Errorf("annotation %s: %q: %w", AnnotationEndpoint, v, err) }
	if n, err := registry.ParseName(svc); err != nil {
		return EndpointSpec{}, wrap(err)
	} else if n.Domain != "" {
		return EndpointSpec{}, wrap(errors.New("an endpoint serves a service of its own domain: no @DOMAIN"))
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return EndpointSpec{}, wrap(err)
	}
	for k := range q {
		if k != "cidr" && k != "payload" {
			return EndpointSpec{}, wrap(fmt.Errorf("unknown setting %s (want cidr and payload)", k))
		}
	}
	spec := EndpointSpec{Service: svc, Payload: strings.ToUpper(q.Get("payload"))}
	if spec.CIDR, err = netip.ParsePrefix(q.Get("cidr")); err != nil {
		return EndpointSpec{}, wrap(fmt.Errorf("cidr=%q: the prefix it hands addresses out of, e.g. 172.16.0.0/24", q.Get("cidr")))
	}
	if spec.Payload == "" {
		spec.Payload = "IP"
	}
	if spec.Payload != "IP" && spec.Payload != "ETHERNET" {
		return EndpointSpec{}, wrap(fmt.Errorf("payload=%s: want IP or ETHERNET", spec.Payload))
	}
	return spec, nil
}

// Injector is the admission webhook that adds the sidecars.
type Injector struct {
	// Image is vwire's, which the sidecars run.
	Image, PullPolicy string
	// SocketDir is the host directory of the node gateway's socket.
	SocketDir string
	// StartupTimeout bounds how long a pod's app waits for its vWires.
	StartupTimeout time.Duration
	// OTLPEndpoint, when set, is where the sidecars send their traces
	// (VWIRE_OTLP_ENDPOINT): a pod's request is then one trace from its
	// sidecar on.
	OTLPEndpoint string
	Log          *slog.Logger
}

// pod is the part of a Pod the injector reads.
type pod struct {
	Metadata struct {
		Name         string            `json:"name"`
		GenerateName string            `json:"generateName"`
		Namespace    string            `json:"namespace"`
		Labels       map[string]string `json:"labels"`
		Annotations  map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		InitContainers []struct {
			Name string `json:"name"`
		} `json:"initContainers"`
		Volumes []struct {
			Name string `json:"name"`
		} `json:"volumes"`
		HostNetwork bool `json:"hostNetwork"`
	} `json:"spec"`
}

// sidecarPrefix names the containers the injector adds.
const sidecarPrefix = "vwire-"

// Patch is the JSON patch that gives the pod its sidecars, or nil when it
// asks for no vWire; an error says what is wrong with its annotations.
func (in *Injector) Patch(raw []byte) ([]map[string]any, error) {
	var p pod
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("not a pod: %w", err)
	}
	reqs, err := ParseRequests(p.Metadata.Annotations)
	if err != nil {
		return nil, err
	}
	accept, err := ParseAcceptRoutes(p.Metadata.Annotations[AnnotationAcceptRoutes])
	if err != nil {
		return nil, err
	}
	var ep *EndpointSpec
	if v, ok := p.Metadata.Annotations[AnnotationEndpoint]; ok {
		spec, err := ParseEndpoint(v)
		if err != nil {
			return nil, err
		}
		ep = &spec
	}
	if len(reqs) == 0 && ep == nil {
		return nil, nil
	}
	if p.Spec.HostNetwork {
		return nil, errors.New("a pod on the host's network cannot have vWires: they go in the pod's own network namespace")
	}
	for _, c := range p.Spec.InitContainers {
		if strings.HasPrefix(c.Name, sidecarPrefix) {
			return nil, nil // injected already (a re-invocation)
		}
	}
	var sidecars []map[string]any
	for _, r := range reqs {
		labels := mergeLabels(p.Metadata.Labels, r.Labels)
		// Which pod asked (its name is the sidecar's host name, podName):
		// the proxy reports the vWire's set-up and failures as events on
		// it.
		labels[LabelPodNamespace] = "$(POD_NAMESPACE)"
		args := []string{"connect", r.Service, "--interface", r.Interface, "--gateway", "unix:///run/vwire/gateway.sock", "--ready-file", "/run/vwire-ready/" + r.Interface}
		if l := registry.FormatLabels(labels); l != "" {
			args = append(args, "--labels", l)
		}
		if len(accept) > 0 {
			args = append(args, "--accept-routes", strings.Join(accept, ","))
		}
		sidecars = append(sidecars, in.sidecar(sidecarPrefix+r.Interface, args, "/run/vwire-ready/"+r.Interface))
	}
	if ep != nil {
		// Named for the pod (every pod's process is PID 1: the default
		// name, SERVICE-HOST-PID, would be the same for a pod recreated
		// under its name while the old one's registration lives).
		args := []string{"endpoint", "--service", ep.Service, "--name", ep.Service + "-$(POD_NAME).$(POD_NAMESPACE)", "--cidr", ep.CIDR.String(), "--payload", ep.Payload,
			"--gateway", "unix:///run/vwire/gateway.sock", "--ready-file", "/run/vwire-ready/endpoint"}
		if l := registry.FormatLabels(p.Metadata.Labels); l != "" {
			args = append(args, "--labels", l)
		}
		sidecars = append(sidecars, in.sidecar(sidecarPrefix+"endpoint", args, "/run/vwire-ready/endpoint"))
	}
	var patch []map[string]any
	add := func(path string, v any) { patch = append(patch, map[string]any{"op": "add", "path": path, "value": v}) }
	volumes := []map[string]any{
		{"name": "vwire-gateway", "hostPath": map[string]any{"path": in.SocketDir, "type": "Directory"}},
		{"name": "vwire-ready", "emptyDir": map[string]any{"medium": "Memory", "sizeLimit": "1Mi"}},
	}
	if p.Spec.Volumes == nil {
		add("/spec/volumes", volumes)
	} else {
		for _, v := range volumes {
			add("/spec/volumes/-", v)
		}
	}
	// Native sidecars (init containers that keep running) start, in order,
	// before the app's containers, which start only once each sidecar's
	// startup probe passes: its vWire is up.
	if p.Spec.InitContainers == nil {
		add("/spec/initContainers", sidecars)
	} else {
		// Before the pod's own init containers, which may need the vWires.
		for i := len(sidecars) - 1; i >= 0; i-- {
			add("/spec/initContainers/0", sidecars[i])
		}
	}
	return patch, nil
}

// sidecar is a native sidecar running vwire with args, up once the file
// ready says so.
func (in *Injector) sidecar(name string, args []string, ready string) map[string]any {
	period := 1
	threshold := max(int(in.StartupTimeout/time.Second), 1)
	env := []map[string]any{
		{"name": "POD_NAME", "valueFrom": map[string]any{"fieldRef": map[string]any{"fieldPath": "metadata.name"}}},
		{"name": "POD_NAMESPACE", "valueFrom": map[string]any{"fieldRef": map[string]any{"fieldPath": "metadata.namespace"}}},
	}
	if in.OTLPEndpoint != "" {
		env = append(env, map[string]any{"name": "VWIRE_OTLP_ENDPOINT", "value": in.OTLPEndpoint})
	}
	return map[string]any{
		"name":            name,
		"image":           in.Image,
		"imagePullPolicy": in.PullPolicy,
		"args":            args,
		"restartPolicy":   "Always",
		"env":             env,
		"startupProbe": map[string]any{
			"exec":             map[string]any{"command": []string{"/vwire", "ready", ready}},
			"periodSeconds":    period,
			"failureThreshold": threshold,
		},
		"securityContext": map[string]any{
			// Root in the pod's user namespace, for the gateway's socket;
			// raw ICMP to probe the vWire; nothing else.
			"runAsUser":                0,
			"allowPrivilegeEscalation": false,
			"readOnlyRootFilesystem":   true,
			"capabilities":             map[string]any{"drop": []string{"ALL"}, "add": []string{"NET_RAW"}},
		},
		"volumeMounts": []map[string]any{
			{"name": "vwire-gateway", "mountPath": "/run/vwire"},
			{"name": "vwire-ready", "mountPath": "/run/vwire-ready"},
		},
		"resources": map[string]any{"requests": map[string]any{"cpu": "10m", "memory": "32Mi"}},
	}
}

// mergeLabels is the pod's labels with the request's over them.
func mergeLabels(pod, req map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range pod {
		if registry.ValidateLabels(map[string]string{k: v}) == nil {
			out[k] = v
		}
	}
	for k, v := range req {
		out[k] = v
	}
	return out
}

// admissionReview is the part of admission.k8s.io/v1 AdmissionReview the
// webhook reads and writes.
type admissionReview struct {
	APIVersion string             `json:"apiVersion"`
	Kind       string             `json:"kind"`
	Request    *admissionRequest  `json:"request,omitempty"`
	Response   *admissionResponse `json:"response,omitempty"`
}

type admissionRequest struct {
	UID       string          `json:"uid"`
	Namespace string          `json:"namespace"`
	Operation string          `json:"operation"`
	Object    json.RawMessage `json:"object"`
}

type admissionResponse struct {
	UID       string `json:"uid"`
	Allowed   bool   `json:"allowed"`
	PatchType string `json:"patchType,omitempty"`
	Patch     []byte `json:"patch,omitempty"`
	Result    *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"status,omitempty"`
}

// maxReview bounds an AdmissionReview's body (a pod with a large spec).
const maxReview = 3 << 20

func (in *Injector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReview))
	if err != nil {
		http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
		return
	}
	var review admissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
		http.Error(w, "not an AdmissionReview", http.StatusBadRequest)
		return
	}
	resp := &admissionResponse{UID: review.Request.UID, Allowed: true}
	patch, err := in.Patch(review.Request.Object)
	var p pod
	json.Unmarshal(review.Request.Object, &p)
	name := cmp.Or(p.Metadata.Name, p.Metadata.GenerateName+"*")
	switch {
	case err != nil:
		in.Log.Info("a pod is refused: its vWire annotations do not parse", "pod", review.Request.Namespace+"/"+name, "err", err)
		resp.Allowed = false
		resp.Result = &struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}{http.StatusUnprocessableEntity, "vwire: " + err.Error()}
	case patch != nil:
		resp.PatchType = "JSONPatch"
		resp.Patch, _ = json.Marshal(patch)
		containers := 0
		for _, op := range patch {
			if strings.HasPrefix(op["path"].(string), "/spec/initContainers") {
				if list, ok := op["value"].([]map[string]any); ok {
					containers += len(list)
				} else {
					containers++
				}
			}
		}
		in.Log.Info("vWire sidecars added", "pod", review.Request.Namespace+"/"+name, "sidecars", containers)
	}
	review.Request, review.Response = nil, resp
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(review)
}

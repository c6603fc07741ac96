// Package kube is vwire's Kubernetes glue, for a domain that is a
// Kubernetes cluster: its NetworkService objects (networkservicemesh.io/v1,
// the CRDs of deploy/helm/vwire) are the domain's services, which the sync
// stores in the registry; the endpoints registered with vwire appear as
// NetworkServiceEndpoint objects, with their expiry. Only cmd/ imports this
// package: the rest of vwire never depends on client-go.
//
// It uses client-go's dynamic client and informers rather than
// controller-runtime: two resources, no generated types or scheme, and the
// smallest addition to the one binary every role runs.
package kube

import (
	"fmt"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

// The resources, as the CRDs define them.
var (
	ServicesResource  = schema.GroupVersionResource{Group: "networkservicemesh.io", Version: "v1", Resource: "networkservices"}
	EndpointsResource = schema.GroupVersionResource{Group: "networkservicemesh.io", Version: "v1", Resource: "networkserviceendpoints"}
)

// ManagedBy marks the NetworkServiceEndpoint objects vwire writes (as
// app.kubernetes.io/managed-by).
const ManagedBy = "vwire"

const managedByLabel = "app.kubernetes.io/managed-by"

// serviceOf reads a NetworkService object as `vwire apply` reads its
// manifest: the same fields, spellings and refusals.
func serviceOf(obj *unstructured.Unstructured) (*registrypb.NetworkService, error) {
	doc := map[string]any{
		"apiVersion": registry.APIVersion,
		"kind":       registry.KindNetworkService,
		"metadata":   map[string]any{"name": obj.GetName()},
		"spec":       obj.Object["spec"],
	}
	b, err := yaml.Marshal(doc)
	if err != nil {
		return nil, err
	}
	objs, err := registry.DecodeManifests(strings.NewReader(string(b)))
	if err != nil {
		// The decoder names the document; the object is named already.
		msg := err.Error()
		if _, rest, ok := strings.Cut(msg, fmt.Sprintf("(NetworkService %q): ", obj.GetName())); ok {
			msg = rest
		}
		return nil, fmt.Errorf("%s", msg)
	}
	return objs.GetServices()[0], nil
}

// endpointObject is the NetworkServiceEndpoint object that shows a
// registered endpoint, in namespace ns.
func endpointObject(ep *registrypb.Endpoint, ns string) *unstructured.Unstructured {
	names := make([]any, 0, len(ep.GetNetworkServiceNames()))
	for _, n := range ep.GetNetworkServiceNames() {
		names = append(names, n)
	}
	spec := map[string]any{"name": ep.GetName(), "network_service_names": names, "url": ep.GetUrl()}
	if len(ep.GetServiceLabels()) > 0 {
		sl := map[string]any{}
		for svc, l := range ep.GetServiceLabels() {
			sl[svc] = map[string]any{"labels": stringMap(l.GetLabels())}
		}
		spec["network_service_labels"] = sl
	}
	status := map[string]any{"owner": ep.GetOwner()}
	if ep.GetExpiresAt() != nil {
		status["expiresAt"] = ep.GetExpiresAt().AsTime().UTC().Format(time.RFC3339)
	}
	if ep.GetDomain() != "" {
		status["domain"] = ep.GetDomain()
	}
	labels := map[string]string{managedByLabel: ManagedBy}
	for k, v := range ep.GetLabels() {
		labels[k] = v
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": registry.APIVersion,
		"kind":       registry.KindEndpoint,
		"spec":       spec,
		"status":     status,
	}}
	obj.SetName(ep.GetName())
	obj.SetNamespace(ns)
	obj.SetLabels(labels)
	return obj
}

func stringMap(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// sameEndpoint reports whether obj shows what want does (spec, status,
// labels), so that an unchanged endpoint is not written again.
func sameEndpoint(obj, want *unstructured.Unstructured) bool {
	eq := func(a, b any) bool { return fmt.Sprint(a) == fmt.Sprint(b) }
	return eq(obj.Object["spec"], want.Object["spec"]) && eq(obj.Object["status"], want.Object["status"]) && eq(obj.GetLabels(), want.GetLabels())
}

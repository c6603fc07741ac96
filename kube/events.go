package kube

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry"
)

// LabelPodNamespace is the client label the injected sidecars set beside
// podName: which pod asked for a vWire, for the events on it.
const LabelPodNamespace = "vwire.io/pod-namespace"

// maxEventMessage bounds an event's message, as the kubelet's are (1 KiB).
const maxEventMessage = 1024

var (
	podsResource   = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	eventsResource = schema.GroupVersionResource{Version: "v1", Resource: "events"}
)

// PodEvents reports, as events on the pod that asked (kubectl describe
// pod), each vWire it got and each request that failed. It believes a
// request's pod labels only as far as the gateway that carried it proves
// them: the pod must run on that gateway's node. A refresh that works says
// nothing; a failure again counts on the event of the last one, as the
// kubelet's repeated events do.
type PodEvents struct {
	Client dynamic.Interface
	TD     spiffeid.TrustDomain
	Log    *slog.Logger

	// sem bounds the events being written at once; more are dropped.
	sem chan struct{}
}

// NewPodEvents returns PodEvents that write at most 16 events at once.
func NewPodEvents(client dynamic.Interface, td spiffeid.TrustDomain, log *slog.Logger) *PodEvents {
	return &PodEvents{Client: client, TD: td, Log: log, sem: make(chan struct{}, 16)}
}

// Observe is called with each request the domain's proxy answered, its
// answer, and whether it refreshed a connection the proxy had.
func (p *PodEvents) Observe(ctx context.Context, req *proxypb.NetworkServiceRequest, conn *proxypb.Connection, err error, refresh bool) {
	if refresh && err == nil {
		return
	}
	labels := req.GetConnection().GetLabels()
	pod, ns := labels[registry.LabelPod], labels[LabelPodNamespace]
	caller, ok := federation.PeerID(ctx)
	node, isGateway := strings.CutPrefix(caller.Path(), "/vwire/gateway/")
	if pod == "" || ns == "" || !ok || !caller.MemberOf(p.TD) || !isGateway {
		return
	}
	service := req.GetConnection().GetNetworkService()
	reason, kind, msg, key := "VWireUp", "Normal", "", service
	switch {
	case err != nil && refresh:
		reason, kind, msg = "VWireRefreshFailed", "Warning", fmt.Sprintf("refreshing the vWire to %s failed: %v", service, err)
	case err != nil:
		reason, kind, msg = "VWireFailed", "Warning", fmt.Sprintf("no vWire to %s: %v", service, err)
	default:
		ip := conn.GetIpContext()
		msg = fmt.Sprintf("vWire to %s up: connection %s, endpoint %s, %s -> %s", service, conn.GetId(), conn.GetNetworkServiceEndpointName(),
			strings.Join(ip.GetSrcIpAddrs(), ","), strings.Join(ip.GetDstIpAddrs(), ","))
		key = conn.GetId()
	}
	// The answer's words may be a peer domain's: an event says at most
	// maxEventMessage bytes of them.
	if len(msg) > maxEventMessage {
		msg = strings.ToValidUTF8(msg[:maxEventMessage], "") + "…"
	}
	select {
	case p.sem <- struct{}{}:
	default:
		p.Log.Debug("too many pod events at once; dropped one", "pod", ns+"/"+pod, "reason", reason)
		return
	}
	go func() {
		defer func() { <-p.sem }()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := p.record(ctx, ns, pod, node, reason, kind, msg, key); err != nil {
			p.Log.Debug("no event on the pod", "pod", ns+"/"+pod, "reason", reason, "err", err)
		}
	}()
}

// record writes the event on pod ns/name, if it runs on node; an event
// of the pod with the same reason and key counts once more instead.
func (p *PodEvents) record(ctx context.Context, ns, name, node, reason, kind, msg, key string) error {
	pod, err := p.Client.Resource(podsResource).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if on, _, _ := unstructured.NestedString(pod.Object, "spec", "nodeName"); on != node {
		return fmt.Errorf("the pod runs on %q, not on the gateway's node %q", on, node)
	}
	sum := sha256.Sum256([]byte(string(pod.GetUID()) + "/" + reason + "/" + key))
	evName := fmt.Sprintf("%s.vwire.%x", name, sum[:6])
	now := metav1.Now().UTC().Format(time.RFC3339)
	events := p.Client.Resource(eventsResource).Namespace(ns)
	ev := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Event",
		"metadata":       map[string]any{"name": evName, "namespace": ns},
		"involvedObject": map[string]any{"apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": name, "uid": string(pod.GetUID())},
		"reason":         reason, "type": kind, "message": msg,
		"source":         map[string]any{"component": "vwire-proxy", "host": node},
		"firstTimestamp": now, "lastTimestamp": now, "count": int64(1),
	}}
	_, err = events.Create(ctx, ev, metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		return err
	}
	have, err := events.Get(ctx, evName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	count, _, _ := unstructured.NestedInt64(have.Object, "count")
	have.Object["count"], have.Object["lastTimestamp"], have.Object["message"] = count+1, now, msg
	_, err = events.Update(ctx, have, metav1.UpdateOptions{})
	return err
}

package proxy

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/status"

	"github.com/vwire/vwire/proxy/proxypb"
)

// traceRequest puts on the request's span (otelgrpc's, when tracing is on)
// what an operator looks for: the service and domains, and the selected
// endpoint, tunnel and MTU, or why the request was refused.
func traceRequest(ctx context.Context, own, remote string, req *proxypb.NetworkServiceRequest, conn *proxypb.Connection, reason string, err error) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(attribute.String("vwire.service", req.GetConnection().GetNetworkService()), attribute.String("vwire.domain", own))
	if err != nil {
		// (gRPC's spans mark only a server's own failures as errors; a
		// refusal is one an operator looks for.)
		span.SetAttributes(attribute.String("vwire.refusal", reason))
		span.SetStatus(codes.Error, reason+": "+status.Convert(err).Message())
		return
	}
	span.SetAttributes(attribute.String("vwire.remote_domain", remote),
		attribute.String("vwire.endpoint", conn.GetNetworkServiceEndpointName()),
		attribute.String("vwire.tunnel", Tunnel(conn.GetMechanism())), attribute.Int("vwire.mtu", int(conn.GetMtu())))
}

// Tunnel names a mechanism's type: wireguard, vxlan or kernel.
func Tunnel(m *proxypb.Mechanism) string {
	switch {
	case m.GetWireguard() != nil:
		return "wireguard"
	case m.GetVxlan() != nil:
		return "vxlan"
	case m.GetKernel() != nil:
		return "kernel"
	}
	return ""
}

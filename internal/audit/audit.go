// Package audit logs the administrative actions a vwire server carries
// out — applying and deleting services, adding and removing federation
// peers, rotating the CA, closing a connection as the domain's admin —
// with the SPIFFE ID of the caller, what it acted on and how it ended: an
// audit trail in the server's own log.
package audit

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/federation/federationpb"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry/registrypb"
)

// Interceptor logs the administrative calls to a server of trust domain
// td, after they are handled.
func Interceptor(td spiffeid.TrustDomain, log *slog.Logger) grpc.UnaryServerInterceptor {
	admin := federation.AdminID(td)
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		caller, _ := federation.PeerID(ctx)
		action, target, ok := describe(req, caller == admin)
		if !ok {
			return h(ctx, req)
		}
		resp, err := h(ctx, req)
		attrs := []any{"action", action, "target", target, "caller", caller.String(), "method", info.FullMethod}
		if err != nil {
			s := status.Convert(err)
			log.Warn("audit: administrative action refused or failed", append(attrs, "code", s.Code().String(), "err", s.Message())...)
		} else {
			log.Info("audit: administrative action", attrs...)
		}
		return resp, err
	}
}

// describe names an administrative request's action and target; ok is
// false for other requests (a connection's close counts only when the
// domain's admin closes it: gateways close their own all the time).
func describe(req any, byAdmin bool) (action, target string, ok bool) {
	switch r := req.(type) {
	case *registrypb.ApplyRequest:
		var names []string
		for _, s := range r.GetServices() {
			names = append(names, "service "+s.GetName())
		}
		for _, e := range r.GetEndpoints() {
			names = append(names, "endpoint "+e.GetEndpoint().GetName())
		}
		return "apply", cut(strings.Join(names, ", ")), true
	case *registrypb.RegisterServiceRequest:
		return "apply", "service " + cut(r.GetService().GetName()), true
	case *registrypb.DeleteServiceRequest:
		return "delete", "service " + cut(r.GetName()), true
	case *federationpb.AddPeerRequest:
		p := r.GetPeer()
		target := "domain " + p.GetDomain()
		if td := p.GetTrustDomain(); td != "" {
			target += ", trust domain " + td
		}
		if u := p.GetBundleEndpointUrl(); u != "" {
			target += ", bundle endpoint " + u
		}
		return "federation add", cut(target), true
	case *federationpb.RemovePeerRequest:
		return "federation remove", "domain " + cut(r.GetDomain()), true
	case *federationpb.RotateCARequest:
		return "ca rotate", "the built-in CA", true
	case *proxypb.Connection:
		if byAdmin {
			return "close", "connection " + cut(r.GetId()), true
		}
	}
	return "", "", false
}

// cut bounds what a request names in a log line.
func cut(s string) string {
	if len(s) > 512 {
		return s[:512] + fmt.Sprintf("... (%d bytes)", len(s))
	}
	return s
}

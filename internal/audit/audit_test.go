package audit

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net/url"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry/registrypb"
)

// as is a call's context from a client that proved id.
func as(id string) context.Context {
	u, _ := url.Parse(id)
	info := credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{{URIs: []*url.URL{u}}}}}
	return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: info})
}

// Administrative calls are logged with their caller, target and outcome;
// a gateway closing its own connection is not an administrative call.
func TestInterceptor(t *testing.T) {
	var logs bytes.Buffer
	icpt := Interceptor(spiffeid.RequireTrustDomainFromString("a.example"), slog.New(slog.NewTextHandler(&logs, nil)))
	ok := func(context.Context, any) (any, error) { return "done", nil }
	refuse := func(context.Context, any) (any, error) { return nil, status.Error(codes.PermissionDenied, "no") }
	info := &grpc.UnaryServerInfo{FullMethod: "/m"}
	for _, tc := range []struct {
		ctx  context.Context
		req  any
		h    grpc.UnaryHandler
		want string // "": nothing logged
	}{
		{as("spiffe://a.example/vwire/admin"), &registrypb.ApplyRequest{Services: []*registrypb.NetworkService{{Name: "svc"}}},
			ok, `msg="audit: administrative action" action=apply target="service svc" caller=spiffe://a.example/vwire/admin`},
		{as("spiffe://a.example/ns/ops"), &registrypb.DeleteServiceRequest{Name: "svc"},
			refuse, `msg="audit: administrative action refused or failed" action=delete target="service svc" caller=spiffe://a.example/ns/ops method=/m code=PermissionDenied err=no`},
		{as("spiffe://a.example/vwire/admin"), &proxypb.Connection{Id: "c1"}, ok, `action=close target="connection c1"`},
		{as("spiffe://a.example/vwire/gateway/n1"), &proxypb.Connection{Id: "c2"}, ok, ""},
		{as("spiffe://a.example/vwire/admin"), &registrypb.GetServiceRequest{Name: "svc"}, ok, ""},
	} {
		logs.Reset()
		resp, err := icpt(tc.ctx, tc.req, info, tc.h)
		if _, wantErr := tc.h(nil, nil); (err == nil) != (wantErr == nil) || (err == nil && resp != "done") {
			t.Errorf("%T: the call's own result changed: %v %v", tc.req, resp, err)
		}
		if got := logs.String(); (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%T: logged %q, want %q", tc.req, got, tc.want)
		}
	}
}

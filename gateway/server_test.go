package gateway

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vwire/vwire/gateway/dataplane"
	"github.com/vwire/vwire/gateway/handover"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry/registrypb"
)

// upstream is a domain's proxy as a gateway's socket server sees it: it
// answers with what it was asked.
type upstream struct {
	proxypb.UnimplementedNetworkServiceServer
	registrypb.UnimplementedRegistryServer
	asked chan map[string]string
}

func (u *upstream) Request(_ context.Context, req *proxypb.NetworkServiceRequest) (*proxypb.Connection, error) {
	u.asked <- req.GetConnection().GetLabels()
	return req.GetConnection(), nil
}

func (u *upstream) RegisterEndpoint(_ context.Context, req *registrypb.RegisterEndpointRequest) (*registrypb.Endpoint, error) {
	u.asked <- req.GetEndpoint().GetLabels()
	return req.GetEndpoint(), nil
}

// The gateway adds its node's name to what its workloads say (as Network
// Service Mesh's nsmgr does), unless they say one themselves.
func TestSocketAddsNodeName(t *testing.T) {
	up := &upstream{asked: make(chan map[string]string, 4)}
	lis, err := net.Listen("unix", filepath.Join(t.TempDir(), "proxy.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	proxypb.RegisterNetworkServiceServer(srv, up)
	registrypb.RegisterRegistryServer(srv, up)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	toProxy, err := grpc.NewClient("unix://"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { toProxy.Close() })

	g := openGateway(t, t.TempDir(), "192.0.2.1", dataplane.NewFake(), "")
	g.Node = "node-7"
	s := &Server{G: g, TD: spiffeid.RequireTrustDomainFromString("a.example"), Proxy: toProxy}
	gs, sock, err := s.Listen(filepath.Join(t.TempDir(), "gateway.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient("unix://"+sock.Addr().String(), grpc.WithTransportCredentials(handover.HandNS(nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	request := func(labels map[string]string) map[string]string {
		t.Helper()
		if _, err := proxypb.NewNetworkServiceClient(conn).Request(ctx, &proxypb.NetworkServiceRequest{Connection: &proxypb.Connection{
			NetworkService: "svc", Labels: labels,
			Mechanism: &proxypb.Mechanism{Type: &proxypb.Mechanism_Kernel{Kernel: &proxypb.KernelInterface{Netns: "ns"}}}}}); err != nil {
			t.Fatal(err)
		}
		return <-up.asked
	}
	if got := request(map[string]string{"app": "web"}); got["nodeName"] != "node-7" || got["app"] != "web" {
		t.Errorf("a client's labels upstream: %v", got)
	}
	if got := request(map[string]string{"nodeName": "mine"}); got["nodeName"] != "mine" {
		t.Errorf("a client that names its node: %v", got)
	}
	if _, err := registrypb.NewRegistryClient(conn).RegisterEndpoint(ctx, &registrypb.RegisterEndpointRequest{Endpoint: &registrypb.Endpoint{
		Name: "ep", NetworkServiceNames: []string{"svc"}, Url: "unix:///run/vwire/endpoints/ep.sock"}}); err != nil {
		t.Fatal(err)
	}
	if got := <-up.asked; got["nodeName"] != "node-7" {
		t.Errorf("an endpoint's labels upstream: %v", got)
	}
}

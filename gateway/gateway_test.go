package gateway

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/vwire/vwire/endpoint"
	"github.com/vwire/vwire/gateway/dataplane"
	"github.com/vwire/vwire/gateway/handover"
	"github.com/vwire/vwire/proxy"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry/registrypb"
)

// serveEndpoint runs an endpoint on a unix socket and returns its URL.
func serveEndpoint(t *testing.T, ep proxypb.NetworkServiceServer) string {
	path := filepath.Join(t.TempDir(), "ep.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(handover.HandNS(nil))) // it names its namespace
	proxypb.RegisterNetworkServiceServer(srv, ep)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return "unix://" + path
}

func openGateway(t *testing.T, dir, addr string, b *dataplane.Fake, url string) *Gateway {
	g, err := Open("n1", b, dir, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	g.Addr, g.OuterMTU = netip.MustParseAddr(addr), 1500
	g.Endpoint = func(_ context.Context, name string) (*registrypb.Endpoint, error) {
		if name != "ep1" {
			return nil, errors.New("no such endpoint")
		}
		return &registrypb.Endpoint{Name: name, Url: url}, nil
	}
	return g
}

// The endpoint's gateway asks the endpoint for addresses and answers its
// WireGuard key and port; the client's gateway programs its end with them;
// both survive a restart from their state; closing frees the endpoint's
// pair and removes both ends.
func TestTwoGatewaysProgramAVWire(t *testing.T) {
	ctx := context.Background()
	ep, _ := endpoint.New("172.16.0.0/24", "ep-ns", "IP")
	url := serveEndpoint(t, ep)
	dirA, dirB := t.TempDir(), t.TempDir()
	fa, fb := dataplane.NewFake(), dataplane.NewFake()
	fb.Key = "ZmFrZS1nYXRld2F5LWtleS1iLWJiYmJiYmJiYmJiYmI="
	ga, gb := openGateway(t, dirA, "10.0.0.1", fa, url), openGateway(t, dirB, "10.0.0.2", fb, url)

	keyA, _ := base64.StdEncoding.DecodeString(ga.PublicKey())
	req := &proxypb.Connection{Id: "c1", NetworkService: "svc", NetworkServiceEndpointName: "ep1", Payload: "IP",
		Mechanism: &proxypb.Mechanism{Type: &proxypb.Mechanism_Wireguard{Wireguard: &proxypb.WireGuard{SrcIp: "10.0.0.1", SrcPublicKey: keyA}}}}
	answer, err := gb.Apply(ctx, proxy.EndpointSide, req)
	if err != nil {
		t.Fatal(err)
	}
	w := answer.GetMechanism().GetWireguard()
	if w.GetDstIp() != "10.0.0.2" || w.GetDstPort() == 0 || len(w.GetDstPublicKey()) != 32 || answer.GetMtu() != 1440 {
		t.Fatalf("endpoint side answered %v, MTU %d", w, answer.GetMtu())
	}
	ga.Expect("c1", &proxypb.KernelInterface{Netns: "client-ns", InterfaceName: "nsm0"})
	if _, err := ga.Apply(ctx, proxy.ClientSide, answer); err != nil {
		t.Fatal(err)
	}
	ga.Forget("c1")
	wantB := "e-c1 netns=ep-ns dev=" + endpoint.Interface("c1") + " mtu=1440 addrs=[172.16.0.3/32] routes=[] wireguard=peer:" + ga.PublicKey() + "@learnt port=51820 remote=[172.16.0.2/32]"
	if fb.String() != wantB {
		t.Errorf("endpoint's gateway:\n%s\nwant\n%s", fb, wantB)
	}
	wantA := "c-c1 netns=client-ns dev=nsm0 mtu=1440 addrs=[172.16.0.2/32] routes=[] wireguard=peer:" + gb.PublicKey() + "@10.0.0.2:51820 port=51820 remote=[172.16.0.3/32]"
	if fa.String() != wantA {
		t.Errorf("client's gateway:\n%s\nwant\n%s", fa, wantA)
	}

	// A refresh after the client's gateway restarted: same end, no
	// workload waiting (it comes from the state).
	ga2 := openGateway(t, dirA, "10.0.0.1", dataplane.NewFake(), url) // fa's key, as a restart keeps it
	if got := ga2.Ends(); len(got) != 1 || got[0].String() != wantA {
		t.Fatalf("restarted gateway wants %v", got)
	}
	if _, err := ga2.Apply(ctx, proxy.ClientSide, answer); err != nil {
		t.Errorf("refresh after restart: %v", err)
	}
	again, err := gb.Apply(ctx, proxy.EndpointSide, req)
	if err != nil || again.GetIpContext().GetDstIpAddrs()[0] != "172.16.0.3/32" {
		t.Errorf("refresh on the endpoint's side: %v %v", again.GetIpContext(), err)
	}

	if err := gb.Remove(ctx, proxy.EndpointSide, req); err != nil {
		t.Fatal(err)
	}
	if err := ga.Remove(ctx, proxy.ClientSide, answer); err != nil {
		t.Fatal(err)
	}
	if fa.String()+fb.String() != "" || ep.InUse() != 0 {
		t.Errorf("after remove: a %q, b %q, endpoint pairs in use %d", fa, fb, ep.InUse())
	}
}

// A failing backend leaves nothing: no end, no record, the endpoint's pair
// free again.
func TestFailedEndpointSideLeavesNothing(t *testing.T) {
	ep, _ := endpoint.New("172.16.0.0/24", "ep-ns", "IP")
	fb := dataplane.NewFake()
	fb.Fail = errors.New("netlink says no")
	gb := openGateway(t, t.TempDir(), "10.0.0.2", fb, serveEndpoint(t, ep))
	_, err := gb.Apply(context.Background(), proxy.EndpointSide, fromPeer("c1"))
	if err == nil || !strings.Contains(err.Error(), "netlink says no") {
		t.Fatalf("got %v", err)
	}
	if len(gb.Ends()) != 0 || ep.InUse() != 0 {
		t.Errorf("left behind: ends %v, endpoint pairs in use %d", gb.Ends(), ep.InUse())
	}
}

// An Ethernet vWire between two workloads of one gateway: one bridge, no
// tunnel, the endpoint's /31 on both ends.
func TestLocalEthernet(t *testing.T) {
	ctx := context.Background()
	ep, _ := endpoint.New("172.16.0.0/24", "ep-ns", "ETHERNET")
	f := dataplane.NewFake()
	g := openGateway(t, t.TempDir(), "10.0.0.1", f, serveEndpoint(t, ep))
	key, _ := base64.StdEncoding.DecodeString(g.PublicKey())
	req := &proxypb.Connection{Id: "c1", NetworkServiceEndpointName: "ep1", Payload: "ETHERNET",
		Mechanism: &proxypb.Mechanism{Type: &proxypb.Mechanism_Wireguard{Wireguard: &proxypb.WireGuard{SrcIp: "10.0.0.1", SrcPublicKey: key}}}}
	answer, err := g.Apply(ctx, proxy.EndpointSide, req)
	if err != nil {
		t.Fatal(err)
	}
	g.Expect("c1", &proxypb.KernelInterface{Netns: "client-ns", InterfaceName: "nsm0"})
	if _, err := g.Apply(ctx, proxy.ClientSide, answer); err != nil {
		t.Fatal(err)
	}
	want := "c-c1 netns=client-ns dev=nsm0 mtu=1500 addrs=[172.16.0.2/31] routes=[] bridge=e-c1\n" +
		"e-c1 netns=ep-ns dev=" + endpoint.Interface("c1") + " mtu=1500 addrs=[172.16.0.3/31] routes=[] bridge=e-c1"
	if f.String() != want {
		t.Errorf("programmed:\n%s\nwant\n%s", f, want)
	}
}

// fromPeer is the connection id of an IP client behind the gateway at
// 10.0.0.1, as it reaches the endpoint's gateway.
func fromPeer(id string) *proxypb.Connection {
	return &proxypb.Connection{Id: id, NetworkServiceEndpointName: "ep1", Payload: "IP",
		Mechanism: &proxypb.Mechanism{Type: &proxypb.Mechanism_Wireguard{Wireguard: &proxypb.WireGuard{SrcIp: "10.0.0.1", SrcPublicKey: make([]byte, 32)}}}}
}

// Once a stopping gateway removed its ends, a refresh that arrives late
// programs nothing again: what the gateway made is gone when it stops.
func TestRemoveAllThenRefresh(t *testing.T) {
	ctx := context.Background()
	ep, _ := endpoint.New("172.16.0.0/24", "ep-ns", "IP")
	fb := dataplane.NewFake()
	gb := openGateway(t, t.TempDir(), "10.0.0.2", fb, serveEndpoint(t, ep))
	req := fromPeer("c1")
	if _, err := gb.Apply(ctx, proxy.EndpointSide, req); err != nil {
		t.Fatal(err)
	}
	gb.RemoveAll(ctx)
	if _, err := gb.Apply(ctx, proxy.EndpointSide, req); !errors.Is(err, errStopping) {
		t.Errorf("a refresh after RemoveAll: %v, want %v", err, errStopping)
	}
	if fb.String() != "" || len(gb.Ends()) != 0 || ep.InUse() != 0 {
		t.Errorf("after RemoveAll and a refresh: programmed %q, ends %v, endpoint pairs in use %d", fb, gb.Ends(), ep.InUse())
	}
}

// stuckEndpoint hands out addresses but never answers a Close.
type stuckEndpoint struct {
	*endpoint.Endpoint
	release chan struct{}
}

func (s stuckEndpoint) Close(ctx context.Context, _ *proxypb.Connection) (*proxypb.CloseResponse, error) {
	select {
	case <-s.release:
	case <-ctx.Done():
	}
	return nil, ctx.Err()
}

// A stopping gateway removes its ends although an endpoint never answers
// that its connection closed.
func TestRemoveAllStuckEndpoint(t *testing.T) {
	ctx := context.Background()
	ep, _ := endpoint.New("172.16.0.0/24", "ep-ns", "IP")
	stuck := stuckEndpoint{ep, make(chan struct{})}
	defer close(stuck.release)
	fb := dataplane.NewFake()
	gb := openGateway(t, t.TempDir(), "10.0.0.2", fb, serveEndpoint(t, stuck))
	req := fromPeer("c1")
	if _, err := gb.Apply(ctx, proxy.EndpointSide, req); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { gb.RemoveAll(ctx); close(done) }()
	select {
	case <-done:
	case <-time.After(2*endpointCloseTimeout + time.Second):
		t.Fatal("RemoveAll waits for an endpoint that does not answer")
	}
	if fb.String() != "" {
		t.Errorf("left programmed: %q", fb)
	}
}

// A client side with no waiting workload, and answers without a usable
// mechanism, are refused.
func TestClientSideRefusals(t *testing.T) {
	g := openGateway(t, t.TempDir(), "10.0.0.1", dataplane.NewFake(), "")
	conn := &proxypb.Connection{Id: "c1", IpContext: &proxypb.IPContext{SrcIpAddrs: []string{"172.16.0.2/32"}, DstIpAddrs: []string{"172.16.0.3/32"}}}
	if _, err := g.Apply(context.Background(), proxy.ClientSide, conn); err == nil || !strings.Contains(err.Error(), "no workload") {
		t.Errorf("no workload: %v", err)
	}
	g.Expect("c1", &proxypb.KernelInterface{Netns: "ns", InterfaceName: "nsm0"})
	if _, err := g.Apply(context.Background(), proxy.ClientSide, conn); err == nil || !strings.Contains(err.Error(), "no tunnel mechanism") {
		t.Errorf("no mechanism: %v", err)
	}
	if len(g.Ends()) != 0 {
		t.Errorf("ends left: %v", g.Ends())
	}
}

// A peer gateway that never answers the WireGuard handshake: the client
// side is refused with an error naming its address and port, and nothing
// stays programmed or recorded.
func TestUnreachablePeerGateway(t *testing.T) {
	fa := dataplane.NewFake()
	fa.Unreachable = true
	dir := t.TempDir()
	g := openGateway(t, dir, "10.0.0.1", fa, "")
	g.HandshakeTimeout = 50 * time.Millisecond
	g.Expect("c1", &proxypb.KernelInterface{Netns: "ns", InterfaceName: "nsm0"})
	conn := &proxypb.Connection{Id: "c1", IpContext: &proxypb.IPContext{SrcIpAddrs: []string{"172.16.0.2/32"}, DstIpAddrs: []string{"172.16.0.3/32"}},
		Mtu: 1440, Mechanism: &proxypb.Mechanism{Type: &proxypb.Mechanism_Wireguard{Wireguard: &proxypb.WireGuard{
			DstIp: "10.0.0.9", DstPort: 51999, DstPublicKey: make([]byte, 32)}}}}
	_, err := g.Apply(context.Background(), proxy.ClientSide, conn)
	if err == nil || !strings.Contains(err.Error(), "gateway at 10.0.0.9:51999 does not answer WireGuard") {
		t.Fatalf("got %v", err)
	}
	if fa.String() != "" || len(g.Ends()) != 0 {
		t.Errorf("left programmed: %q, desired %v", fa, g.Ends())
	}
	// A restart finds nothing to reprogram either.
	if again := openGateway(t, dir, "10.0.0.1", dataplane.NewFake(), ""); len(again.Ends()) != 0 {
		t.Errorf("a restarted gateway would reprogram %v", again.Ends())
	}
}

// The endpoint's side learns where the client's gateway sends from and
// keeps it, so that after a restart it handshakes at once.
func TestEndpointSideLearnsPeerAddress(t *testing.T) {
	ep, _ := endpoint.New("172.16.0.0/24", "ep-ns", "IP")
	fb := dataplane.NewFake()
	fb.Learnt = netip.MustParseAddrPort("10.0.0.1:40000")
	dir := t.TempDir()
	gb := openGateway(t, dir, "10.0.0.2", fb, serveEndpoint(t, ep))
	key := make([]byte, 32)
	key[0] = 1
	if _, err := gb.Apply(context.Background(), proxy.EndpointSide, &proxypb.Connection{Id: "c1", NetworkServiceEndpointName: "ep1", Payload: "IP",
		Mechanism: &proxypb.Mechanism{Type: &proxypb.Mechanism_Wireguard{Wireguard: &proxypb.WireGuard{SrcIp: "10.0.0.1", SrcPublicKey: key}}}}); err != nil {
		t.Fatal(err)
	}
	if e := gb.Ends()[0]; e.WireGuard.Endpoint.IsValid() {
		t.Fatalf("the endpoint's side knew its peer before it sent: %v", e)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); gb.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(5 * time.Second)
	for gb.Ends()[0].WireGuard.Endpoint != fb.Learnt {
		if time.Now().After(deadline) {
			t.Fatalf("not learnt after 5 s: %v", gb.Ends())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Kept once the write that follows it is done (a restart reads the
	// file; what Ends shows may not be written yet).
	for {
		again, err := Open("n1", dataplane.NewFake(), dir, slog.Default())
		if err != nil {
			t.Fatal(err)
		}
		ends := again.Ends()
		again.Close()
		if ends[0].WireGuard.Endpoint == fb.Learnt {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a restart forgets the peer's address: %v", ends)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

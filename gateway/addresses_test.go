package gateway

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/vwire/vwire/gateway/dataplane"
	"github.com/vwire/vwire/proxy"
	"github.com/vwire/vwire/proxy/proxypb"
)

// A peer domain's answer names the client's addresses and the endpoint's;
// the client's gateway checks them before it programs anything: no
// address that is not a single host's, no route the workload did not
// accept, no more than MaxAddrs.
func TestHostileAnswers(t *testing.T) {
	ctx := context.Background()
	fa := dataplane.NewFake()
	ga := openGateway(t, t.TempDir(), "10.0.0.1", fa, "")
	peerKey := make([]byte, 32)
	peerKey[0] = 1
	many := make([]string, MaxAddrs+1)
	for i := range many {
		many[i] = fmt.Sprintf("172.16.0.%d/32", i+1)
	}
	answer := func(payload string, src, dst []string) *proxypb.Connection {
		return &proxypb.Connection{Id: "c1", NetworkService: "svc", Payload: payload,
			IpContext: &proxypb.IPContext{SrcIpAddrs: src, DstIpAddrs: dst}, Mtu: 1420,
			Mechanism: &proxypb.Mechanism{Type: &proxypb.Mechanism_Wireguard{Wireguard: &proxypb.WireGuard{
				DstIp: "10.0.0.2", DstPort: 51820, DstPublicKey: peerKey}}}}
	}
	ok := []string{"172.16.0.3/32"}
	for _, tc := range []struct {
		name     string
		payload  string
		src, dst []string
		accept   []string
		want     string
	}{
		{"a subnet as the client's address", "IP", []string{"10.0.0.0/8"}, ok, nil, `the client's address 10.0.0.0/8: an IP vWire's addresses are single hosts (/32)`},
		{"the gateway's own next hop", "IP", []string{"169.254.0.1/32"}, ok, nil, `the client's address 169.254.0.1/32: a link-local address`},
		{"a multicast address", "IP", []string{"224.0.0.251/32"}, ok, nil, `a multicast address`},
		{"the broadcast address", "IP", []string{"255.255.255.255/32"}, ok, nil, `the broadcast address`},
		{"a loopback address", "IP", ok, []string{"127.0.0.1/32"}, nil, `the endpoint's address 127.0.0.1/32: a loopback address`},
		{"IPv4 in IPv6", "IP", []string{"::ffff:10.0.0.9/128"}, ok, nil, `an IPv4-mapped IPv6 address`},
		{"too many addresses", "IP", many, ok, nil, `17 addresses, at most 16`},
		{"a default route", "IP", []string{"172.16.0.2/32"}, []string{"0.0.0.0/0"}, nil,
			`the endpoint's default route 0.0.0.0/0: not accepted by the workload`},
		{"a route outside what is accepted", "IP", []string{"172.16.0.2/32"}, []string{"10.0.0.0/8"}, []string{"10.1.0.0/16"},
			`the endpoint's route 10.0.0.0/8: not accepted`},
		{"an Ethernet link's network address", "ETHERNET", []string{"172.16.0.0/24"}, []string{"172.16.0.1/24"}, nil,
			`the network or broadcast address of its subnet`},
		{"an Ethernet link too wide", "ETHERNET", []string{"10.1.0.1/8"}, []string{"10.1.0.2/8"}, nil, `at most /16`},
		{"not an address", "IP", []string{"nope"}, ok, nil, `address "nope"`},
	} {
		ga.Expect("c1", &proxypb.KernelInterface{Netns: "client-ns", InterfaceName: "nsm0", AcceptRoutes: tc.accept})
		_, err := ga.Apply(ctx, proxy.ClientSide, answer(tc.payload, tc.src, tc.dst))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
		if fa.String() != "" || len(ga.Ends()) != 0 {
			t.Errorf("%s: programmed %q", tc.name, fa)
		}
	}

	// The tunnel a peer names: never aimed at the host's own services,
	// ports and VNIs in their ranges.
	for _, tc := range []struct {
		name string
		m    *proxypb.Mechanism
		want string
	}{
		{"a loopback tunnel address", &proxypb.Mechanism{Type: &proxypb.Mechanism_Wireguard{Wireguard: &proxypb.WireGuard{DstIp: "127.0.0.1", DstPort: 53, DstPublicKey: peerKey}}}, "a loopback address"},
		{"a port past 65535", &proxypb.Mechanism{Type: &proxypb.Mechanism_Wireguard{Wireguard: &proxypb.WireGuard{DstIp: "10.0.0.2", DstPort: 65536 + 53, DstPublicKey: peerKey}}}, "bad WireGuard mechanism"},
		{"a VNI past 24 bits", &proxypb.Mechanism{Type: &proxypb.Mechanism_Vxlan{Vxlan: &proxypb.VXLAN{DstIp: "10.0.0.2", Vni: 1 << 24}}}, "bad VXLAN mechanism"},
		{"a multicast VXLAN remote", &proxypb.Mechanism{Type: &proxypb.Mechanism_Vxlan{Vxlan: &proxypb.VXLAN{DstIp: "239.1.1.1", Vni: 7}}}, "a multicast address"},
	} {
		ga.Expect("c1", &proxypb.KernelInterface{Netns: "client-ns", InterfaceName: "nsm0"})
		a := answer("IP", []string{"172.16.0.2/32"}, ok)
		a.Mechanism = tc.m
		a.PlainVxlan = true
		if _, err := ga.Apply(ctx, proxy.ClientSide, a); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
		if fa.String() != "" {
			t.Errorf("%s: programmed %q", tc.name, fa)
		}
	}

	// A peer cannot downgrade an Ethernet vWire to plain VXLAN unless the
	// service says so.
	ga.Expect("c1", &proxypb.KernelInterface{Netns: "client-ns", InterfaceName: "nsm0"})
	plain := answer("ETHERNET", []string{"172.16.0.2/31"}, []string{"172.16.0.3/31"})
	plain.Mechanism = &proxypb.Mechanism{Type: &proxypb.Mechanism_Vxlan{Vxlan: &proxypb.VXLAN{SrcIp: "10.0.0.1", DstIp: "10.0.0.2", Vni: 7}}}
	if _, err := ga.Apply(ctx, proxy.ClientSide, plain); err == nil || !strings.Contains(err.Error(), "answered plain VXLAN for an Ethernet vWire across domains, which its service does not declare (plainVxlan)") {
		t.Errorf("a plain VXLAN answer for an unmarked service: %v", err)
	}
	if fa.String() != "" {
		t.Errorf("the downgrade programmed %q", fa)
	}
	plain.PlainVxlan = true
	if _, err := ga.Apply(ctx, proxy.ClientSide, plain); err != nil {
		t.Errorf("a plain VXLAN answer for a plainVxlan service: %v", err)
	}
	ga.Remove(ctx, proxy.ClientSide, plain)

	// What the workload accepts goes in: a default route as its halves.
	ga.Expect("c1", &proxypb.KernelInterface{Netns: "client-ns", InterfaceName: "nsm0", AcceptRoutes: []string{"0.0.0.0/0"}})
	if _, err := ga.Apply(ctx, proxy.ClientSide, answer("IP", []string{"172.16.0.2/32"}, []string{"172.16.0.3/32", "0.0.0.0/0"})); err != nil {
		t.Fatal(err)
	}
	want := "c-c1 netns=client-ns dev=nsm0 mtu=1420 addrs=[172.16.0.2/32] routes=[] wireguard=peer:" + base64.StdEncoding.EncodeToString(peerKey) +
		"@10.0.0.2:51820 port=51820 remote=[172.16.0.3/32 0.0.0.0/1 128.0.0.0/1]"
	if fa.String() != want {
		t.Errorf("accepted default route:\n%s\nwant\n%s", fa, want)
	}
	if e, _ := ga.reconciler.Get("c-c1"); fmt.Sprint(e.Accept) != "[0.0.0.0/0]" {
		t.Errorf("the end keeps what its workload accepts for a restart: %v", e.Accept)
	}
}

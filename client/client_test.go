package client

import (
	"testing"

	"github.com/vwire/vwire/proxy/proxypb"
)

func TestTunnel(t *testing.T) {
	key, other := make([]byte, 32), make([]byte, 32)
	other[0] = 1
	wg := func(src, dst []byte) *proxypb.Mechanism {
		return &proxypb.Mechanism{Type: &proxypb.Mechanism_Wireguard{Wireguard: &proxypb.WireGuard{SrcPublicKey: src, DstPublicKey: dst, DstIp: "10.0.0.2", DstPort: 51820}}}
	}
	for _, c := range []struct {
		conn *proxypb.Connection
		want string
	}{
		{&proxypb.Connection{Mechanism: wg(other, key)}, "wireguard to 10.0.0.2:51820"},
		{&proxypb.Connection{Mechanism: wg(key, key), Payload: "IP"}, "none, both ends behind the gateway at 10.0.0.2 (routed)"},
		{&proxypb.Connection{Mechanism: wg(key, key), Payload: "ETHERNET"}, "none, both ends behind the gateway at 10.0.0.2 (bridged)"},
		{&proxypb.Connection{Mechanism: &proxypb.Mechanism{Type: &proxypb.Mechanism_Vxlan{Vxlan: &proxypb.VXLAN{Vni: 7, DstIp: "10.0.0.3"}}}}, "vxlan 7 to 10.0.0.3"},
		{&proxypb.Connection{}, "-"},
	} {
		if got := Tunnel(c.conn); got != c.want {
			t.Errorf("Tunnel(%v) = %q, want %q", c.conn.GetMechanism(), got, c.want)
		}
	}
}

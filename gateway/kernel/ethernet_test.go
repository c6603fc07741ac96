package kernel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/gateway/dataplane"
)

// An Ethernet end across domains: VXLAN between the two gateways' inner
// addresses, inside their WireGuard tunnel. The workloads share a link
// (ping over their /31), List reports the ends as applied, and a marked
// payload never crosses the link between the hosts in clear (the same
// mark sent bare across that link is seen: the capture works).
func TestEthernetInsideWireGuard(t *testing.T) {
	e2e.RequireRoot(t, "ping")
	p := newGatewayPair(t)
	p.bA.WithTunnels(p.tA)
	p.bB.WithTunnels(p.tB)
	before := hostLinks(t, p.gA)
	innerA, innerB := netip.MustParseAddr("fd00:a::1"), netip.MustParseAddr("fd00:b::1")
	wA, wB := namespace(t), namespace(t)
	host := func(a netip.Addr) []netip.Prefix { return []netip.Prefix{netip.PrefixFrom(a, 128)} }
	endB := dataplane.End{ID: "l2", NetNS: wB, Interface: "nsm0", MTU: 1350, Addrs: []netip.Prefix{netip.MustParsePrefix("172.30.5.3/31")},
		VXLAN:     &dataplane.VXLAN{VNI: 77, Local: innerB, Remote: innerA},
		WireGuard: &dataplane.WireGuard{Peer: p.keyA.PublicKey().String(), Remote: host(innerA)}}
	if err := Do(p.gB, func() error { return p.bB.Apply(context.Background(), endB) }); err != nil {
		t.Fatal(err)
	}
	portB := p.tB.ListenPort("l2")
	endA := dataplane.End{ID: "l2", NetNS: wA, Interface: "nsm0", MTU: 1350, Addrs: []netip.Prefix{netip.MustParsePrefix("172.30.5.2/31")},
		VXLAN: &dataplane.VXLAN{VNI: 77, Local: innerA, Remote: innerB},
		WireGuard: &dataplane.WireGuard{Peer: p.keyB.PublicKey().String(), Endpoint: netip.AddrPortFrom(netip.MustParseAddr("172.31.0.2"), uint16(portB)),
			Remote: host(innerB)}}
	if err := Do(p.gA, func() error { return p.bA.Apply(context.Background(), endA) }); err != nil {
		t.Fatal(err)
	}

	// The first packets wait for ARP across the tunnel and its first
	// handshake: poll until the link answers, then measure.
	for deadline := time.Now().Add(20 * time.Second); ; {
		if exec.Command("ip", "netns", "exec", wA, "ping", "-c", "1", "-W", "1", "172.30.5.3").Run() == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no ping over the Ethernet vWire within 20 s")
		}
	}
	mark := hex.EncodeToString([]byte("vwire-in-clear!"))
	stop := e2e.Capture(t, p.gA, "vwt-ua")
	out, err := exec.Command("ip", "netns", "exec", wA, "ping", "-c", "3", "-w", "6", "-p", mark, "172.30.5.3").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "3 received") {
		t.Fatalf("ping over the Ethernet vWire: %v\n%s", err, out)
	}
	bare, err := exec.Command("ip", "netns", "exec", p.gA, "ping", "-c", "1", "-w", "2", "-p", mark, "172.31.0.2").CombinedOutput()
	if err != nil {
		t.Fatalf("the bare ping across the link: %v\n%s", err, bare)
	}
	seen := stop()
	if n := bytes.Count(seen, []byte("vwire-in-clear!")); n == 0 || n > 8 {
		// The bare ping's request and reply carry the mark (a few times
		// each); the vWire's six packets would add more than that.
		t.Errorf("the mark crossed the link %d times: the capture should see only the bare ping's", n)
	}
	streamAcross(t, wA, wB, "172.30.5.3")
	// The stream's VXLAN packets reached wireguard-go whole, bigger than
	// the MTU (the kernel cut none of them), through the Ethernet TUN; on
	// the far side they went into the kernel joined again, through the TAP.
	tunnel := func(ns string, peer netip.Addr) string {
		route := ip(t, "-n", ns, "-6", "route", "get", peer.String())
		if !strings.Contains(route, " dev we") {
			t.Fatalf("the peer's inner address is not routed into the Ethernet TUN: %s", route)
		}
		return strings.Fields(route[strings.Index(route, " dev ")+5:])[0]
	}
	if s := linkStats(t, p.gA, tunnel(p.gA, innerB)); s.TxPackets == 0 || s.TxBytes/s.TxPackets < 1500 {
		t.Errorf("the Ethernet TUN took %d bytes in %d packets: not whole segments", s.TxBytes, s.TxPackets)
	}
	if s := linkStats(t, p.gB, tapName(tunnel(p.gB, innerA))); s.RxPackets == 0 || s.RxBytes/s.RxPackets < 1500 {
		t.Errorf("the far side's TAP took %d bytes in %d packets: not joined", s.RxBytes, s.RxPackets)
	}
	if strings.Contains(ip(t, "-n", p.gA, "-d", "link", "show", "type", "vxlan"), "vxlan") {
		t.Error("a VXLAN device was left in the gateway's namespace")
	}

	endA.WireGuard.Port = p.tA.ListenPort("l2") // what the gateway keeps (keepPort)
	listed, err := p.bA.List(context.Background())
	if err != nil || len(listed) != 1 || listed[0].String() != endA.String() {
		t.Errorf("List: %v, %v\nwant %v", listed, err, endA)
	}

	// A second Ethernet vWire through the same tunnel: the peer's inner
	// address is routed into the tunnel's Ethernet TUN already, which is
	// the tunnel's own route, not one the end would take over.
	wA2, wB2 := namespace(t), namespace(t)
	endB2, endA2 := endB, endA
	endB2.ID, endB2.NetNS, endB2.VXLAN = "l2b", wB2, &dataplane.VXLAN{VNI: 78, Local: innerB, Remote: innerA}
	endA2.ID, endA2.NetNS, endA2.VXLAN = "l2b", wA2, &dataplane.VXLAN{VNI: 78, Local: innerA, Remote: innerB}
	if err := Do(p.gB, func() error { return p.bB.Apply(context.Background(), endB2) }); err != nil {
		t.Fatalf("a second Ethernet vWire, the endpoint's side: %v", err)
	}
	if err := Do(p.gA, func() error { return p.bA.Apply(context.Background(), endA2) }); err != nil {
		t.Fatalf("a second Ethernet vWire, the client's side: %v", err)
	}
	out, err = exec.Command("ip", "netns", "exec", wA2, "ping", "-c", "1", "-w", "10", "172.30.5.3").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "1 received") {
		t.Errorf("ping over the second Ethernet vWire: %v\n%s", err, out)
	}
	p.remove("l2b")
	p.remove("l2")
	if after := hostLinks(t, p.gA); strings.Join(after, " ") != strings.Join(before, " ") {
		t.Errorf("links before %v, after %v", before, after)
	}
}

// remove removes end id on both gateways, each from its namespace.
func (p *gatewayPair) remove(id string) {
	p.t.Helper()
	for _, s := range []struct {
		b  *Backend
		ns string
	}{{p.bA, p.gA}, {p.bB, p.gB}} {
		if err := Do(s.ns, func() error { return s.b.Remove(context.Background(), id) }); err != nil {
			p.t.Error(err)
		}
	}
}

// streamAcross sends 32 MB over TCP from namespace from to addr in
// namespace to, and checks that every byte arrives as sent.
func streamAcross(t *testing.T, from, to, addr string) {
	t.Helper()
	var l net.Listener
	if err := Do(to, func() (err error) { l, err = net.Listen("tcp", net.JoinHostPort(addr, "5001")); return err }); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(60 * time.Second))
		h := sha256.New()
		_, _ = io.Copy(h, c)
		got <- h.Sum(nil)
	}()
	var c net.Conn
	if err := Do(from, func() (err error) {
		c, err = net.DialTimeout("tcp", net.JoinHostPort(addr, "5001"), 10*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	data := make([]byte, 32<<20)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(data)
	if _, err := c.Write(data); err != nil {
		t.Fatalf("sending over the vWire: %v", err)
	}
	c.Close()
	if want := sha256.Sum256(data); !bytes.Equal(<-got, want[:]) {
		t.Error("the stream arrived changed or cut short")
	}
}

// linkStats is link's counters in namespace ns.
func linkStats(t *testing.T, ns, link string) *netlink.LinkStatistics {
	t.Helper()
	var l netlink.Link
	err := Do(ns, func() (err error) { l, err = netlink.LinkByName(link); return err })
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Statistics
}

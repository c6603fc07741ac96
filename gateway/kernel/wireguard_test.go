package kernel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/gateway/dataplane"
)

// Two gateways in two namespaces, joined by a veth as by a network, get a
// WireGuard tunnel each (embedded wireguard-go here: the kernel has no
// module) and a workload address behind it: ping crosses the tunnel.
func TestWireGuardBetweenGateways(t *testing.T) {
	e2e.RequireRoot(t, "ping")
	nsA, nsB := underlay(t)

	type gw struct {
		ns, underlay, tunnel string
		key                  wgtypes.Key
		dev                  *WireGuard
	}
	gws := []*gw{{ns: nsA, underlay: "172.31.0.1", tunnel: "100.64.0.1"}, {ns: nsB, underlay: "172.31.0.2", tunnel: "100.64.0.2"}}
	for i, g := range gws {
		g.key, _ = wgtypes.GeneratePrivateKey()
		name := fmt.Sprintf("wgt%d%s", i, g.ns[len(g.ns)-4:]) // unique on the machine
		// Made on a thread in the gateway's namespace, as a gateway
		// running there would.
		if err := Do(g.ns, func() (err error) {
			g.dev, err = NewWireGuard(name, g.key, 51820, 1420, slog.Default())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g.dev.Close() })
		ip(t, "-n", g.ns, "addr", "add", g.tunnel+"/32", "dev", name)
	}
	for i, g := range gws {
		peer := gws[1-i]
		err := g.dev.SetPeer(peer.key.PublicKey(), netip.MustParseAddrPort(peer.underlay+":51820"), []netip.Prefix{netip.MustParsePrefix(peer.tunnel + "/32")})
		if err != nil {
			t.Fatal(err)
		}
		ip(t, "-n", g.ns, "route", "add", peer.tunnel+"/32", "dev", g.dev.Name)
	}
	if !gws[0].dev.Userspace {
		t.Log("the kernel has a WireGuard module: testing it, not wireguard-go")
	}
	out, err := exec.Command("ip", "netns", "exec", nsA, "ping", "-c", "2", "-W", "2", "100.64.0.2").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "2 received") {
		t.Fatalf("ping across the tunnel: %v\n%s", err, out)
	}
	if pub, err := gws[0].dev.PublicKey(); err != nil || pub != gws[0].key.PublicKey() {
		t.Errorf("wgctrl reports key %v, %v", pub, err)
	}
}

// An IP vWire across two gateways over WireGuard: each workload gets its
// end, each gateway routes the end into its device for the peer gateway;
// the workloads ping each other, and removing the ends leaves the
// gateways' rules and tables as they were.
func TestWireGuardEnds(t *testing.T) {
	e2e.RequireRoot(t, "ping")
	gA, gB := underlay(t)
	wA, wB := namespace(t), namespace(t)
	rulesBefore := ip(t, "-n", gA, "rule", "show")
	type side struct {
		gw, wl, underlay, workload string
		key                        wgtypes.Key
		dev                        *WireGuard
		b                          *Backend
	}
	sides := []*side{{gw: gA, wl: wA, underlay: "172.31.0.1", workload: "172.30.0.1"}, {gw: gB, wl: wB, underlay: "172.31.0.2", workload: "172.30.0.2"}}
	for i, s := range sides {
		s.key, _ = wgtypes.GeneratePrivateKey()
		name := fmt.Sprintf("wge%d%s", i, s.gw[len(s.gw)-4:])
		if err := Do(s.gw, func() (err error) {
			s.dev, err = NewWireGuard(name, s.key, 51820, 1420, slog.Default())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.dev.Close() })
		s.b = backendAt(t, s.gw)
	}
	ends := map[*side]dataplane.End{}
	for i, s := range sides {
		peer := sides[1-i]
		if err := s.dev.SetPeer(peer.key.PublicKey(), netip.MustParseAddrPort(peer.underlay+":51820"),
			[]netip.Prefix{netip.MustParsePrefix(peer.workload + "/32")}); err != nil {
			t.Fatal(err)
		}
		e := dataplane.End{ID: "ip-1", NetNS: s.wl, Interface: "nsm0", MTU: 1420,
			Addrs:     []netip.Prefix{netip.MustParsePrefix(s.workload + "/32")},
			WireGuard: &dataplane.WireGuard{Device: s.dev.Name, Remote: []netip.Prefix{netip.MustParsePrefix(peer.workload + "/32")}}}
		if err := s.b.Apply(context.Background(), e); err != nil {
			t.Fatal(err)
		}
		if err := s.b.Apply(context.Background(), e); err != nil {
			t.Fatalf("second apply: %v", err)
		}
		ends[s] = e
	}
	for _, s := range sides {
		peer := sides[0]
		if s == sides[0] {
			peer = sides[1]
		}
		out, err := exec.Command("ip", "netns", "exec", s.wl, "ping", "-c", "2", "-W", "2", peer.workload).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "2 received") {
			t.Fatalf("ping %s → %s over WireGuard: %v\n%s", s.wl, peer.workload, err, out)
		}
	}
	listed, err := sides[0].b.List(context.Background())
	if err != nil || len(listed) != 1 || listed[0].String() != ends[sides[0]].String() {
		t.Errorf("List: %v, %v\nwant %v", listed, err, ends[sides[0]])
	}
	table, err := sides[0].b.tableOf("ip-1")
	if err != nil || table < tableBase {
		t.Fatalf("end ip-1 has table %d (%v)", table, err)
	}
	if err := sides[0].b.Remove(context.Background(), "ip-1"); err != nil {
		t.Fatal(err)
	}
	if after := ip(t, "-n", gA, "rule", "show"); after != rulesBefore {
		t.Errorf("rules before:\n%s\nafter:\n%s", rulesBefore, after)
	}
	if tbl := ip(t, "-n", gA, "route", "show", "table", fmt.Sprint(table)); tbl != "" {
		t.Errorf("table left: %q", tbl)
	}
}

// Two vWires between the same two gateways share one device per side; the
// endpoint's side learns the client's address from its first handshake;
// each release keeps the device while another vWire uses it.
func TestTunnelsPerPeerGateway(t *testing.T) {
	e2e.RequireRoot(t, "ping")
	p := newGatewayPair(t)
	tA, tB, bA, bB := p.tA, p.tB, p.bA, p.bB
	for i, v := range []struct{ id, a, b string }{{"v1", "172.30.0.1", "172.30.0.2"}, {"v2", "172.30.1.1", "172.30.1.2"}} {
		wA, _ := p.up(v.id, v.a, v.b)
		out, err := exec.Command("ip", "netns", "exec", wA, "ping", "-c", "2", "-W", "2", v.b).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "2 received") {
			t.Fatalf("vWire %d: ping over the shared tunnel: %v\n%s", i+1, err, out)
		}
		if n := len(tA.Devices()); n != 1 {
			t.Errorf("after vWire %d gateway a has %d devices, want one per peer", i+1, n)
		}
		if links := ip(t, "-n", p.gA, "link", "show"); strings.Contains(links, ": we") || strings.Contains(links, ": wf") {
			t.Errorf("IP vWires made the Ethernet TUN and TAP, which only Ethernet vWires need:\n%s", links)
		}
	}
	for _, id := range []string{"v1", "v2"} {
		bA.Remove(context.Background(), id)
		bB.Remove(context.Background(), id)
		tA.Release(id)
		tB.Release(id)
		if id == "v1" && len(tA.Devices()) != 1 {
			t.Error("releasing one vWire removed the tunnel another uses")
		}
	}
	p.noWireGuard("after the last vWire")
}

// A tunnel outlives its last vWire for its grace: the next vWire to the
// same peer gateway finds the device, its port and its session there (no
// new handshake to wait for), an idle peer is allowed no addresses, and
// when the grace passes with no vWire the devices go.
func TestTunnelsGrace(t *testing.T) {
	e2e.RequireRoot(t, "ping")
	p := newGatewayPair(t)
	p.tA.Grace, p.tB.Grace = time.Hour, time.Hour
	down := func(id string) {
		t.Helper()
		for _, b := range []*Backend{p.bA, p.bB} {
			if err := b.Remove(context.Background(), id); err != nil {
				t.Fatal(err)
			}
		}
		if err := errors.Join(p.tA.Release(id), p.tB.Release(id)); err != nil {
			t.Fatal(err)
		}
	}
	ping := func(wA, addr string) {
		t.Helper()
		out, err := exec.Command("ip", "netns", "exec", wA, "ping", "-c", "1", "-w", "4", addr).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "1 received") {
			t.Fatalf("ping %s: %v\n%s", addr, err, out)
		}
	}
	wA, first := p.up("v1", "172.30.0.1", "172.30.0.2")
	ping(wA, "172.30.0.2")
	devices, shook := p.tA.Devices(), p.tA.Handshake("v1")
	down("v1")
	if got := p.tA.Devices(); !slices.Equal(got, devices) || len(p.tB.Devices()) != 1 {
		t.Fatalf("after the last vWire closed, within the grace: devices %v and %v, want %v and one", got, p.tB.Devices(), devices)
	}
	for _, tun := range []*Tunnels{p.tA, p.tB} {
		for key, tn := range tun.peers {
			d, err := tn.dev.wg.Device(tn.dev.Name)
			if err != nil || len(d.Peers) != 1 || len(d.Peers[0].AllowedIPs) != 0 {
				t.Errorf("idle %s: the peer %s is still allowed addresses or gone: %+v, %v", tn.dev.Name, key, d, err)
			}
		}
	}
	wA, second := p.up("v2", "172.30.1.1", "172.30.1.2")
	if second != first {
		t.Errorf("the second vWire got a new device on b (port %d, was %d)", second, first)
	}
	if at := p.tA.Handshake("v2"); !at.Equal(shook) {
		t.Errorf("the second vWire needed a new handshake (%v, the first's %v)", at, shook)
	}
	ping(wA, "172.30.1.2")
	p.tA.Grace, p.tB.Grace = 50*time.Millisecond, 50*time.Millisecond
	down("v2")
	for deadline := time.Now().Add(10 * time.Second); len(p.tA.Devices())+len(p.tB.Devices()) > 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	p.noWireGuard("after the grace")
}

// A routed end's halves know each other's hardware address for good: the
// kernel's neighbour tables, shared by every namespace, refuse learnt
// entries past 1,024, which a host with some 500 vWires would reach (seen
// as most vWires of a thousand going dark).
func TestRoutedEndNeighbours(t *testing.T) {
	e2e.RequireRoot(t, "ping")
	p := newGatewayPair(t)
	wA, _ := p.up("v1", "172.30.0.1", "172.30.0.2")
	if out := ip(t, "-n", wA, "neigh", "show", "169.254.0.1"); !strings.Contains(out, "PERMANENT") {
		t.Errorf("the workload's next hop is not a permanent neighbour: %q", out)
	}
	if out := ip(t, "-n", p.gA, "neigh", "show", "172.30.0.1"); !strings.Contains(out, "PERMANENT") {
		t.Errorf("the workload's address is not a permanent neighbour of the gateway half: %q", out)
	}
	out, err := exec.Command("ip", "netns", "exec", wA, "ping", "-c", "1", "-w", "4", "172.30.0.2").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "1 received") {
		t.Fatalf("ping: %v\n%s", err, out)
	}
	if out := ip(t, "-4", "-n", wA, "neigh", "show", "nud", "all"); strings.Count(out, "\n") != 1 {
		t.Errorf("the workload learnt neighbours besides its permanent one:\n%s", out)
	}
}

// Each end gets a routing table of its own. These two ids once hashed to
// one table: removing either end took the other's rule and routes with
// it, and the other vWire went dark.
func TestEndTablesDoNotCollide(t *testing.T) {
	e2e.RequireRoot(t, "ping")
	p := newGatewayPair(t)
	ends := []struct{ id, a, b string }{{"c-t20018", "172.30.0.1", "172.30.0.2"}, {"c-t59303", "172.30.1.1", "172.30.1.2"}}
	var wA []string
	tables := map[int]bool{}
	for _, e := range ends {
		w, _ := p.up(e.id, e.a, e.b)
		wA = append(wA, w)
		table, err := p.bA.tableOf(e.id)
		if err != nil || table == 0 {
			t.Fatalf("end %s has no table (%v)", e.id, err)
		}
		tables[table] = true
	}
	if len(tables) != 2 {
		t.Fatalf("two ends share a routing table: %v", tables)
	}
	// Applied again as List reports them (as a restarted gateway does),
	// the ends keep their rules: none doubled, none lost.
	rules := ip(t, "-n", p.gA, "rule", "show")
	listed, err := p.bA.List(context.Background())
	if err != nil || len(listed) != 2 {
		t.Fatalf("List: %v, %v", listed, err)
	}
	for _, e := range listed {
		if err := p.bA.Apply(context.Background(), e); err != nil {
			t.Fatalf("applying %s again: %v", e.ID, err)
		}
	}
	if again := ip(t, "-n", p.gA, "rule", "show"); again != rules {
		t.Errorf("rules after applying the ends again:\n%s\nbefore:\n%s", again, rules)
	}
	for _, b := range []*Backend{p.bA, p.bB} {
		if err := b.Remove(context.Background(), ends[0].id); err != nil {
			t.Fatal(err)
		}
	}
	p.tA.Release(ends[0].id)
	p.tB.Release(ends[0].id)
	out, err := exec.Command("ip", "netns", "exec", wA[1], "ping", "-c", "1", "-w", "4", ends[1].b).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "1 received") {
		t.Fatalf("the other end's vWire after the first was removed: %v\n%s", err, out)
	}
	for _, b := range []*Backend{p.bA, p.bB} {
		b.Remove(context.Background(), ends[1].id)
	}
}

// IPv6 workloads over an IPv4 underlay: the far addresses are allowed IPs
// and routes like IPv4 ones, the workloads reach each other at once (no
// duplicate address detection holds their addresses back), and List
// reports the ends as they were applied.
func TestWireGuardIPv6(t *testing.T) {
	e2e.RequireRoot(t, "ping")
	p := newGatewayPair(t)
	wA, _ := p.up("v6", "fd00:30::1", "fd00:30::2")
	out, err := exec.Command("ip", "netns", "exec", wA, "ping", "-c", "2", "-W", "2", "fd00:30::2").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "2 received") {
		t.Fatalf("ping over WireGuard, IPv6: %v\n%s", err, out)
	}
	listed, err := p.bA.List(context.Background())
	if err != nil || len(listed) != 1 || listed[0].WireGuard == nil || fmt.Sprint(listed[0].Addrs, listed[0].WireGuard.Remote) != "[fd00:30::1/128] [fd00:30::2/128]" {
		t.Errorf("List: %v, %v", listed, err)
	}
	for _, b := range []*Backend{p.bA, p.bB} {
		if err := b.Remove(context.Background(), "v6"); err != nil {
			t.Error(err)
		}
	}
	for _, ns := range []string{p.gA, p.gB} {
		if rules := ip(t, "-n", ns, "-6", "rule", "show"); strings.Contains(rules, "iif vw") {
			t.Errorf("an IPv6 rule left in %s:\n%s", ns, rules)
		}
	}
}

// The endpoint's gateway drops its device for a peer (its last vWire to it
// closed) while the client's gateway keeps its own (another vWire still
// uses it); the next vWire gets a new device there, on another port. The
// client's side must not go on with the session the peer no longer has:
// WireGuard would notice only after 15 s of unanswered traffic.
func TestTunnelsPeerDeviceRenewed(t *testing.T) {
	e2e.RequireRoot(t, "ping")
	p := newGatewayPair(t)
	tB, bA, bB := p.tB, p.bA, p.bB
	up := func(id, a, b string) (portB int) {
		t.Helper()
		wA, portB := p.up(id, a, b)
		// One reply within 4 s (a handshake takes milliseconds; a stale
		// session is noticed after 15).
		out, err := exec.Command("ip", "netns", "exec", wA, "ping", "-c", "1", "-w", "4", b).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "1 received") {
			t.Fatalf("vWire %s: ping: %v\n%s", id, err, out)
		}
		return portB
	}
	first := up("v1", "172.30.0.1", "172.30.0.2")
	// b's side of v1 goes; a keeps v1 (its close has not reached it yet).
	bB.Remove(context.Background(), "v1")
	tB.Release("v1")
	if len(tB.Devices()) != 0 {
		t.Fatalf("b kept its device: %v", tB.Devices())
	}
	// Hold the old port, so that b's new device surely gets another (the
	// kernel could hand the same one out again).
	var held net.PacketConn
	err := Do(p.gB, func() (err error) {
		held, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", first))
		return err
	})
	if err != nil {
		t.Fatalf("holding b's old port %d: %v", first, err)
	}
	defer held.Close()
	if second := up("v2", "172.30.1.1", "172.30.1.2"); second == first {
		t.Fatalf("b's new device has the port of the old one (%d), which is held", first)
	}
	bA.Remove(context.Background(), "v1")
	bA.Remove(context.Background(), "v2")
	bB.Remove(context.Background(), "v2")
}

// A restarted gateway asks for the port its device had; if something else
// holds it now, the device takes another (the peer learns it from the next
// handshake) rather than failing the vWire.
func TestTunnelsPortTaken(t *testing.T) {
	e2e.RequireRoot(t)
	ns := namespace(t)
	key, _ := wgtypes.GeneratePrivateKey()
	peer, _ := wgtypes.GeneratePrivateKey()
	tun := NewTunnels(key, 1420, slog.New(slog.DiscardHandler))
	defer tun.Close()
	var held net.PacketConn
	if err := Do(ns, func() (err error) { held, err = net.ListenPacket("udp4", ":0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	taken := held.LocalAddr().(*net.UDPAddr).Port
	err := Do(ns, func() error {
		if w, err := NewWireGuard("wgtaken0", key, taken, 1420, slog.New(slog.DiscardHandler)); err == nil {
			w.Close()
			return fmt.Errorf("a device bound port %d, which a socket holds", taken)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var dev string
	var port int
	err = Do(ns, func() (err error) {
		dev, port, err = tun.Use("v1", peer.PublicKey(), netip.AddrPort{}, false, []netip.Prefix{netip.MustParsePrefix("172.30.0.2/32")}, taken)
		return err
	})
	if err != nil {
		t.Fatalf("the device did not take another port: %v", err)
	}
	if port == taken || port == 0 {
		t.Errorf("%s listens on %d; %d is taken", dev, port, taken)
	}
}

// gatewayPair is two gateways (namespaces joined by a veth, 172.31.0.1 and
// .2) with their tunnels and backends.
type gatewayPair struct {
	t          *testing.T
	gA, gB     string
	keyA, keyB wgtypes.Key
	tA, tB     *Tunnels
	bA, bB     *Backend
}

func newGatewayPair(t *testing.T) *gatewayPair {
	p := &gatewayPair{t: t}
	p.gA, p.gB = underlay(t)
	p.keyA, _ = wgtypes.GeneratePrivateKey()
	p.keyB, _ = wgtypes.GeneratePrivateKey()
	p.tA, p.tB = NewTunnels(p.keyA, 1420, slog.Default()), NewTunnels(p.keyB, 1420, slog.Default())
	t.Cleanup(func() { p.tA.Close(); p.tB.Close() })
	p.bA, p.bB = backendAt(t, p.gA), backendAt(t, p.gB)
	return p
}

// noWireGuard checks that neither gateway keeps a WireGuard device, in its
// tunnels or in its namespace.
func (p *gatewayPair) noWireGuard(when string) {
	p.t.Helper()
	if len(p.tA.Devices())+len(p.tB.Devices()) != 0 {
		p.t.Errorf("%s, devices left: %v %v", when, p.tA.Devices(), p.tB.Devices())
	}
	for _, ns := range []string{p.gA, p.gB} {
		if out := ip(p.t, "-n", ns, "link", "show"); strings.Contains(out, " wg") {
			p.t.Errorf("%s, a WireGuard device left in %s:\n%s", when, ns, out)
		}
	}
}

// up programs vWire id between a workload namespace behind each gateway,
// a (behind a) to b, the endpoint's gateway b first (it does not know the
// client's port); it returns a's workload namespace and b's device port.
func (p *gatewayPair) up(id, a, b string) (wA string, portB int) {
	t := p.t
	t.Helper()
	pfx := func(s string) []netip.Prefix {
		a := netip.MustParseAddr(s)
		return []netip.Prefix{netip.PrefixFrom(a, a.BitLen())}
	}
	wA, wB := namespace(t), namespace(t)
	var devA, devB string
	var err error
	err = Do(p.gB, func() (err error) {
		devB, portB, err = p.tB.Use(id, p.keyA.PublicKey(), netip.AddrPort{}, false, pfx(a), 0)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	err = Do(p.gA, func() (err error) {
		devA, _, err = p.tA.Use(id, p.keyB.PublicKey(), netip.AddrPortFrom(netip.MustParseAddr("172.31.0.2"), uint16(portB)), false, pfx(b), 0)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.bA.Apply(context.Background(), dataplane.End{ID: id, NetNS: wA, MTU: 1420, Addrs: pfx(a), WireGuard: &dataplane.WireGuard{Device: devA, Remote: pfx(b)}}); err != nil {
		t.Fatal(err)
	}
	if err := p.bB.Apply(context.Background(), dataplane.End{ID: id, NetNS: wB, MTU: 1420, Addrs: pfx(b), WireGuard: &dataplane.WireGuard{Device: devB, Remote: pfx(a)}}); err != nil {
		t.Fatal(err)
	}
	return wA, portB
}

// Each peer gateway key a vWire names is a device: the keys come from peer
// domains, so the devices are bounded; past the bound a vWire is refused
// and no device is made, and a released one makes room again (the idle
// tunnel goes before its grace is over).
func TestTunnelsBounded(t *testing.T) {
	e2e.RequireRoot(t)
	gw := namespace(t)
	key, _ := wgtypes.GeneratePrivateKey()
	tun := NewTunnels(key, 1420, slog.Default())
	tun.Max, tun.Grace = 2, time.Hour
	t.Cleanup(tun.Close)
	use := func(id string) error {
		peer, _ := wgtypes.GeneratePrivateKey()
		return Do(gw, func() error {
			_, _, err := tun.Use(id, peer.PublicKey(), netip.AddrPort{}, false, []netip.Prefix{netip.MustParsePrefix("172.30.0.1/32")}, 0)
			return err
		})
	}
	for _, id := range []string{"v1", "v2"} {
		if err := use(id); err != nil {
			t.Fatal(err)
		}
	}
	if err := use("v3"); err == nil || !strings.Contains(err.Error(), "keeps tunnels to 2 peer gateways already") {
		t.Errorf("a third peer gateway: %v", err)
	}
	if n := strings.Count(ip(t, "-n", gw, "link", "show"), ": wg"); n != 2 || len(tun.Devices()) != 2 {
		t.Errorf("%d devices in the namespace, %d kept; want 2", n, len(tun.Devices()))
	}
	if err := tun.Release("v1"); err != nil {
		t.Fatal(err)
	}
	if err := use("v3"); err != nil {
		t.Errorf("a released tunnel makes room: %v", err)
	}
	if n := strings.Count(ip(t, "-n", gw, "link", "show"), ": wg"); n != 2 || len(tun.Devices()) != 2 {
		t.Errorf("%d devices in the namespace, %d kept; want 2 (the idle one gone)", n, len(tun.Devices()))
	}
}

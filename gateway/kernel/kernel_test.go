package kernel

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/gateway/dataplane"
)

// namespace creates a throw-away network namespace and removes it after.
func namespace(t testing.TB) string {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	name := "vwt-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	return name
}

func ip(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %v: %v: %s", args, err, out)
	}
	return string(out)
}

// hostLinks are the names of the links in the gateway's namespace.
func hostLinks(t *testing.T, gw string) []string {
	var links []struct{ Ifname string }
	if err := json.Unmarshal([]byte(ip(t, "-n", gw, "-j", "link", "show")), &links); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Ifname)
	}
	slices.Sort(names)
	return names
}

// sockets opens network namespace ns, a dumpSocket and a netlink handle
// in it, all closed when tb ends.
func sockets(tb testing.TB, ns string) (netns.NsHandle, *nl.SocketHandle, *netlink.Handle) {
	tb.Helper()
	in, err := openIn(ns)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(in.Close)
	return in.nsh, in.dumps, in.h
}

// backend is a gateway's backend in a namespace of its own (so that tests
// running at once on one machine never meet) and that namespace.
// underlay makes two gateway namespaces joined by a veth, as two hosts on
// one network: 172.31.0.1 and 172.31.0.2, forwarding IPv4 and IPv6.
func underlay(t *testing.T) (gA, gB string) {
	t.Helper()
	gA, gB = namespace(t), namespace(t)
	ip(t, "link", "add", "vwt-ua", "netns", gA, "type", "veth", "peer", "name", "vwt-ub", "netns", gB)
	for _, g := range []struct{ ns, dev, addr string }{{gA, "vwt-ua", "172.31.0.1/30"}, {gB, "vwt-ub", "172.31.0.2/30"}} {
		ip(t, "-n", g.ns, "addr", "add", g.addr, "dev", g.dev)
		ip(t, "-n", g.ns, "link", "set", g.dev, "up")
		if out, err := exec.Command("ip", "netns", "exec", g.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1").CombinedOutput(); err != nil {
			t.Fatalf("ip_forward in %s: %v %s", g.ns, err, out)
		}
	}
	return gA, gB
}

func backend(t *testing.T) (*Backend, string) {
	t.Helper()
	gw := namespace(t)
	return backendAt(t, gw), gw
}

// backendAt is a backend for the gateway namespace gw, closed after the test.
func backendAt(t testing.TB, gw string) *Backend {
	t.Helper()
	b, err := NewAt(gw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestInjectConfigureRemove(t *testing.T) {
	e2e.RequireRoot(t)
	ns := namespace(t)
	b, gw := backend(t)
	before := hostLinks(t, gw)
	end := dataplane.End{
		ID: "conn-1", NetNS: ns, Interface: "nsm0", MTU: 1420,
		Addrs:  []netip.Prefix{netip.MustParsePrefix("172.31.255.1/31")},
		Routes: []dataplane.Route{{Prefix: netip.MustParsePrefix("172.31.254.0/24"), Via: netip.MustParseAddr("172.31.255.0")}},
	}
	if err := b.Apply(context.Background(), end); err != nil {
		t.Fatal(err)
	}
	show := ip(t, "-n", ns, "addr", "show", "nsm0")
	if !strings.Contains(show, "inet 172.31.255.1/31") || !strings.Contains(show, "mtu 1420") || !strings.Contains(show, "UP") {
		t.Errorf("nsm0 in %s:\n%s", ns, show)
	}
	if r := ip(t, "-n", ns, "route", "show", "172.31.254.0/24"); !strings.Contains(r, "via 172.31.255.0 dev nsm0") {
		t.Errorf("route: %q", r)
	}
	// Applying again changes nothing; a changed end is brought to it.
	if err := b.Apply(context.Background(), end); err != nil {
		t.Fatalf("second apply: %v", err)
	}
	end.Addrs = []netip.Prefix{netip.MustParsePrefix("172.31.255.3/31")}
	end.Routes = nil
	end.MTU = 1380
	if err := b.Apply(context.Background(), end); err != nil {
		t.Fatal(err)
	}
	show = ip(t, "-n", ns, "addr", "show", "nsm0")
	if strings.Contains(show, "172.31.255.1/") || !strings.Contains(show, "172.31.255.3/31") || !strings.Contains(show, "mtu 1380") {
		t.Errorf("after the change:\n%s", show)
	}
	if r := ip(t, "-n", ns, "route", "show", "172.31.254.0/24"); r != "" {
		t.Errorf("a route left over: %q", r)
	}
	// List finds it as applied, as after a restart (a new backend).
	again, err := NewAt(gw)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	listed, err := again.List(context.Background())
	if err != nil || len(listed) != 1 || listed[0].String() != end.String() {
		t.Fatalf("List: %v, %v\nwant %v", listed, err, end)
	}
	if err := b.Remove(context.Background(), end.ID); err != nil {
		t.Fatal(err)
	}
	if err := b.Remove(context.Background(), end.ID); err != nil {
		t.Errorf("removing an end that is going: %v", err)
	}
	b.settle()
	if err := b.Remove(context.Background(), end.ID); err != nil {
		t.Errorf("removing a missing end: %v", err)
	}
	if after := hostLinks(t, gw); !slices.Equal(before, after) {
		t.Errorf("links before %v, after %v", before, after)
	}
	if out, _ := exec.Command("ip", "-n", ns, "link", "show", "nsm0").CombinedOutput(); !strings.Contains(string(out), "does not exist") {
		t.Errorf("nsm0 left in the namespace: %s", out)
	}
}

// Bad input gets a clear error and leaves nothing behind.
func TestApplyRefusals(t *testing.T) {
	e2e.RequireRoot(t)
	ns := namespace(t)
	b, gw := backend(t)
	ip(t, "-n", ns, "link", "add", "nsm0", "type", "veth", "peer", "name", "other0")
	before := hostLinks(t, gw)
	for _, tc := range []struct {
		end  dataplane.End
		want string
	}{
		{dataplane.End{ID: "c1", NetNS: "vwt-does-not-exist"}, `network namespace "vwt-does-not-exist"`},
		{dataplane.End{ID: "c2", NetNS: ns, Interface: "nsm0"}, `interface "nsm0" already exists in network namespace`},
		{dataplane.End{ID: "c3", NetNS: ns, Interface: "an-interface-name-too-long"}, "at most 15 characters"},
		{dataplane.End{ID: "c5", NetNS: ns, Interface: "a/b"}, "without '/'"},
		{dataplane.End{ID: "c6", NetNS: ns, Interface: ".."}, `not "." or ".."`},
		{dataplane.End{ID: "c4", NetNS: ns, Interface: "nsm1", Addrs: []netip.Prefix{netip.MustParsePrefix("172.31.255.1/31")},
			Routes: []dataplane.Route{{Prefix: netip.MustParsePrefix("172.31.254.0/24"), Via: netip.MustParseAddr("192.0.2.1")}}}, "routes of nsm1"},
	} {
		err := b.Apply(context.Background(), tc.end)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.end, err, tc.want)
		}
	}
	if after := hostLinks(t, gw); !slices.Equal(before, after) {
		t.Errorf("a refused apply left links: before %v, after %v", before, after)
	}
	if out := ip(t, "-n", ns, "link", "show"); strings.Contains(out, "nsm1") {
		t.Errorf("a refused apply left nsm1 in the namespace:\n%s", out)
	}
}

// An end whose workload half vanished (the namespace was recreated) is
// made again by the next Apply.
func TestApplyRepairsAVanishedHalf(t *testing.T) {
	e2e.RequireRoot(t)
	ns := namespace(t)
	b, _ := backend(t)
	end := dataplane.End{ID: "conn-r", NetNS: ns, Interface: "nsm0", MTU: 1400, Addrs: []netip.Prefix{netip.MustParsePrefix("172.31.255.5/31")}}
	repaired := func(what string) {
		t.Helper()
		if err := b.Apply(context.Background(), end); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if show := ip(t, "-n", ns, "addr", "show", "nsm0"); !strings.Contains(show, "172.31.255.5/31") {
			t.Errorf("%s: not repaired:\n%s", what, show)
		}
	}
	if err := b.Apply(context.Background(), end); err != nil {
		t.Fatal(err)
	}
	// The workload's half leaves its namespace; the gateway's half stays.
	elsewhere := namespace(t)
	ip(t, "-n", ns, "link", "set", "nsm0", "netns", elsewhere)
	listed, err := b.List(context.Background())
	if err != nil || len(listed) != 1 || listed[0].Interface != "" {
		t.Fatalf("List with the workload half gone: %v, %v (want the end without an interface)", listed, err)
	}
	repaired("after the workload half left")

	// The pair dies whole (the namespace was recreated).
	ip(t, "-n", ns, "link", "del", "nsm0")
	ip(t, "netns", "del", ns)
	ip(t, "netns", "add", ns)
	if listed, _ := b.List(context.Background()); len(listed) != 0 {
		t.Fatalf("List after the pair died: %v", listed)
	}
	repaired("after the pair died")
	b.Remove(context.Background(), end.ID)
}

// Remove leaves a veth end's links to the kernel to delete in the
// background: a new end that wants what they hold (the same id; the same
// interface name and addresses in the same namespace; a route to the same
// place there) waits for them and then has it, and the gateway's
// namespace is as before once they are gone.
func TestRemoveInTheBackground(t *testing.T) {
	e2e.RequireRoot(t)
	ns := namespace(t)
	b, gw := backend(t)
	before := hostLinks(t, gw)
	end := dataplane.End{ID: "bg-1", NetNS: ns, Interface: "nsm0", Addrs: []netip.Prefix{netip.MustParsePrefix("172.31.250.1/31")},
		Routes: []dataplane.Route{{Prefix: netip.MustParsePrefix("172.31.249.0/24"), Via: netip.MustParseAddr("172.31.250.0")}}}
	other := end
	other.ID = "bg-2"
	routed := dataplane.End{ID: "bg-3", NetNS: ns, Interface: "nsm1", Addrs: []netip.Prefix{netip.MustParsePrefix("172.31.251.1/31")},
		Routes: []dataplane.Route{{Prefix: netip.MustParsePrefix("172.31.249.0/24"), Via: netip.MustParseAddr("172.31.251.0")}}}
	for _, next := range []dataplane.End{end, other, routed} {
		if err := b.Apply(context.Background(), end); err != nil {
			t.Fatal(err)
		}
		if err := b.Remove(context.Background(), end.ID); err != nil {
			t.Fatal(err)
		}
		b.mu.Lock()
		going := b.removing[end.ID] != nil
		b.mu.Unlock()
		if !going {
			t.Fatal("Remove waited for the kernel to delete the links")
		}
		if err := b.Apply(context.Background(), next); err != nil {
			t.Fatalf("applying %s right after: %v", next.ID, err)
		}
		show := ip(t, "-n", ns, "addr", "show", next.Interface)
		if !strings.Contains(show, next.Addrs[0].String()) || !strings.Contains(show, "UP") {
			t.Errorf("%s:\n%s", next.ID, show)
		}
		if err := b.Remove(context.Background(), next.ID); err != nil {
			t.Fatal(err)
		}
	}
	b.settle()
	if after := hostLinks(t, gw); !slices.Equal(before, after) {
		t.Errorf("links before %v, after %v", before, after)
	}
	if out, _ := exec.Command("ip", "-n", ns, "link", "show", "nsm0").CombinedOutput(); !strings.Contains(string(out), "does not exist") {
		t.Errorf("nsm0 left in the namespace: %s", out)
	}
}

// An Ethernet vWire: two gateways (each in its namespace, joined by a
// veth as by a network) carry two workloads' ends over VXLAN; the
// workloads ping each other and see each other's MAC address.
// sameLink checks that the workload in namespace from reaches addr, the
// nsm0 of namespace to, on one Ethernet link: it pings it and has learnt
// its MAC address.
func sameLink(t *testing.T, from, to, addr string) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", from, "ping", "-c", "2", "-W", "2", addr).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "2 received") {
		t.Fatalf("ping %s from %s: %v\n%s", addr, from, err, out)
	}
	var links []struct{ Address string }
	json.Unmarshal([]byte(ip(t, "-n", to, "-j", "link", "show", "nsm0")), &links)
	if neigh := ip(t, "-n", from, "neigh", "show", addr); len(links) != 1 || !strings.Contains(neigh, links[0].Address) {
		t.Errorf("%s does not see the MAC of %s's nsm0 %v: %q", from, to, links, neigh)
	}
}

func TestVXLANEnds(t *testing.T) {
	e2e.RequireRoot(t, "ping")
	gA, gB := underlay(t)
	wA, wB := namespace(t), namespace(t)
	bA, bB := backendAt(t, gA), backendAt(t, gB)
	ends := []struct {
		b   *Backend
		end dataplane.End
	}{
		{bA, dataplane.End{ID: "l2", NetNS: wA, Interface: "nsm0", MTU: 1450, Addrs: []netip.Prefix{netip.MustParsePrefix("172.31.100.1/24")},
			VXLAN: &dataplane.VXLAN{VNI: 100, Local: netip.MustParseAddr("172.31.0.1"), Remote: netip.MustParseAddr("172.31.0.2")}}},
		{bB, dataplane.End{ID: "l2", NetNS: wB, Interface: "nsm0", MTU: 1450, Addrs: []netip.Prefix{netip.MustParsePrefix("172.31.100.2/24")},
			VXLAN: &dataplane.VXLAN{VNI: 100, Local: netip.MustParseAddr("172.31.0.2"), Remote: netip.MustParseAddr("172.31.0.1")}}},
	}
	for _, e := range ends {
		if err := e.b.Apply(context.Background(), e.end); err != nil {
			t.Fatal(err)
		}
		if err := e.b.Apply(context.Background(), e.end); err != nil {
			t.Fatalf("second apply: %v", err)
		}
	}
	sameLink(t, wA, wB, "172.31.100.2")
	listed, err := bA.List(context.Background())
	if err != nil || len(listed) != 1 || listed[0].String() != ends[0].end.String() {
		t.Errorf("List: %v, %v\nwant %v", listed, err, ends[0].end)
	}
	for _, e := range ends {
		if err := e.b.Remove(context.Background(), "l2"); err != nil {
			t.Fatal(err)
		}
	}
	for _, ns := range []string{gA, gB} {
		out := ip(t, "-n", ns, "link", "show")
		for _, name := range []string{hostName("l2"), vxlanName("l2"), bridgeName("l2")} {
			if strings.Contains(out, name) {
				t.Errorf("%s left in %s:\n%s", name, ns, out)
			}
		}
	}
	for _, ns := range []string{wA, wB} {
		if out := ip(t, "-n", ns, "link", "show"); strings.Contains(out, "nsm0") {
			t.Errorf("the workload's interface is left in %s:\n%s", ns, out)
		}
	}
}

// A VXLAN end's workload interface is the VXLAN device itself (no veth or
// bridge between the workload and the tunnel); an end whose tunnel changed
// (another VNI) is made again with it.
func TestVXLANEndIsTheDevice(t *testing.T) {
	e2e.RequireRoot(t)
	b, gw := backend(t)
	w := namespace(t)
	before := hostLinks(t, gw)
	e := dataplane.End{ID: "l2", NetNS: w, Interface: "nsm0", MTU: 1450, Addrs: []netip.Prefix{netip.MustParsePrefix("172.31.100.1/31")},
		VXLAN: &dataplane.VXLAN{VNI: 100, Local: netip.MustParseAddr("172.31.0.1"), Remote: netip.MustParseAddr("172.31.0.2")}}
	ctx := context.Background()
	for _, vni := range []uint32{100, 100, 101} {
		e.VXLAN.VNI = vni
		if err := b.Apply(ctx, e); err != nil {
			t.Fatal(err)
		}
		var links []struct {
			Linkinfo struct {
				InfoKind string              `json:"info_kind"`
				InfoData struct{ ID uint32 } `json:"info_data"`
			}
		}
		json.Unmarshal([]byte(ip(t, "-n", w, "-d", "-j", "link", "show", "nsm0")), &links)
		if len(links) != 1 || links[0].Linkinfo.InfoKind != "vxlan" || links[0].Linkinfo.InfoData.ID != vni {
			t.Errorf("nsm0 is %+v, want the VXLAN device of VNI %d", links, vni)
		}
		if listed, err := b.List(ctx); err != nil || len(listed) != 1 || listed[0].String() != e.String() {
			t.Errorf("List: %v, %v\nwant %v", listed, err, e)
		}
	}
	if err := b.Remove(ctx, "l2"); err != nil {
		t.Fatal(err)
	}
	b.settle()
	if got := hostLinks(t, gw); !slices.Equal(got, before) {
		t.Errorf("after Remove: %v, before: %v", got, before)
	}
}

// Two workloads of one gateway on one Ethernet link: the endpoint's end
// keeps a bridge, the client's joins it (also when it is applied first, as
// after a restart: it fails until the bridge is there); they see each
// other's MAC; List reports both as applied; removing both leaves the
// gateway as it was.
func TestBridgedEnds(t *testing.T) {
	e2e.RequireRoot(t, "ping")
	b, gw := backend(t)
	before := hostLinks(t, gw)
	wC, wE := namespace(t), namespace(t)
	client := dataplane.End{ID: "c-l2", NetNS: wC, Interface: "nsm0", MTU: 1500, Addrs: []netip.Prefix{netip.MustParsePrefix("172.31.101.0/31")}, Bridge: "e-l2"}
	endpoint := dataplane.End{ID: "e-l2", NetNS: wE, Interface: "nsm0", MTU: 1500, Addrs: []netip.Prefix{netip.MustParsePrefix("172.31.101.1/31")}, Bridge: "e-l2"}
	ctx := context.Background()
	if err := b.Apply(ctx, client); err == nil || !strings.Contains(err.Error(), `the bridge of end "e-l2"`) {
		t.Errorf("client's end before the endpoint's: %v", err)
	}
	if got := hostLinks(t, gw); !slices.Equal(got, before) {
		t.Errorf("a refused end left %v (before: %v)", got, before)
	}
	for _, e := range []dataplane.End{endpoint, client, client} {
		if err := b.Apply(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	sameLink(t, wC, wE, "172.31.101.1")
	listed, err := b.List(ctx)
	var got []string
	for _, e := range listed {
		got = append(got, e.String())
	}
	slices.Sort(got)
	if want := []string{client.String(), endpoint.String()}; err != nil || !slices.Equal(got, want) {
		t.Errorf("List: %v, %v\nwant %v", got, err, want)
	}
	for _, id := range []string{"e-l2", "c-l2"} {
		if err := b.Remove(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if got := hostLinks(t, gw); !slices.Equal(got, before) {
		t.Errorf("after removing both ends: %v, before: %v", got, before)
	}
}

// A dump that concurrent changes interrupt is read again, not taken as a
// failed change (at a thousand vWires changing at once, many are); one
// interrupted every time still fails, saying so.
func TestDumpRetriesInterrupted(t *testing.T) {
	tries := 0
	got, err := dump(func() ([]int, error) {
		tries++
		if tries < 3 {
			return []int{1}, netlink.ErrDumpInterrupted
		}
		return []int{1, 2}, nil
	})
	if err != nil || len(got) != 2 || tries != 3 {
		t.Errorf("after two interrupted dumps: %v, %v, %d tries", got, err, tries)
	}
	_, err = dump(func() ([]int, error) { return nil, netlink.ErrDumpInterrupted })
	if !errors.Is(err, netlink.ErrDumpInterrupted) {
		t.Errorf("a dump interrupted every time: %v", err)
	}
}

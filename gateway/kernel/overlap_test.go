package kernel

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/gateway/dataplane"
)

// state is what a user would compare before and after: a namespace's
// addresses, main and policy routes.
// (IPv6 link-local ones come and go with links by themselves.)
func state(t *testing.T, ns string) string {
	var v6 []string
	for _, l := range strings.Split(ip(t, "-n", ns, "-6", "route"), "\n") {
		if !strings.HasPrefix(l, "fe80:") {
			v6 = append(v6, l)
		}
	}
	return ip(t, "-n", ns, "-o", "-4", "addr") + ip(t, "-n", ns, "route") + strings.Join(v6, "\n") + ip(t, "-n", ns, "rule")
}

// An end's addresses and routes come from the other side of a vWire. Those
// that would take over a route or address the workload or the gateway
// already has are refused, and nothing is programmed; routes the workload
// accepted go in beside its own, which are there as before when the end
// goes.
func TestEndCannotTakeOverRoutes(t *testing.T) {
	e2e.RequireRoot(t, "ping")
	b, gw := backend(t)
	wl := namespace(t)
	// The workload's own network, with its default route; the gateway's
	// network with a route of its own (to its DNS server, say).
	ip(t, "link", "add", "vwt-w0", "netns", wl, "type", "veth", "peer", "name", "vwt-g0", "netns", gw)
	ip(t, "-n", wl, "addr", "add", "10.99.0.5/24", "dev", "vwt-w0")
	ip(t, "-n", wl, "link", "set", "vwt-w0", "up")
	ip(t, "-n", wl, "route", "add", "default", "via", "10.99.0.1")
	ip(t, "-n", gw, "addr", "add", "10.98.0.1/30", "dev", "vwt-g0")
	ip(t, "-n", gw, "link", "set", "vwt-g0", "up")
	ip(t, "-n", gw, "route", "add", "192.0.2.53/32", "via", "10.98.0.2")
	before := map[string]string{wl: state(t, wl), gw: state(t, gw)}
	unchanged := func(what string) {
		t.Helper()
		for ns, want := range before {
			if got := state(t, ns); got != want {
				t.Errorf("%s changed %s:\nbefore\n%s\nafter\n%s", what, ns, want, got)
			}
		}
	}
	pfx := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	routed := func(id string, addrs, far, accept []netip.Prefix) dataplane.End {
		return dataplane.End{ID: id, NetNS: wl, Interface: "nsm0", MTU: 1400, Addrs: addrs, Routed: far, Accept: accept}
	}
	for _, tc := range []struct {
		name string
		end  dataplane.End
		want string
	}{
		{"an address in the workload's subnet", routed("x1", pfx("10.99.0.7/32"), pfx("172.30.0.2/32"), nil),
			`address 10.99.0.7/32 overlaps address 10.99.0.5/24 on vwt-w0 in network namespace`},
		{"the far side in the workload's subnet", routed("x2", pfx("172.30.0.1/32"), pfx("10.99.0.1/32"), nil),
			`route 10.99.0.1/32 overlaps address 10.99.0.5/24 on vwt-w0`},
		{"the workload's own subnet as a route, even accepted", routed("x3", pfx("172.30.0.1/32"), pfx("10.99.0.0/24"), pfx("10.0.0.0/8")),
			`route 10.99.0.0/24 is already held in network namespace`},
		{"a wide route not accepted", routed("x4", pfx("172.30.0.1/32"), pfx("10.0.0.0/8"), nil),
			`route 10.0.0.0/8 overlaps`},
		{"the gateway's route to its DNS server", routed("x5", pfx("192.0.2.53/32"), pfx("172.30.0.2/32"), nil),
			`address 192.0.2.53 is already held on the gateway by route 192.0.2.53/32 on vwt-g0`},
		{"the gateway's own network", routed("x6", pfx("10.98.0.2/32"), pfx("172.30.0.2/32"), nil),
			`address 10.98.0.2 overlaps address 10.98.0.1/30 on vwt-g0 on the gateway`},
	} {
		err := b.Apply(context.Background(), tc.end)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
		unchanged(tc.name)
	}

	// A default route the workload accepted: in as its two halves, beside
	// the workload's own default route.
	end := routed("ok1", pfx("172.30.0.1/32"), pfx("0.0.0.0/1", "128.0.0.0/1"), pfx("0.0.0.0/0"))
	if err := b.Apply(context.Background(), end); err != nil {
		t.Fatal(err)
	}
	if r := ip(t, "-n", wl, "route", "show", "default"); !strings.Contains(r, "via 10.99.0.1 dev vwt-w0") {
		t.Errorf("the workload's default route after an accepted default route: %q", r)
	}
	if r := ip(t, "-n", wl, "route", "show", "0.0.0.0/1"); !strings.Contains(r, "dev nsm0") {
		t.Errorf("the accepted default route's half: %q", r)
	}
	// A second end may not take the first one's address on the gateway.
	if err := b.Apply(context.Background(), routed("ok2", pfx("172.30.0.1/32"), pfx("172.30.9.9/32"), nil)); err == nil ||
		!strings.Contains(err.Error(), "(vWire end ok1)") {
		t.Errorf("a second end with the first's address: %v", err)
	}
	// Applied again as it is, the end keeps what it holds; changed to take
	// the workload's own subnet (which no accepted prefix lets it have),
	// it is refused and stays as it was.
	programmed := state(t, wl)
	if err := b.Apply(context.Background(), end); err != nil {
		t.Errorf("the end applied again: %v", err)
	}
	changed := end
	changed.Addrs = pfx("10.99.0.6/24")
	if err := b.Apply(context.Background(), changed); err == nil || !strings.Contains(err.Error(), "is already held in network namespace") {
		t.Errorf("the end changed to an address in the workload's subnet: %v", err)
	}
	if got := state(t, wl); got != programmed {
		t.Errorf("a refused change altered the end:\n%s\nwas\n%s", got, programmed)
	}
	if err := b.Remove(context.Background(), "ok1"); err != nil {
		t.Fatal(err)
	}
	b.settle()
	unchanged("an accepted default route, removed,")
}

// holding's own reading of a namespace's addresses and routes finds what
// netlink's decoding does: both families, a point-to-point address as its
// own, routes on a link, multipath, unreachable and via a gateway; no
// default route, no route of another table, nothing of the links it is
// told to skip.
func TestHoldingReadsWhatNetlinkDoes(t *testing.T) {
	e2e.RequireRoot(t)
	ns := namespace(t)
	for _, args := range [][]string{
		{"link", "add", "va", "type", "veth", "peer", "name", "vb"},
		{"link", "set", "va", "up"}, {"link", "set", "vb", "up"},
		{"addr", "add", "172.30.0.1/24", "dev", "va"},
		{"addr", "add", "10.9.0.1", "peer", "10.9.0.2/32", "dev", "va"},
		{"addr", "add", "fd00::1/64", "dev", "va", "nodad"},
		{"addr", "add", "172.30.1.1/24", "dev", "vb"},
		{"route", "add", "default", "via", "172.30.0.254"},
		{"route", "add", "10.1.0.0/16", "via", "172.30.0.254"},
		{"route", "add", "10.2.0.0/16", "nexthop", "via", "172.30.0.254", "nexthop", "via", "172.30.1.254"},
		{"route", "add", "unreachable", "10.3.0.0/16"},
		{"route", "add", "fd01::/48", "dev", "va"},
		{"route", "add", "10.4.0.0/16", "dev", "vb"},
		{"route", "add", "10.5.0.0/16", "dev", "va", "table", "100"},
	} {
		ip(t, append([]string{"-n", ns}, args...)...)
	}
	_, s, h := sockets(t, ns)

	var want []string
	vb, _ := h.LinkByName("vb")
	addrs, _ := h.AddrList(nil, netlink.FAMILY_ALL)
	for _, a := range addrs {
		if p := prefix(a.IPNet); a.LinkIndex != vb.Attrs().Index && !ignored(p) {
			want = append(want, fmt.Sprintf("address %s (%s) link %d", p.Masked(), p, a.LinkIndex))
		}
	}
	routes, _ := h.RouteList(nil, netlink.FAMILY_ALL)
	for _, r := range routes {
		if r.Dst == nil || r.LinkIndex == vb.Attrs().Index {
			continue
		}
		if p := prefix(r.Dst); p.Bits() > 0 && !ignored(p) {
			want = append(want, fmt.Sprintf("route %s (%s) link %d", p, p, r.LinkIndex))
		}
	}
	held, err := holding(s, ownLinks(h, "", "vb"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range held {
		got = append(got, fmt.Sprintf("%s %s (%s) link %d", o.kind, o.p, o.as, o.link))
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) || len(got) < 9 {
		t.Errorf("holding read\n%s\nnetlink's decoding\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// BenchmarkHolding reads a namespace of a thousand ends' worth of
// addresses and routes, as checkOverlap does for every new end.
func BenchmarkHolding(b *testing.B) {
	ns := "vwt-bench-holding"
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		b.Fatalf("ip netns add: %v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	var batch strings.Builder
	batch.WriteString("link add x0 type veth peer name x1\nlink set x0 up\nlink set x1 up\n")
	for i := range 1000 {
		fmt.Fprintf(&batch, "addr add 10.%d.%d.1/32 dev x0\n", 100+i/250, i%250)
		fmt.Fprintf(&batch, "route add 10.%d.%d.2/32 dev x0\n", 100+i/250, i%250)
		fmt.Fprintf(&batch, "route add 10.%d.%d.3/32 dev x1\n", 100+i/250, i%250)
	}
	cmd := exec.Command("ip", "-n", ns, "-batch", "-")
	cmd.Stdin = strings.NewReader(batch.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("ip -batch: %v: %s", err, out)
	}
	_, s, h := sockets(b, ns)
	b.ReportAllocs()
	for b.Loop() {
		if held, err := holding(s, ownLinks(h, "", "x1")); err != nil || len(held) != 2000 {
			b.Fatalf("%d held, %v", len(held), err)
		}
	}
}

// holding lists the addresses (as their subnets) and main-table routes of
// a namespace, read through its dumpSocket s, but those on the links in
// skip.
func holding(s *nl.SocketHandle, skip map[int]bool) ([]held, error) {
	var out []held
	err := eachHeld(s, func(k heldKey) {
		if o, ok := k.held(); ok && !skip[k.link] {
			out = append(out, o)
		}
	})
	return out, err
}

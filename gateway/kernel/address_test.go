package kernel

import (
	"fmt"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/vwire/vwire/e2e"
)

// An end's addresses are read from its link alone, with their prefix
// lengths, both families, a point-to-point IPv4 address as its own (not
// its peer's), and none of another link's; a link that is gone is an
// error, not a link without addresses.
func TestLinkAddrs(t *testing.T) {
	e2e.RequireRoot(t)
	ns := namespace(t)
	ip(t, "-n", ns, "link", "add", "va", "type", "veth", "peer", "name", "vb")
	ip(t, "-n", ns, "addr", "add", "172.30.0.1/24", "dev", "va")
	ip(t, "-n", ns, "addr", "add", "10.9.0.1", "peer", "10.9.0.2/32", "dev", "va")
	ip(t, "-n", ns, "addr", "add", "fd00::1/64", "dev", "va", "nodad")
	ip(t, "-n", ns, "addr", "add", "172.30.1.1/24", "dev", "vb")
	nsh, err := OpenNS(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	s, err := addrSocket(nsh)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h, _ := netlink.NewHandleAt(nsh)
	defer h.Close()
	va, err := h.LinkByName("va")
	if err != nil {
		t.Fatal(err)
	}
	got, err := linkAddrs(s, va.Attrs().Index)
	if err != nil {
		t.Fatal(err)
	}
	var ss []string
	for _, p := range got {
		ss = append(ss, p.String())
	}
	slices.Sort(ss)
	if want := "[10.9.0.1/32 172.30.0.1/24 fd00::1/64]"; fmt.Sprint(ss) != want {
		t.Errorf("va's addresses: %v, want %s", ss, want)
	}
	if got, err := linkAddrs(s, 1<<30); err == nil {
		t.Errorf("a link that does not exist has addresses %v", got)
	}
}

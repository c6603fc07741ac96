package kernel

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/gateway/dataplane"
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
	_, s, h := sockets(t, ns)
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

// A veth end that carries IPv4 alone has no IPv6 on either half (no
// link-local addresses, no routes the kernel makes for them); one that
// comes to carry IPv6 has it again.
func TestIPv4EndsHaveNoIPv6(t *testing.T) {
	e2e.RequireRoot(t)
	ns := namespace(t)
	b, gw := backend(t)
	end := dataplane.End{ID: "v4", NetNS: ns, Interface: "nsm0", MTU: 1420,
		Addrs: []netip.Prefix{netip.MustParsePrefix("172.31.0.1/32")}}
	if err := b.Apply(context.Background(), end); err != nil {
		t.Fatal(err)
	}
	host := hostName(end.ID)
	if out := ip(t, "-n", ns, "-6", "addr", "show", "dev", "nsm0"); out != "" {
		t.Errorf("IPv6 on the workload's half of an IPv4 end:\n%s", out)
	}
	if out := ip(t, "-n", gw, "-6", "route", "show", "table", "all", "dev", host); out != "" {
		t.Errorf("IPv6 routes of the gateway's half of an IPv4 end:\n%s", out)
	}
	// A request that renames the end is refused before anything is
	// written: "all" would be the namespace's every link in /proc/sys.
	renamed := end
	renamed.Interface = "all"
	if err := b.Apply(context.Background(), renamed); err == nil || !strings.Contains(err.Error(), "cannot be renamed") {
		t.Errorf("an end renamed to all: %v", err)
	}
	if out, err := exec.Command("ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6").Output(); err != nil || strings.TrimSpace(string(out)) != "0" {
		t.Errorf("the workload's namespace-wide disable_ipv6 after a refused rename: %q, %v", out, err)
	}
	end.Addrs = append(end.Addrs, netip.MustParsePrefix("fd00:31::1/128"))
	if err := b.Apply(context.Background(), end); err != nil {
		t.Fatal(err)
	}
	if out := ip(t, "-n", ns, "-6", "addr", "show", "dev", "nsm0"); !strings.Contains(out, "fd00:31::1/128") {
		t.Errorf("the end's IPv6 address after it came to carry IPv6:\n%s", out)
	}
	if err := b.Remove(context.Background(), end.ID); err != nil {
		t.Fatal(err)
	}
}

package kernel

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/vwire/vwire/gateway/dataplane"
	"github.com/vwire/vwire/internal/netprefix"
)

// held is an address or route a namespace has, as a prefix, and what it
// is, for errors: the kind ("address", "route") as, on the link with
// index link (0: none). (Strings are made only for an error: a namespace
// with a thousand ends holds thousands.)
type held struct {
	p    netip.Prefix
	kind string
	as   netip.Prefix
	link int
}

// checkOverlap says why end e's addresses and routes would meet what the
// workload's namespace (inNS) or the gateway's own already hold. An end's
// addresses and routes come from the other side of a vWire, and a route
// the kernel is given replaces one it has for the same prefix: without
// this a peer could take the workload's default route or the gateway's
// route to its DNS server, and Remove could not give it back. In the
// workload's namespace a route of the end may overlap (never equal) one of
// the workload's inside the prefixes it accepts; in the gateway's nothing
// may: the host routes to the end's addresses are the gateway's to keep.
// Default routes, link-local and loopback addresses, and the end's own
// links do not count.
func (b *Backend) checkOverlap(inNS *netlink.Handle, nsh netns.NsHandle, e dataplane.End) error {
	where := fmt.Sprintf("in network namespace %q", e.NetNS)
	err := b.workloads.check(e.NetNS, nsh, ownLinks(inNS, aliasPrefix+e.ID, e.Interface), func(inWorkload meeting) error {
		for _, p := range e.Addrs {
			if err := clash("address "+p.String(), p.Masked(), inNS, inWorkload, e.Accept, where); err != nil {
				return err
			}
		}
		for _, r := range workloadRoutes(e) {
			if err := clash("route "+r.Prefix.String(), r.Prefix.Masked(), inNS, inWorkload, e.Accept, where); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if e.VXLAN != nil {
		return b.checkInner(e)
	}
	if e.WireGuard == nil && len(e.Routed) == 0 {
		return nil // the gateway routes nothing to the end's addresses
	}
	return b.watch.check(ownLinks(b.routes, "", hostName(e.ID)), func(onHost meeting) error {
		for _, p := range e.Addrs {
			host := netip.PrefixFrom(p.Addr(), p.Addr().BitLen())
			if err := clash("address "+p.Addr().String(), host, b.routes, onHost, nil, "on the gateway"); err != nil {
				return err
			}
		}
		return nil
	})
}

// checkInner says why the peer gateway's inner address of a VXLAN end
// inside WireGuard cannot be routed into the peer's tunnel: it is this
// gateway's own, or the gateway holds it already other than through that
// tunnel (another peer's, say).
func (b *Backend) checkInner(e dataplane.End) error {
	w := e.WireGuard
	if w == nil || b.tunnels == nil {
		return nil
	}
	key, err := wgtypes.ParseKey(w.Peer)
	if err != nil {
		return fmt.Errorf("end %q: peer gateway key %q: %w", e.ID, w.Peer, err)
	}
	for _, p := range w.Remote {
		if p.Addr() == e.VXLAN.Local {
			return fmt.Errorf("the peer gateway's inner address %s is this gateway's own: refused", p.Addr())
		}
	}
	// (The tunnel's own routes are on it or on its Ethernet TUN, which an
	// idle tunnel keeps.)
	device := b.tunnels.deviceName(key)
	return b.watch.check(ownLinks(b.routes, "", device, ethernetName(device)), func(onHost meeting) error {
		for _, p := range w.Remote {
			if err := clash("peer gateway's inner address "+p.Addr().String(), p, b.routes, onHost, nil, "on the gateway"); err != nil {
				return err
			}
		}
		return nil
	})
}

// clash says why p (named what) cannot be programmed beside what held
// finds meeting it (in the namespace of h): it equals one of them, or
// overlaps one outside the prefixes accepted.
func clash(what string, p netip.Prefix, h *netlink.Handle, held meeting, accept []netip.Prefix, where string) error {
	for o := range held(p) {
		switch {
		case !p.Overlaps(o.p):
		case p == o.p:
			return fmt.Errorf("the vWire's %s is already held %s by %s: refused, so that it stays as it is", what, where, o.describe(h))
		case !netprefix.Within(p, accept):
			return fmt.Errorf("the vWire's %s overlaps %s %s: refused (a workload accepts overlapping routes only inside the prefixes it names: vwire connect --accept-routes)", what, o.describe(h), where)
		}
	}
	return nil
}

// describe says what o is and on which link, named as the kernel and
// vwire know it.
func (o held) describe(h *netlink.Handle) string {
	what := o.kind + " " + o.as.String()
	if o.link == 0 {
		return what
	}
	l, err := h.LinkByIndex(o.link)
	if err != nil {
		return what
	}
	a := l.Attrs()
	if id, ok := strings.CutPrefix(a.Alias, aliasPrefix); ok {
		id, _, _ = strings.Cut(id, ":")
		return fmt.Sprintf("%s on %s (vWire end %s)", what, a.Name, id)
	}
	return what + " on " + a.Name
}

// ownLinks are the indexes of the end's own links in a namespace (h): the
// ones named own (with alias, if alias is not ""). Links are named only
// for an error: listing them all costs more than the rest at a thousand
// vWires.
func ownLinks(h *netlink.Handle, alias string, own ...string) map[int]bool {
	skip := map[int]bool{}
	for _, name := range own {
		if l, err := h.LinkByName(name); err == nil && (alias == "" || l.Attrs().Alias == alias) {
			skip[l.Attrs().Index] = true
		}
	}
	return skip
}

// held is what k counts as in an overlap check (ok false: nothing).
func (k heldKey) held() (held, bool) {
	switch {
	case ignored(k.p):
		return held{}, false
	case k.route:
		return held{k.p, "route", k.p, k.link}, k.p.Bits() > 0
	default:
		return held{k.p.Masked(), "address", k.p, k.link}, true
	}
}

// ignored are addresses every link may have.
func ignored(p netip.Prefix) bool {
	a := p.Addr()
	return a.IsLinkLocalUnicast() || a.IsLoopback() || a.IsMulticast()
}

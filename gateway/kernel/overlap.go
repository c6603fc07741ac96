package kernel

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
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
func (b *Backend) checkOverlap(inNS *netlink.Handle, dumps *nl.SocketHandle, e dataplane.End) error {
	inWorkload, err := holding(inNS, dumps, aliasPrefix+e.ID, e.Interface)
	if err != nil {
		return fmt.Errorf("reading network namespace %q: %w", e.NetNS, err)
	}
	where := fmt.Sprintf("in network namespace %q", e.NetNS)
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
	if e.VXLAN != nil {
		return b.checkInner(e)
	}
	if e.WireGuard == nil && len(e.Routed) == 0 {
		return nil // the gateway routes nothing to the end's addresses
	}
	onHost, err := holding(b.routes, b.dumps, "", hostName(e.ID))
	if err != nil {
		return fmt.Errorf("reading the gateway's network namespace: %w", err)
	}
	for _, p := range e.Addrs {
		host := netip.PrefixFrom(p.Addr(), p.Addr().BitLen())
		if err := clash("address "+p.Addr().String(), host, b.routes, onHost, nil, "on the gateway"); err != nil {
			return err
		}
	}
	return nil
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
	device := b.tunnels.deviceName(key)
	// (The tunnel's own routes are on it or on its Ethernet TUN, which an
	// idle tunnel keeps.)
	onHost, err := holding(b.routes, b.dumps, "", device, ethernetName(device))
	if err != nil {
		return fmt.Errorf("reading the gateway's network namespace: %w", err)
	}
	for _, p := range w.Remote {
		if p.Addr() == e.VXLAN.Local {
			return fmt.Errorf("the peer gateway's inner address %s is this gateway's own: refused", p.Addr())
		}
		if err := clash("peer gateway's inner address "+p.Addr().String(), p, b.routes, onHost, nil, "on the gateway"); err != nil {
			return err
		}
	}
	return nil
}

// clash says why p (named what) cannot be programmed beside held (in the
// namespace of h): it equals one of them, or overlaps one outside the
// prefixes accepted.
func clash(what string, p netip.Prefix, h *netlink.Handle, held []held, accept []netip.Prefix, where string) error {
	for _, o := range held {
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

// holding lists the addresses (as their subnets) and main-table routes of
// a namespace (h, and its dumpSocket s), but those of the end's own links:
// the ones named own (with alias, if alias is not ""). Links are named
// only for an error: listing them all costs more than the rest at a
// thousand vWires.
func holding(h *netlink.Handle, s *nl.SocketHandle, alias string, own ...string) ([]held, error) {
	skip := map[int]bool{}
	for _, name := range own {
		if l, err := h.LinkByName(name); err == nil && (alias == "" || l.Attrs().Alias == alias) {
			skip[l.Attrs().Index] = true
		}
	}
	var out []held
	err := addrDump(s, 0, func(p netip.Prefix, link int) {
		if !skip[link] && !ignored(p) {
			out = append(out, held{p.Masked(), "address", p, link})
		}
	})
	if err != nil {
		return nil, err
	}
	err = mainRoutes(s, func(p netip.Prefix, link int) {
		if !skip[link] && p.Bits() > 0 && !ignored(p) {
			out = append(out, held{p, "route", p, link})
		}
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ignored are addresses every link may have.
func ignored(p netip.Prefix) bool {
	a := p.Addr()
	return a.IsLinkLocalUnicast() || a.IsLoopback() || a.IsMulticast()
}

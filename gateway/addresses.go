package gateway

import (
	"crypto/rand"
	"fmt"
	"net/netip"

	"github.com/vwire/vwire/internal/netprefix"
)

// MaxAddrs bounds the addresses (or route prefixes) one side of a vWire
// may name for itself or for the other side (prefixes refuses more).
const MaxAddrs = 16

// The addresses and prefixes in a vWire's IP context come from the other
// side (a peer domain's answer, an endpoint's) and are programmed into the
// kernel: on the workload's interface, as routes in its namespace, and as
// host routes in the gateway's. Before anything is programmed they are
// checked here for what they are; the backend then checks them against
// what the host and the workload's namespace already have.

// ownAddrs checks the addresses named for an end's own interface (whose:
// "the client's", "the endpoint's"): single host addresses, /32 or /128
// for an IP vWire, and on an Ethernet link an address of a subnet no
// wider than /16 (IPv4) or /64 (IPv6) that is neither its network nor its
// broadcast address.
func ownAddrs(whose string, ps []netip.Prefix, ethernet bool) error {
	for _, p := range ps {
		if err := hostAddr(p.Addr()); err != nil {
			return fmt.Errorf("%s address %s: %w", whose, p, err)
		}
		bits, max := p.Bits(), p.Addr().BitLen()
		switch {
		case !ethernet && bits != max:
			return fmt.Errorf("%s address %s: an IP vWire's addresses are single hosts (/%d)", whose, p, max)
		case ethernet && p.Addr().Is4() && bits < 16:
			return fmt.Errorf("%s address %s: an Ethernet link's subnet may be at most /16", whose, p)
		case ethernet && p.Addr().Is6() && bits < 64:
			return fmt.Errorf("%s address %s: an Ethernet link's subnet may be at most /64", whose, p)
		}
		if bits < max-1 {
			m := p.Masked()
			if p.Addr() == m.Addr() || (p.Addr().Is4() && p.Addr() == lastOf(m)) {
				return fmt.Errorf("%s address %s: the network or broadcast address of its subnet, not a host's", whose, p)
			}
		}
	}
	return nil
}

// farRoutes checks the other side's addresses as named for an end (whose:
// "the endpoint's", "the client's"), which become routes in the
// workload's namespace (and allowed IPs of the peer gateway), and returns
// them as they are to be programmed. A single host is the other side's
// address; any wider prefix is a route the workload must have accepted
// (one of accept contains it), masked; a default route is programmed as
// its two halves, so that the workload's own default route stays and is
// there again when the vWire goes.
func farRoutes(whose string, ps []netip.Prefix, ethernet bool, accept []netip.Prefix) ([]netip.Prefix, error) {
	if ethernet { // the other side's addresses on the link: no routes
		return ps, ownAddrs(whose, ps, true)
	}
	var out []netip.Prefix
	for _, p := range ps {
		if p.Bits() == p.Addr().BitLen() {
			if err := hostAddr(p.Addr()); err != nil {
				return nil, fmt.Errorf("%s address %s: %w", whose, p, err)
			}
			out = append(out, p)
			continue
		}
		m := p.Masked()
		switch {
		case !netprefix.Within(m, accept):
			what := "route " + m.String()
			if m.Bits() == 0 {
				what = "default route " + m.String()
			}
			return nil, fmt.Errorf("%s %s: not accepted by the workload (it takes routes only inside the prefixes it names: vwire connect --accept-routes %s)", whose, what, m)
		case m.Bits() == 0:
			out = append(out, halves(m)...)
		default:
			if err := hostAddr(m.Addr()); err != nil { // a route to loopback, multicast, link-local
				return nil, fmt.Errorf("%s route %s: %w", whose, m, err)
			}
			out = append(out, m)
		}
	}
	return out, nil
}

// ParseAccept parses the route prefixes a workload accepts.
func ParseAccept(ss []string) ([]netip.Prefix, error) {
	ps, err := prefixes(ss)
	if err != nil {
		return nil, fmt.Errorf("accepted routes: %w (0.0.0.0/0 accepts a default route)", err)
	}
	for i := range ps {
		ps[i] = ps[i].Masked()
	}
	return ps, nil
}

// hostAddr says why a cannot be a host's address on a vWire.
func hostAddr(a netip.Addr) error {
	switch {
	case a.Zone() != "":
		return fmt.Errorf("has a zone")
	case a.Is4In6():
		return fmt.Errorf("an IPv4-mapped IPv6 address")
	case a.IsUnspecified():
		return fmt.Errorf("the unspecified address")
	case a.IsLoopback():
		return fmt.Errorf("a loopback address")
	case a.IsMulticast():
		return fmt.Errorf("a multicast address")
	case a.IsLinkLocalUnicast():
		return fmt.Errorf("a link-local address (the gateway's own next hop is one)")
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("the broadcast address")
	}
	return nil
}

// lastOf is the last address of p.
func lastOf(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// halves are the two halves of a default route: more specific than any
// default route the workload has, so that neither replaces the other.
func halves(p netip.Prefix) []netip.Prefix {
	lower := netip.PrefixFrom(p.Addr(), 1)
	return []netip.Prefix{lower, netip.PrefixFrom(lastOf(p), 1).Masked()}
}

// tunnelAddr parses a peer gateway's tunnel address as the other side
// named it: where this gateway will send WireGuard or VXLAN packets, so
// never a loopback, multicast, link-local, broadcast or unspecified
// address (a peer must not aim the gateway at the host's own services).
func tunnelAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return a, fmt.Errorf("%q is not an IP address", s)
	}
	if err := hostAddr(a); err != nil {
		return a, fmt.Errorf("%s: %w", a, err)
	}
	return a, nil
}

// validVNI says whether v is a VXLAN network identifier: 24 bits, not 0.
func validVNI(v uint32) bool { return v > 0 && v < 1<<24 }

// ula is IPv6's unique local range (RFC 4193), where inner addresses are.
var ula = netip.MustParsePrefix("fc00::/7")

// innerAddr parses a gateway's inner address as the other side named it:
// a single IPv6 unique local address, which no workload route can meet
// (the gateway routes it into one peer's tunnel only).
func innerAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	case a.Zone() != "" || !ula.Contains(a):
		return netip.Addr{}, fmt.Errorf("%s is not an IPv6 unique local address (fc00::/7)", a)
	}
	return a, nil
}

// NewInner chooses a gateway's inner address at random (RFC 4193: fd, a
// 40-bit global ID, a subnet, an interface ID), once: the gateway keeps
// it.
func NewInner() (netip.Addr, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return netip.Addr{}, err
	}
	b[0] = 0xfd
	return netip.AddrFrom16(b), nil
}

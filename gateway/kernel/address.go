package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TunnelAddress is the gateway's tunnel address (given, or that of the
// default route's interface) and the MTU of its link.
func TunnelAddress(given string) (netip.Addr, int, error) {
	if given != "" {
		addr, err := netip.ParseAddr(given)
		if err != nil {
			return addr, 0, fmt.Errorf("--gateway-address %q: not an IP address", given)
		}
		links, err := netlink.LinkList()
		if err != nil {
			return addr, 0, err
		}
		for _, l := range links {
			addrs, _ := netlink.AddrList(l, netlink.FAMILY_ALL)
			for _, a := range addrs {
				if a.IP.Equal(net.IP(addr.AsSlice())) {
					return addr, l.Attrs().MTU, nil
				}
			}
		}
		return addr, 0, fmt.Errorf("--gateway-address %s is not an address of this host", given)
	}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return netip.Addr{}, 1500, err
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() != "0.0.0.0/0" {
			continue
		}
		l, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			continue
		}
		addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
		if len(addrs) > 0 {
			a, _ := netip.AddrFromSlice(addrs[0].IP)
			return a.Unmap(), l.Attrs().MTU, nil
		}
	}
	return netip.Addr{}, 1500, errors.New("no default route: there is no interface to take the gateway's tunnel address from")
}

// dumpSocket is a netlink socket in namespace nsh (netns.None(): the
// thread's own) whose dumps the kernel filters by what they ask for
// (strict checking): an address dump by link, a route dump by table.
// netlink's AddrList dumps every address of the namespace and filters
// them itself, which with a thousand ends in one workload namespace is
// two thousand addresses read to find one end's two, and the most of a
// restarted gateway's time.
func dumpSocket(nsh netns.NsHandle) (*nl.SocketHandle, error) {
	s, err := nl.GetNetlinkSocketAt(nsh, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	if err := unix.SetsockoptInt(s.GetFd(), unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1); err != nil {
		s.Close()
		return nil, fmt.Errorf("strict checking: %w", err)
	}
	return &nl.SocketHandle{Socket: s}, nil
}

// linkAddrs lists the addresses of the link with index, through a
// dumpSocket.
func linkAddrs(s *nl.SocketHandle, index int) ([]netip.Prefix, error) {
	var out []netip.Prefix
	err := addrDump(s, index, func(k heldKey) { out = append(out, k.p) })
	return out, err
}

// heldKey is an address (with its prefix length) or a route of the main
// table (by its destination) and its link, with what tells apart routes
// to one destination that the kernel holds at once.
type heldKey struct {
	route bool
	p     netip.Prefix
	link  int // 0: none, or a route's several
	tos   uint8
	typ   uint8
	prio  uint32
	gw    netip.Addr
}

// addrDump calls f with every address of the link with index (0: of
// every link), through a dumpSocket. Only the address and its link are
// read: netlink's AddrList decodes every attribute of every address into
// values of their own, which for the thousands of a namespace with a
// thousand ends costs more than the kernel's dump (see checkOverlap).
func addrDump(s *nl.SocketHandle, index int, f func(heldKey)) error {
	req := &nl.NetlinkRequest{
		NlMsghdr: unix.NlMsghdr{Len: unix.SizeofNlMsghdr, Type: unix.RTM_GETADDR, Flags: unix.NLM_F_REQUEST | unix.NLM_F_DUMP},
		Sockets:  map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: s},
	}
	msg := nl.NewIfAddrmsg(unix.AF_UNSPEC)
	msg.Index = uint32(index)
	req.AddData(msg)
	return dumpKeys(req, unix.RTM_NEWADDR, func(k heldKey) {
		if index == 0 || k.link == index { // (a kernel that does not filter)
			f(k)
		}
	})
}

// mainRoutes calls f with every IP route in the main table but default
// routes, of the link with index oif (0: of every link), through a
// dumpSocket, with what addrDump says of netlink's decoding.
func mainRoutes(s *nl.SocketHandle, oif int, f func(heldKey)) error {
	req := &nl.NetlinkRequest{
		NlMsghdr: unix.NlMsghdr{Len: unix.SizeofNlMsghdr, Type: unix.RTM_GETROUTE, Flags: unix.NLM_F_REQUEST | unix.NLM_F_DUMP},
		Sockets:  map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: s},
	}
	req.AddData(&nl.RtMsg{RtMsg: unix.RtMsg{Family: unix.AF_UNSPEC, Table: unix.RT_TABLE_MAIN}})
	if oif != 0 {
		req.AddData(nl.NewRtAttr(unix.RTA_OIF, nl.Uint32Attr(uint32(oif))))
	}
	return dumpKeys(req, unix.RTM_NEWROUTE, func(k heldKey) {
		if oif == 0 || k.link == oif { // (a kernel that does not filter)
			f(k)
		}
	})
}

// dumpKeys runs dump req, whose answers are messages of type kind, and
// calls f with each one's key (parseHeld) once the whole dump is read:
// one the kernel interrupts is asked again.
func dumpKeys(req *nl.NetlinkRequest, kind uint16, f func(heldKey)) error {
	keys, err := dump(func() ([]heldKey, error) {
		var out []heldKey
		var bad error
		err := req.ExecuteIter(unix.NETLINK_ROUTE, kind, func(m []byte) bool {
			k, ok, err := parseHeld(kind, m)
			if err != nil {
				bad = err
				return false
			}
			if ok {
				out = append(out, k)
			}
			return true
		})
		return out, errors.Join(err, bad)
	})
	for _, k := range keys {
		f(k)
	}
	return err
}

// parseHeld reads the key of m, the body of a netlink message of type
// kind (RTM_NEWADDR or RTM_DELADDR, RTM_NEWROUTE or RTM_DELROUTE): ok
// false for a route that is not held (cached, of another table or
// family, or a default route).
func parseHeld(kind uint16, m []byte) (k heldKey, ok bool, err error) {
	if kind == unix.RTM_NEWADDR || kind == unix.RTM_DELADDR {
		if len(m) < unix.SizeofIfAddrmsg {
			return k, false, fmt.Errorf("an address message of %d bytes", len(m))
		}
		ifa := nl.DeserializeIfAddrmsg(m)
		attrs, err := nl.ParseRouteAttr(m[ifa.Len():])
		if err != nil {
			return k, false, err
		}
		var ip []byte
		for _, a := range attrs {
			// An IPv4 address's own is IFA_LOCAL (IFA_ADDRESS is the
			// peer's on a point-to-point link); IPv6 has IFA_ADDRESS.
			if a.Attr.Type == unix.IFA_LOCAL || (a.Attr.Type == unix.IFA_ADDRESS && ip == nil) {
				ip = a.Value
			}
		}
		addr, ok := netip.AddrFromSlice(ip)
		if !ok || int(ifa.Prefixlen) > addr.Unmap().BitLen() {
			return k, false, fmt.Errorf("an address of link %d the kernel reports as %x/%d", ifa.Index, ip, ifa.Prefixlen)
		}
		return heldKey{p: netip.PrefixFrom(addr.Unmap(), int(ifa.Prefixlen)), link: int(ifa.Index)}, true, nil
	}
	if len(m) < unix.SizeofRtMsg {
		return k, false, fmt.Errorf("a route message of %d bytes", len(m))
	}
	rt := nl.DeserializeRtMsg(m)
	if rt.Flags&unix.RTM_F_CLONED != 0 || (rt.Family != unix.AF_INET && rt.Family != unix.AF_INET6) {
		return k, false, nil // a cached route, not one set; multicast or MPLS
	}
	attrs, err := nl.ParseRouteAttr(m[rt.Len():])
	if err != nil {
		return k, false, err
	}
	table := uint32(rt.Table)
	var dst []byte
	k = heldKey{route: true, tos: rt.Tos, typ: rt.Type}
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.RTA_DST:
			dst = a.Value
		case unix.RTA_OIF:
			if len(a.Value) == 4 {
				k.link = int(nl.NativeEndian().Uint32(a.Value))
			}
		case unix.RTA_TABLE:
			if len(a.Value) == 4 {
				table = nl.NativeEndian().Uint32(a.Value)
			}
		case unix.RTA_PRIORITY:
			if len(a.Value) == 4 {
				k.prio = nl.NativeEndian().Uint32(a.Value)
			}
		case unix.RTA_GATEWAY:
			k.gw, _ = netip.AddrFromSlice(a.Value)
		}
	}
	if table != unix.RT_TABLE_MAIN || dst == nil { // (no destination: a default route)
		return k, false, nil
	}
	addr, ok := netip.AddrFromSlice(dst)
	if !ok || int(rt.Dst_len) > addr.BitLen() {
		return k, false, fmt.Errorf("a route the kernel reports with destination %x/%d", dst, rt.Dst_len)
	}
	k.p = netip.PrefixFrom(addr.Unmap(), int(rt.Dst_len))
	return k, true, nil
}

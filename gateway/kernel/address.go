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
	err := addrDump(s, index, func(p netip.Prefix, _ int) { out = append(out, p) })
	return out, err
}

// addrDump calls f with every address of the link with index (0: of
// every link) and the index of its link, through a dumpSocket. Only the
// address and its link are read: netlink's AddrList decodes every
// attribute of every address into values of their own, which for the
// thousands of a namespace with a thousand ends costs more than the
// kernel's dump (see checkOverlap).
func addrDump(s *nl.SocketHandle, index int, f func(p netip.Prefix, link int)) error {
	_, err := dump(func() (struct{}, error) {
		req := &nl.NetlinkRequest{
			NlMsghdr: unix.NlMsghdr{Len: unix.SizeofNlMsghdr, Type: unix.RTM_GETADDR, Flags: unix.NLM_F_REQUEST | unix.NLM_F_DUMP},
			Sockets:  map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: s},
		}
		msg := nl.NewIfAddrmsg(unix.AF_UNSPEC)
		msg.Index = uint32(index)
		req.AddData(msg)
		var found []addrOf
		var bad error
		err := req.ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWADDR, func(m []byte) bool {
			ifa := nl.DeserializeIfAddrmsg(m)
			if index != 0 && int(ifa.Index) != index {
				return true // (a kernel that does not filter)
			}
			attrs, err := nl.ParseRouteAttr(m[ifa.Len():])
			if err != nil {
				bad = err
				return false
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
			if !ok {
				bad = fmt.Errorf("an address of link %d the kernel reports without its address", ifa.Index)
				return false
			}
			found = append(found, addrOf{netip.PrefixFrom(addr.Unmap(), int(ifa.Prefixlen)), int(ifa.Index)})
			return true
		})
		if err = errors.Join(err, bad); err == nil {
			// Only a whole dump counts: one interrupted is asked again.
			for _, a := range found {
				f(a.p, a.link)
			}
		}
		return struct{}{}, err
	})
	return err
}

// addrOf is an address or route destination and the index of its link.
type addrOf struct {
	p    netip.Prefix
	link int
}

// mainRoutes calls f with the destination and output link (0: none, or
// several) of every IP route in the main table but default routes,
// through a dumpSocket, with what addrDump says of netlink's decoding.
func mainRoutes(s *nl.SocketHandle, f func(dst netip.Prefix, link int)) error {
	_, err := dump(func() (struct{}, error) {
		req := &nl.NetlinkRequest{
			NlMsghdr: unix.NlMsghdr{Len: unix.SizeofNlMsghdr, Type: unix.RTM_GETROUTE, Flags: unix.NLM_F_REQUEST | unix.NLM_F_DUMP},
			Sockets:  map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: s},
		}
		req.AddData(&nl.RtMsg{RtMsg: unix.RtMsg{Family: unix.AF_UNSPEC, Table: unix.RT_TABLE_MAIN}})
		var found []addrOf
		var bad error
		err := req.ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWROUTE, func(m []byte) bool {
			rt := nl.DeserializeRtMsg(m)
			if rt.Flags&unix.RTM_F_CLONED != 0 || (rt.Family != unix.AF_INET && rt.Family != unix.AF_INET6) {
				return true // a cached route, not one set; multicast or MPLS
			}
			attrs, err := nl.ParseRouteAttr(m[rt.Len():])
			if err != nil {
				bad = err
				return false
			}
			table := uint32(rt.Table)
			var dst []byte
			link := 0
			for _, a := range attrs {
				switch a.Attr.Type {
				case unix.RTA_DST:
					dst = a.Value
				case unix.RTA_OIF:
					if len(a.Value) == 4 {
						link = int(nl.NativeEndian().Uint32(a.Value))
					}
				case unix.RTA_TABLE:
					if len(a.Value) == 4 {
						table = nl.NativeEndian().Uint32(a.Value)
					}
				}
			}
			if table != unix.RT_TABLE_MAIN {
				return true // (a kernel that does not filter)
			}
			if dst == nil {
				return true // a default route
			}
			addr, ok := netip.AddrFromSlice(dst)
			if !ok || int(rt.Dst_len) > addr.BitLen() {
				bad = fmt.Errorf("a route the kernel reports with destination %x/%d", dst, rt.Dst_len)
				return false
			}
			found = append(found, addrOf{netip.PrefixFrom(addr.Unmap(), int(rt.Dst_len)), link})
			return true
		})
		if err = errors.Join(err, bad); err == nil {
			for _, r := range found {
				f(r.p, r.link)
			}
		}
		return struct{}{}, err
	})
	return err
}

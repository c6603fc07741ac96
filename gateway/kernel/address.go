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

// addrSocket is a netlink socket in namespace nsh whose address dumps the
// kernel filters by link (strict checking): netlink's AddrList dumps every
// address of the namespace and filters them itself, which with a thousand
// ends in one workload namespace is two thousand addresses read to find
// one end's two, and the most of a restarted gateway's time.
func addrSocket(nsh netns.NsHandle) (*nl.SocketHandle, error) {
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

// linkAddrs lists the addresses of the link with index, through an
// addrSocket.
func linkAddrs(s *nl.SocketHandle, index int) ([]netip.Prefix, error) {
	return dump(func() ([]netip.Prefix, error) {
		req := &nl.NetlinkRequest{
			NlMsghdr: unix.NlMsghdr{Len: unix.SizeofNlMsghdr, Type: unix.RTM_GETADDR, Flags: unix.NLM_F_REQUEST | unix.NLM_F_DUMP},
			Sockets:  map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: s},
		}
		msg := nl.NewIfAddrmsg(unix.AF_UNSPEC)
		msg.Index = uint32(index)
		req.AddData(msg)
		var out []netip.Prefix
		var bad error
		err := req.ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWADDR, func(m []byte) bool {
			ifa := nl.DeserializeIfAddrmsg(m)
			if int(ifa.Index) != index {
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
				bad = fmt.Errorf("an address of link %d the kernel reports without its address", index)
				return false
			}
			out = append(out, netip.PrefixFrom(addr.Unmap(), int(ifa.Prefixlen)))
			return true
		})
		return out, errors.Join(err, bad)
	})
}

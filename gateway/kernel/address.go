package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
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

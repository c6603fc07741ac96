package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"unsafe"

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
	req := &nl.NetlinkRequest{NlMsghdr: unix.NlMsghdr{Type: unix.RTM_GETADDR, Flags: unix.NLM_F_REQUEST | unix.NLM_F_DUMP}}
	msg := nl.NewIfAddrmsg(unix.AF_UNSPEC)
	msg.Index = uint32(index)
	req.AddData(msg)
	return dumpKeys(s, req, unix.RTM_NEWADDR, func(k heldKey) {
		if index == 0 || k.link == index { // (a kernel that does not filter)
			f(k)
		}
	})
}

// mainRoutes calls f with every IP route in the main table but default
// routes, of the link with index oif (0: of every link), through a
// dumpSocket, with what addrDump says of netlink's decoding.
func mainRoutes(s *nl.SocketHandle, oif int, f func(heldKey)) error {
	req := &nl.NetlinkRequest{NlMsghdr: unix.NlMsghdr{Type: unix.RTM_GETROUTE, Flags: unix.NLM_F_REQUEST | unix.NLM_F_DUMP}}
	req.AddData(&nl.RtMsg{RtMsg: unix.RtMsg{Family: unix.AF_UNSPEC, Table: unix.RT_TABLE_MAIN}})
	if oif != 0 {
		req.AddData(nl.NewRtAttr(unix.RTA_OIF, nl.Uint32Attr(uint32(oif))))
	}
	return dumpKeys(s, req, unix.RTM_NEWROUTE, func(k heldKey) {
		if oif == 0 || k.link == oif { // (a kernel that does not filter)
			f(k)
		}
	})
}

// dumpKeys runs dump req on socket s (a dumpSocket), whose answers are
// messages of type kind, and calls f with each one's key (parseHeld) once
// the whole dump is read: one the kernel interrupts is asked again. It
// reads the socket itself, into one buffer, and walks each message's
// attributes where they lie: netlink's reader and attribute parser
// allocate for every message and attribute, and with a thousand ends in a
// namespace that was two thirds of a dump's cost (BenchmarkHolding).
func dumpKeys(s *nl.SocketHandle, req *nl.NetlinkRequest, kind uint16, f func(heldKey)) error {
	buf := dumpBuffers.Get().(*[]byte)
	defer dumpBuffers.Put(buf)
	keys, err := dump(func() ([]heldKey, error) {
		req.Seq = dumpSeq.Add(1)
		fd := s.Socket.GetFd()
		if err := unix.Sendto(fd, req.Serialize(), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return nil, err
		}
		var out []heldKey
		interrupted := false
		for {
			n, from, err := unix.Recvfrom(fd, *buf, unix.MSG_TRUNC)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return nil, err
			}
			if !fromKernel(from) {
				continue
			}
			if n > len(*buf) {
				return nil, fmt.Errorf("a netlink answer of %d bytes, more than %d", n, len(*buf))
			}
			done := false
			err = eachMessage((*buf)[:n], func(h *unix.NlMsghdr, body []byte) error {
				if h.Seq != req.Seq || done {
					return nil // (an answer to an earlier request)
				}
				interrupted = interrupted || h.Flags&unix.NLM_F_DUMP_INTR != 0
				switch h.Type {
				case unix.NLMSG_DONE, unix.NLMSG_ERROR:
					done = true
					if len(body) >= 4 {
						if errno := int32(nl.NativeEndian().Uint32(body)); errno < 0 {
							return unix.Errno(-errno)
						}
					}
					if interrupted {
						return netlink.ErrDumpInterrupted
					}
				case kind:
					k, ok, err := parseHeld(kind, body)
					if err != nil {
						return err
					}
					if ok {
						out = append(out, k)
					}
				}
				return nil
			})
			if err != nil || done {
				return out, err
			}
		}
	})
	for _, k := range keys {
		f(k)
	}
	return err
}

// fromKernel says whether a netlink message came from the kernel: in a
// workload's namespace another socket may send to ours (a workload with
// CAP_NET_ADMIN there), and what it says of the namespace is not taken.
func fromKernel(from unix.Sockaddr) bool {
	sa, ok := from.(*unix.SockaddrNetlink)
	return ok && sa.Pid == 0
}

// dumpBuffers hold a netlink answer each (the kernel sends a dump's
// messages in answers of at most 32 KB).
var dumpBuffers = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// dumpSeq numbers dumpKeys's requests.
var dumpSeq atomic.Uint32

func nlmAlign(l int) int { return (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// eachMessage calls f with the header and body of each netlink message in
// b (what one read of a netlink socket returned), where they lie, until f
// returns an error.
func eachMessage(b []byte, f func(h *unix.NlMsghdr, body []byte) error) error {
	for len(b) > 0 {
		if len(b) < unix.SizeofNlMsghdr {
			return fmt.Errorf("a netlink message cut short (%d bytes)", len(b))
		}
		h := (*unix.NlMsghdr)(unsafe.Pointer(&b[0]))
		l := int(h.Len)
		if l < unix.SizeofNlMsghdr || l > len(b) {
			return fmt.Errorf("a netlink message of %d bytes in %d", l, len(b))
		}
		if err := f(h, b[unix.SizeofNlMsghdr:l]); err != nil {
			return err
		}
		b = b[min(nlmAlign(l), len(b)):]
	}
	return nil
}

// eachHeld calls f with every address and main-table route of the
// namespace of dumpSocket s.
func eachHeld(s *nl.SocketHandle, f func(heldKey)) error {
	if err := addrDump(s, 0, f); err != nil {
		return err
	}
	return mainRoutes(s, 0, f)
}

// eachAttr calls f with the type and value of each route attribute in b,
// where they lie.
func eachAttr(b []byte, f func(typ uint16, v []byte)) error {
	for len(b) > 0 {
		if len(b) < unix.SizeofRtAttr {
			return fmt.Errorf("an attribute cut short (%d bytes)", len(b))
		}
		l := int(nl.NativeEndian().Uint16(b))
		if l < unix.SizeofRtAttr || l > len(b) {
			return fmt.Errorf("an attribute of %d bytes in %d", l, len(b))
		}
		f(nl.NativeEndian().Uint16(b[2:])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER), b[unix.SizeofRtAttr:l])
		b = b[min(nlmAlign(l), len(b)):]
	}
	return nil
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
		var ip []byte
		err := eachAttr(m[ifa.Len():], func(typ uint16, v []byte) {
			// An IPv4 address's own is IFA_LOCAL (IFA_ADDRESS is the
			// peer's on a point-to-point link); IPv6 has IFA_ADDRESS.
			if typ == unix.IFA_LOCAL || (typ == unix.IFA_ADDRESS && ip == nil) {
				ip = v
			}
		})
		if err != nil {
			return k, false, err
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
	table := uint32(rt.Table)
	var dst []byte
	k = heldKey{route: true, tos: rt.Tos, typ: rt.Type}
	err = eachAttr(m[rt.Len():], func(typ uint16, v []byte) {
		switch typ {
		case unix.RTA_DST:
			dst = v
		case unix.RTA_OIF:
			if len(v) == 4 {
				k.link = int(nl.NativeEndian().Uint32(v))
			}
		case unix.RTA_TABLE:
			if len(v) == 4 {
				table = nl.NativeEndian().Uint32(v)
			}
		case unix.RTA_PRIORITY:
			if len(v) == 4 {
				k.prio = nl.NativeEndian().Uint32(v)
			}
		case unix.RTA_GATEWAY:
			k.gw, _ = netip.AddrFromSlice(v)
		}
	})
	if err != nil {
		return k, false, err
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

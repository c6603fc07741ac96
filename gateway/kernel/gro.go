package kernel

import (
	"bytes"
	"encoding/binary"
)

// The other way, out of the tunnel: wireguard-go hands over VXLAN packets
// one by one, and the kernel would take each through UDP, VXLAN and the
// workload's TCP on its own. The coalescer joins consecutive segments of
// one TCP stream inside one VXLAN flow into one packet of up to 64 KB, as
// a NIC doing GRO would, for the Ethernet TUN to hand the kernel whole
// (virtio header with the UDP-tunnel GSO type).

// vxlanPort is the VXLAN port the gateway's VXLAN devices use.
const vxlanPort = 4789

// groLayout is where a VXLAN packet carrying a TCP segment has its
// headers.
type groLayout struct {
	udp, nh, tcp, payload int
	outer6, inner6        bool
}

// parseVXLANTCP says where p's headers are, if p is an IPv4 or IPv6 VXLAN
// packet to vxlanPort carrying an unfragmented TCP segment with data, ACK
// set and no flag but PSH beside it (others are not joined).
func parseVXLANTCP(p []byte) (l groLayout, ok bool) {
	be := binary.BigEndian
	if len(p) < 20 {
		return l, false
	}
	switch p[0] >> 4 {
	case 6:
		if len(p) < 40 || p[6] != 17 || int(be.Uint16(p[4:]))+40 != len(p) {
			return l, false
		}
		l.udp, l.outer6 = 40, true
	case 4:
		ihl := int(p[0]&0x0f) * 4
		if ihl < 20 || p[9] != 17 || int(be.Uint16(p[2:])) != len(p) || be.Uint16(p[6:])&0x3fff != 0 {
			return l, false
		}
		l.udp = ihl
	default:
		return l, false
	}
	// UDP, VXLAN (I flag), Ethernet.
	eth := l.udp + 16
	if len(p) < eth+14+20 || be.Uint16(p[l.udp+2:]) != vxlanPort || int(be.Uint16(p[l.udp+4:])) != len(p)-l.udp || p[l.udp+8] != 0x08 {
		return l, false
	}
	l.nh = eth + 14
	switch be.Uint16(p[eth+12:]) {
	case 0x86dd:
		if len(p) < l.nh+40 || p[l.nh]>>4 != 6 || p[l.nh+6] != 6 || int(be.Uint16(p[l.nh+4:]))+40 != len(p)-l.nh {
			return l, false
		}
		l.tcp, l.inner6 = l.nh+40, true
	case 0x0800:
		ihl := int(p[l.nh]&0x0f) * 4
		if p[l.nh]>>4 != 4 || ihl < 20 || len(p) < l.nh+ihl || p[l.nh+9] != 6 || int(be.Uint16(p[l.nh+2:])) != len(p)-l.nh || be.Uint16(p[l.nh+6:])&0x3fff != 0 {
			return l, false
		}
		l.tcp = l.nh + ihl
	default:
		return l, false
	}
	if len(p) < l.tcp+20 {
		return l, false
	}
	doff := int(p[l.tcp+12]>>4) * 4
	l.payload = l.tcp + doff
	flags := p[l.tcp+13]
	if doff < 20 || l.payload >= len(p) || flags&0x10 == 0 || flags&^(0x10|0x08) != 0 {
		return l, false
	}
	return l, true
}

// variable are the header bytes that differ between segments of one flow
// (lengths, IDs, checksums, TCP sequence, flags and window), in order: the
// rest must be equal for two segments to be joined.
func (l groLayout) variable() (v [8][2]int, n int) {
	add := func(from, to int) { v[n] = [2]int{from, to}; n++ }
	if l.outer6 {
		add(4, 6)
	} else {
		add(2, 6)
		add(10, 12)
	}
	add(l.udp+4, l.udp+8)
	if l.inner6 {
		add(l.nh+4, l.nh+6)
	} else {
		add(l.nh+2, l.nh+6)
		add(l.nh+10, l.nh+12)
	}
	add(l.tcp+4, l.tcp+8)
	add(l.tcp+13, l.tcp+18)
	return v, n
}

// sameFlow says whether a and b's headers (both laid out as l) are equal
// but for the variable bytes.
func sameFlow(a, b []byte, l groLayout) bool {
	v, n := l.variable()
	at := 0
	for _, r := range v[:n] {
		if !bytes.Equal(a[at:r[0]], b[at:r[0]]) {
			return false
		}
		at = r[1]
	}
	return bytes.Equal(a[at:l.payload], b[at:l.payload])
}

// groItem is a packet being grown: bufs[buf] at offset, then the payloads
// of the segments joined to it (iov, not copied), size bytes in all, n
// segments of gso bytes each (the last may be shorter, and closes it).
type groItem struct {
	buf, size, n, gso int
	iov               [][]byte
	l                 groLayout
	next              uint32 // the sequence number the next segment has
	closed            bool
}

// coalesce joins the VXLAN TCP segments of bufs (packets at offset) that
// follow each other into items; a packet joined into another is marked in
// joined. Packets that are not VXLAN TCP, or follow nothing, start items
// of their own or stay as they are.
func coalesce(bufs [][]byte, offset int, items []groItem, joined []bool) []groItem {
	be := binary.BigEndian
	items = items[:0]
	for i, b := range bufs {
		joined[i] = false
		p := b[offset:]
		l, ok := parseVXLANTCP(p)
		if !ok {
			continue
		}
		seq, payload := be.Uint32(p[l.tcp+4:]), len(p)-l.payload
		last := p[l.tcp+13]&0x08 != 0 // PSH ends an item
		grown := false
		for k := range items {
			it := &items[k]
			first := bufs[it.buf][offset:]
			if it.l != l || !sameFlow(first, p, l) {
				continue
			}
			// The flow's item: this segment joins it, or ends it.
			if !it.closed && seq == it.next && payload <= it.gso && it.size+payload <= maxJoinedSize && len(it.iov) < maxJoined {
				grown = true
				it.iov = append(it.iov, p[l.payload:])
				it.size += payload
				it.n++
				it.next += uint32(payload)
				it.closed = last || payload < it.gso
				if last {
					first[l.tcp+13] |= 0x08
				}
				joined[i] = true
			} else {
				it.closed = true
			}
			break
		}
		if !grown {
			var iov [][]byte
			if len(items) < cap(items) {
				iov = items[:len(items)+1][len(items)].iov[:0] // reused
			}
			items = append(items, groItem{buf: i, size: len(p), n: 1, gso: payload, l: l, next: seq + uint32(payload), closed: last, iov: iov})
		}
	}
	return items
}

// maxJoined bounds the segments of one item, well inside writev's 1024
// pieces; maxJoinedSize its bytes, so that its IP lengths hold it and it
// fits one write to the TAP behind its Ethernet header.
const (
	maxJoined     = 512
	maxJoinedSize = 0xffff - 14
)

// finish sets the headers of a joined item's first packet p for the whole
// (lengths, the IPv4 header checksums, the pseudo-header sums the kernel
// completes) and writes its virtio header into hdr, for p behind a link
// header of l2 bytes.
func (it *groItem) finish(p, hdr []byte, l2 int) {
	be, le := binary.BigEndian, binary.LittleEndian
	l, size := it.l, it.size
	setIPLen(p, size)
	udpLen := size - l.udp
	be.PutUint16(p[l.udp+4:], uint16(udpLen))
	clear(hdr)
	hdr[0] = vnetNeedsCsum
	hdr[1] = vnetGSOTunnelIPv4
	if l.outer6 {
		hdr[1] = vnetGSOTunnelIPv6
	}
	if be.Uint16(p[l.udp+6:]) != 0 { // the outer UDP checksum is left to the kernel
		hdr[0] |= vnetTunnelCsum
		be.PutUint16(p[l.udp+6:], fold(pseudo(p, 0, 17, udpLen)))
	}
	tcpLen := size - l.tcp
	setIPLen(p[l.nh:], size-l.nh)
	if l.inner6 {
		hdr[1] |= vnetGSOTCPv6
	} else {
		hdr[1] |= vnetGSOTCPv4
	}
	be.PutUint16(p[l.tcp+16:], fold(pseudo(p, l.nh, 6, tcpLen)))
	le.PutUint16(hdr[2:], uint16(l2+l.payload))
	le.PutUint16(hdr[4:], uint16(it.gso))
	le.PutUint16(hdr[6:], uint16(l2+l.tcp))
	le.PutUint16(hdr[8:], 16)
	le.PutUint16(hdr[20:], uint16(l2+l.udp))
	le.PutUint16(hdr[22:], uint16(l2+l.nh))
}

package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

// The virtio-net header the kernel puts before each packet it hands to a
// TUN device opened with IFF_VNET_HDR and a header size of vnetHdrLen
// (struct virtio_net_hdr_v1_hash_tunnel, Linux 6.17 and later): how the
// packet is to be cut into segments and which checksums are left to do.
const vnetHdrLen = 24

// Its flags and GSO types (include/uapi/linux/virtio_net.h).
const (
	vnetNeedsCsum     = 1    // VIRTIO_NET_HDR_F_NEEDS_CSUM
	vnetTunnelCsum    = 8    // VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM
	vnetGSONone       = 0    // VIRTIO_NET_HDR_GSO_NONE
	vnetGSOTCPv4      = 1    // VIRTIO_NET_HDR_GSO_TCPV4
	vnetGSOTCPv6      = 4    // VIRTIO_NET_HDR_GSO_TCPV6
	vnetGSOTunnelIPv4 = 0x20 // VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4
	vnetGSOTunnelIPv6 = 0x40 // VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV6
	vnetGSOECN        = 0x80 // VIRTIO_NET_HDR_GSO_ECN
)

// What a TUN device says it can take whole (TUNSETOFFLOAD): checksums,
// TCP segmentation, and both inside a UDP tunnel with or without the
// outer checksum (if_tun.h; the tunnel bits since Linux 6.17).
const (
	tunFUDPTunnelGSO     = 0x080 // TUN_F_UDP_TUNNEL_GSO
	tunFUDPTunnelGSOCsum = 0x100 // TUN_F_UDP_TUNNEL_GSO_CSUM
)

// vnetHdr is the part of the header segmentation uses.
type vnetHdr struct {
	flags      uint8
	gsoType    uint8
	gsoSize    uint16
	csumStart  uint16
	csumOffset uint16
	outerTH    uint16 // the outer UDP header, in a tunnel packet
	innerNH    uint16 // the inner IP header, in a tunnel packet
}

func parseVnetHdr(b []byte) vnetHdr {
	le := binary.LittleEndian
	return vnetHdr{
		flags: b[0], gsoType: b[1], gsoSize: le.Uint16(b[4:]),
		csumStart: le.Uint16(b[6:]), csumOffset: le.Uint16(b[8:]),
		outerTH: le.Uint16(b[20:]), innerNH: le.Uint16(b[22:]),
	}
}

var errSegment = errors.New("malformed packet from the kernel")

// segmenter cuts what the kernel hands a TUN device into the packets it
// stands for: a TCP segment of up to 64 KB, bare or inside a UDP tunnel
// (VXLAN), becomes MSS-sized TCP segments, each with its own headers and
// checksums, as a NIC doing TSO would. It keeps a packet that does not fit
// the buffers of one call and goes on with it in the next.
type segmenter struct {
	pkt  []byte // the packet being cut, after its virtio header
	hdr  vnetHdr
	next int // the next segment's payload offset in pkt; -1: the whole packet; 0: none
	seg  segLayout
}

// segLayout is where a GSO packet's headers are.
type segLayout struct {
	tunnel  bool
	innerNH int // the (inner) IP header whose TCP is cut
	tcp     int // its TCP header
	hdrLen  int // all headers, copied before each segment's payload
	mss     int
}

// pending says whether a packet waits to be cut, whole or in part.
func (s *segmenter) pending() bool { return s.next != 0 }

// load takes one packet read from the device (virtio header first) and
// checks its headers: a malformed one is refused whole.
func (s *segmenter) load(b []byte) error {
	if len(b) < vnetHdrLen {
		return fmt.Errorf("%w: %d bytes, shorter than its virtio header", errSegment, len(b))
	}
	s.hdr, s.pkt, s.next = parseVnetHdr(b), b[vnetHdrLen:], 0
	tunnel := s.hdr.gsoType & (vnetGSOTunnelIPv4 | vnetGSOTunnelIPv6)
	inner := s.hdr.gsoType &^ (vnetGSOTunnelIPv4 | vnetGSOTunnelIPv6 | vnetGSOECN)
	if inner == vnetGSONone {
		if tunnel != 0 {
			return fmt.Errorf("%w: a UDP tunnel without a GSO type", errSegment)
		}
		return s.finishCsum()
	}
	if inner != vnetGSOTCPv4 && inner != vnetGSOTCPv6 {
		return fmt.Errorf("%w: GSO type %#x is not TCP", errSegment, s.hdr.gsoType)
	}
	l := segLayout{tunnel: tunnel != 0, tcp: int(s.hdr.csumStart), mss: int(s.hdr.gsoSize)}
	if l.tunnel {
		l.innerNH = int(s.hdr.innerNH)
		if !ipFits(s.pkt, 0, int(s.hdr.outerTH)) || l.innerNH < int(s.hdr.outerTH)+8 {
			return fmt.Errorf("%w: tunnel headers at %d and %d", errSegment, s.hdr.outerTH, l.innerNH)
		}
		if (s.pkt[0]>>4 == 6) != (tunnel == vnetGSOTunnelIPv6) {
			return fmt.Errorf("%w: the outer IP version is not the tunnel's", errSegment)
		}
	}
	if l.innerNH >= len(s.pkt) || (s.pkt[l.innerNH]>>4 == 6) != (inner == vnetGSOTCPv6) {
		return fmt.Errorf("%w: the IP version is not the GSO type's", errSegment)
	}
	if !ipFits(s.pkt, l.innerNH, l.tcp) || l.tcp+20 > len(s.pkt) || s.hdr.csumOffset != 16 {
		return fmt.Errorf("%w: TCP header at %d, checksum at +%d", errSegment, l.tcp, s.hdr.csumOffset)
	}
	tcpLen := int(s.pkt[l.tcp+12]>>4) * 4
	l.hdrLen = l.tcp + tcpLen
	if tcpLen < 20 || l.hdrLen > len(s.pkt) || l.mss == 0 {
		return fmt.Errorf("%w: TCP header of %d bytes, MSS %d", errSegment, tcpLen, l.mss)
	}
	s.seg, s.next = l, l.hdrLen
	return nil
}

// ipFits says whether an IP header at off ends by next, where the header
// above it starts.
func ipFits(pkt []byte, off, next int) bool {
	if off >= len(pkt) || next > len(pkt) {
		return false
	}
	switch pkt[off] >> 4 {
	case 4:
		ihl := int(pkt[off]&0x0f) * 4
		return ihl >= 20 && off+ihl <= next
	case 6:
		return off+40 <= next
	}
	return false
}

// finishCsum completes the one checksum the kernel left to the device in a
// packet that is not cut (its field holds the pseudo-header's sum).
func (s *segmenter) finishCsum() error {
	if s.hdr.flags&vnetNeedsCsum == 0 {
		s.next = -1 // one whole packet, nothing to do
		return nil
	}
	start, at := int(s.hdr.csumStart), int(s.hdr.csumStart)+int(s.hdr.csumOffset)
	if at+2 > len(s.pkt) {
		return fmt.Errorf("%w: checksum at %d in %d bytes", errSegment, at, len(s.pkt))
	}
	c := ^fold(sum(s.pkt[start:], 0))
	if c == 0 && s.hdr.csumOffset == 6 { // UDP: 0 means none
		c = 0xffff
	}
	binary.BigEndian.PutUint16(s.pkt[at:], c)
	s.next = -1
	return nil
}

// cut writes the pending packet's segments into bufs at offset, as many as
// fit, and returns how many; the rest waits for the next call.
func (s *segmenter) cut(bufs [][]byte, sizes []int, offset int) int {
	if s.next < 0 { // a whole packet
		if len(bufs) == 0 || copy(bufs[0][offset:], s.pkt) < len(s.pkt) {
			s.next = 0 // too big for a buffer: dropped
			return 0
		}
		sizes[0], s.next = len(s.pkt), 0
		return 1
	}
	l, n := s.seg, 0
	tcp0 := s.pkt[l.tcp:]
	seq0 := binary.BigEndian.Uint32(tcp0[4:])
	flags0 := tcp0[13]
	for ; n < len(bufs) && s.next > 0; n++ {
		start, end := s.next, min(s.next+l.mss, len(s.pkt))
		out := bufs[n][offset:]
		if len(out) < l.hdrLen+end-start {
			if n == 0 { // not even in an empty buffer: dropped
				s.next = 0
			}
			break
		}
		copy(out, s.pkt[:l.hdrLen])
		size := l.hdrLen + copy(out[l.hdrLen:], s.pkt[start:end])
		out = out[:size]
		i := (start - l.hdrLen) / l.mss
		// The inner IP header and TCP: length, sequence, flags (FIN and
		// PSH on the last segment only, CWR on the first), checksum.
		fixIP(out, l.innerNH, i)
		tcp := out[l.tcp:]
		binary.BigEndian.PutUint32(tcp[4:], seq0+uint32(start-l.hdrLen))
		flags := flags0
		if end < len(s.pkt) {
			flags &^= 0x01 | 0x08 // FIN, PSH
		}
		if i > 0 {
			flags &^= 0x80 // CWR
		}
		tcp[13] = flags
		tcp[16], tcp[17] = 0, 0
		tcpPseudo := pseudo(out, l.innerNH, 6, len(tcp))
		binary.BigEndian.PutUint16(tcp[16:], ^fold(sum(tcp, tcpPseudo)))
		if l.tunnel {
			s.fixTunnel(out, i, tcpPseudo)
		}
		sizes[n] = size
		s.next = end
		if end == len(s.pkt) {
			s.next = 0
		}
	}
	return n
}

// fixTunnel sets the outer IP and UDP headers of segment i of a tunnel
// packet: lengths, and the UDP checksum when the kernel left it to us. The
// sum of a TCP segment with its checksum in place is the complement of its
// pseudo-header's, so only the headers between UDP and TCP are summed
// again.
func (s *segmenter) fixTunnel(out []byte, i int, tcpPseudo uint64) {
	th := int(s.hdr.outerTH)
	fixIP(out, 0, i)
	udp := out[th:]
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	udp[6], udp[7] = 0, 0
	if s.hdr.flags&vnetTunnelCsum == 0 {
		return
	}
	acc := pseudo(out, 0, 17, len(udp))
	if (s.seg.tcp-th)%2 == 0 {
		acc = sum(udp[:s.seg.tcp-th], acc) + uint64(^fold(tcpPseudo))
	} else {
		acc = sum(udp, acc)
	}
	c := ^fold(acc)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], c)
}

// fixIP sets the IP header at off in segment i, out, for its length (and,
// for IPv4, the i-th ID).
func fixIP(out []byte, off, i int) {
	ip := out[off:]
	if ip[0]>>4 == 4 {
		binary.BigEndian.PutUint16(ip[4:], binary.BigEndian.Uint16(ip[4:])+uint16(i))
	}
	setIPLen(ip, len(ip))
}

// setIPLen sets IP header ip for a packet of total bytes from it: IPv6's
// payload length, or IPv4's total length and header checksum.
func setIPLen(ip []byte, total int) {
	if ip[0]>>4 == 6 {
		binary.BigEndian.PutUint16(ip[4:], uint16(total-40))
		return
	}
	binary.BigEndian.PutUint16(ip[2:], uint16(total))
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:], ^fold(sum(ip[:int(ip[0]&0x0f)*4], 0)))
}

// pseudo is the pseudo-header sum of the IP header at nh in p for proto and
// length.
func pseudo(p []byte, nh int, proto byte, length int) uint64 {
	if p[nh]>>4 == 6 {
		return sum(p[nh+8:nh+40], uint64(proto)+uint64(length))
	}
	return sum(p[nh+12:nh+20], uint64(proto)+uint64(length))
}

// sum adds b, as big-endian 16-bit words, to the one's-complement sum acc
// (RFC 1071); fold reduces it to 16 bits. Eight bytes at a time, with the
// carries kept.
func sum(b []byte, acc uint64) uint64 {
	var carry uint64
	for len(b) >= 32 {
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b), carry)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[8:]), carry)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[16:]), carry)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[24:]), carry)
		b = b[32:]
	}
	for len(b) >= 8 {
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b), carry)
		b = b[8:]
	}
	var tail uint64
	for i, c := range b {
		tail |= uint64(c) << (8 * (7 - i))
	}
	acc, c1 := bits.Add64(acc, carry, 0)
	acc, c2 := bits.Add64(acc, tail, 0)
	return acc + c1 + c2 // at most one is set, and then acc is small
}

func fold(acc uint64) uint16 {
	acc = acc>>32 + acc&0xffffffff
	acc = acc>>32 + acc&0xffffffff
	acc = acc>>16 + acc&0xffff
	acc = acc>>16 + acc&0xffff
	return uint16(acc)
}

package kernel

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
)

// gsoPacket is what the kernel hands the Ethernet TUN for one TCP segment
// of payload bytes: the virtio header, then (in a tunnel) outer IP, UDP,
// VXLAN and Ethernet, then inner IP and TCP with FIN|PSH|ACK|CWR.
type gsoPacket struct {
	outer, inner netip.Addr // outer zero: no tunnel
	tunnelCsum   bool
	mss          int
	payload      []byte
	flags        byte // TCP's; 0: FIN|PSH|ACK|CWR
}

func (g gsoPacket) build() []byte {
	var p []byte
	h := make([]byte, vnetHdrLen)
	ipHdr := func(src netip.Addr, proto byte) []byte {
		if src.Is4() {
			ip := make([]byte, 20)
			ip[0], ip[8], ip[9] = 0x45, 64, proto
			binary.BigEndian.PutUint16(ip[4:], 1000) // ID
			copy(ip[12:], src.AsSlice())
			copy(ip[16:], src.Next().AsSlice())
			return ip
		}
		ip := make([]byte, 40)
		ip[0], ip[6], ip[7] = 0x60, proto, 64
		copy(ip[8:], src.AsSlice())
		copy(ip[24:], src.Next().AsSlice())
		return ip
	}
	if g.outer.IsValid() {
		p = append(p, ipHdr(g.outer, 17)...)
		binary.LittleEndian.PutUint16(h[20:], uint16(len(p)))
		p = append(p, 0xc0, 0x01, 0x12, 0xb5, 0, 0, 0, 0) // UDP 49153 → 4789
		p = append(p, 0x08, 0, 0, 0, 0, 0, 42, 0)         // VXLAN 42
		p = append(p, make([]byte, 12)...)                // MACs
		if g.inner.Is4() {
			p = append(p, 0x08, 0x00)
		} else {
			p = append(p, 0x86, 0xdd)
		}
		binary.LittleEndian.PutUint16(h[22:], uint16(len(p)))
		h[1] = vnetGSOTunnelIPv4
		if g.outer.Is6() {
			h[1] = vnetGSOTunnelIPv6
		}
		if g.tunnelCsum {
			h[0] |= vnetTunnelCsum
		}
	}
	p = append(p, ipHdr(g.inner, 6)...)
	binary.LittleEndian.PutUint16(h[6:], uint16(len(p))) // csum_start
	binary.LittleEndian.PutUint16(h[8:], 16)
	binary.LittleEndian.PutUint16(h[4:], uint16(g.mss))
	h[0] |= vnetNeedsCsum
	if g.inner.Is4() {
		h[1] |= vnetGSOTCPv4
	} else {
		h[1] |= vnetGSOTCPv6
	}
	tcp := make([]byte, 32) // with 12 bytes of options
	binary.BigEndian.PutUint16(tcp[0:], 5201)
	binary.BigEndian.PutUint16(tcp[2:], 40000)
	binary.BigEndian.PutUint32(tcp[4:], 0xfffff000) // wraps
	tcp[12], tcp[13] = 8<<4, 0x80|0x10|0x08|0x01
	if g.flags != 0 {
		tcp[13] = g.flags
	}
	tcp[16], tcp[17] = 0xab, 0xcd // the kernel's partial sum, overwritten
	p = append(p, tcp...)
	p = append(p, g.payload...)
	return append(h, p...)
}

// verify is an independent RFC 1071 check: the 16-bit words of the
// pseudo-header and the segment add up to 0xffff.
func verify(pseudo []byte, seg []byte) bool {
	var s uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			s += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			s += uint32(b[len(b)-1]) << 8
		}
	}
	add(pseudo)
	add(seg)
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return s == 0xffff
}

func pseudoOf(ip []byte, proto byte, length int) []byte {
	var p []byte
	if ip[0]>>4 == 4 {
		p = append(p, ip[12:20]...)
	} else {
		p = append(p, ip[8:40]...)
	}
	return append(p, 0, 0, 0, proto, byte(length>>8), byte(length))
}

func TestSegmenterCutsTunnelPackets(t *testing.T) {
	payload := make([]byte, 10000)
	for i := range payload {
		payload[i] = byte(i*7 + i>>8)
	}
	v4, v6 := netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("fd00::1")
	for _, g := range []gsoPacket{
		{outer: v6, inner: v4, tunnelCsum: true, mss: 1310, payload: payload},
		{outer: v6, inner: v6, tunnelCsum: true, mss: 1290, payload: payload[:2581]}, // odd sizes
		{outer: v4, inner: v4, mss: 1400, payload: payload},                          // no outer checksum
		{outer: v4, inner: v6, tunnelCsum: true, mss: 1000, payload: payload[:1000]}, // one segment
		{inner: v4, mss: 1448, payload: payload},                                     // bare TCP
		{inner: v6, mss: 1428, payload: payload[:7777]},
	} {
		name := fmt.Sprintf("outer %v inner %v mss %d", g.outer, g.inner, g.mss)
		t.Run(name, func(t *testing.T) {
			pkt := g.build()
			var s segmenter
			if err := s.load(pkt); err != nil {
				t.Fatal(err)
			}
			// Buffers of 3 at a time: the rest waits for the next call.
			var segs [][]byte
			for round := 0; s.pending(); round++ {
				if round > 100 {
					t.Fatal("never done")
				}
				bufs, sizes := [][]byte{make([]byte, 1600), make([]byte, 1600), make([]byte, 1600)}, make([]int, 3)
				n := s.cut(bufs, sizes, 16)
				for i := range n {
					segs = append(segs, bufs[i][16:16+sizes[i]])
				}
			}
			want := (len(g.payload) + g.mss - 1) / g.mss
			if len(segs) != want {
				t.Fatalf("%d segments, want %d", len(segs), want)
			}
			var got []byte
			for i, seg := range segs {
				nh, tcpAt := 0, int(parseVnetHdr(pkt).csumStart)
				if g.outer.IsValid() {
					nh = int(parseVnetHdr(pkt).innerNH)
					checkIP(t, seg, 0, len(seg), i)
					th := int(parseVnetHdr(pkt).outerTH)
					udp := seg[th:]
					if int(binary.BigEndian.Uint16(udp[4:])) != len(udp) {
						t.Errorf("segment %d: UDP length %d, want %d", i, binary.BigEndian.Uint16(udp[4:]), len(udp))
					}
					if c := binary.BigEndian.Uint16(udp[6:]); g.tunnelCsum != (c != 0) {
						t.Errorf("segment %d: UDP checksum %#x with tunnel checksum %v", i, c, g.tunnelCsum)
					} else if g.tunnelCsum && !verify(pseudoOf(seg, 17, len(udp)), udp) {
						t.Errorf("segment %d: bad UDP checksum", i)
					}
				}
				checkIP(t, seg, nh, len(seg)-nh, i)
				tcp := seg[tcpAt:]
				if !verify(pseudoOf(seg[nh:], 6, len(tcp)), tcp) {
					t.Errorf("segment %d: bad TCP checksum", i)
				}
				if seq := binary.BigEndian.Uint32(tcp[4:]); seq != 0xfffff000+uint32(i*g.mss) {
					t.Errorf("segment %d: sequence %#x", i, seq)
				}
				flags := byte(0x10)
				if i == 0 {
					flags |= 0x80
				}
				if i == len(segs)-1 {
					flags |= 0x08 | 0x01
				}
				if tcp[13] != flags {
					t.Errorf("segment %d: flags %#x, want %#x", i, tcp[13], flags)
				}
				got = append(got, tcp[32:]...)
			}
			if !bytes.Equal(got, g.payload) {
				t.Error("the segments' payloads are not the packet's")
			}
		})
	}
}

// checkIP checks the IP header at off in segment i: its length, and for
// IPv4 its ID and header checksum.
func checkIP(t *testing.T, seg []byte, off, length, i int) {
	t.Helper()
	ip := seg[off:]
	if ip[0]>>4 == 6 {
		if got := int(binary.BigEndian.Uint16(ip[4:])); got != length-40 {
			t.Errorf("segment %d: IPv6 payload length %d, want %d", i, got, length-40)
		}
		return
	}
	if got := int(binary.BigEndian.Uint16(ip[2:])); got != length {
		t.Errorf("segment %d: IPv4 length %d, want %d", i, got, length)
	}
	if id := binary.BigEndian.Uint16(ip[4:]); int(id) != 1000+i {
		t.Errorf("segment %d: IPv4 ID %d, want %d", i, id, 1000+i)
	}
	if !verify(nil, ip[:20]) {
		t.Errorf("segment %d: bad IPv4 header checksum", i)
	}
}

func TestSegmenterFinishesOneChecksum(t *testing.T) {
	// A UDP datagram the kernel left its checksum to the device: the field
	// holds the pseudo-header's sum.
	src, dst := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
	ip := make([]byte, 40)
	ip[0], ip[6] = 0x60, 17
	copy(ip[8:], src.AsSlice())
	copy(ip[24:], dst.AsSlice())
	udp := append([]byte{0x12, 0x34, 0x12, 0xb5, 0, 13, 0, 0}, "hello"...)
	binary.BigEndian.PutUint16(ip[4:], uint16(len(udp)))
	binary.BigEndian.PutUint16(udp[6:], fold(sum(pseudoOf(ip, 17, len(udp)), 0)))
	h := make([]byte, vnetHdrLen)
	h[0] = vnetNeedsCsum
	binary.LittleEndian.PutUint16(h[6:], 40)
	binary.LittleEndian.PutUint16(h[8:], 6)
	var s segmenter
	if err := s.load(append(append(h, ip...), udp...)); err != nil {
		t.Fatal(err)
	}
	bufs, sizes := [][]byte{make([]byte, 100)}, make([]int, 1)
	if n := s.cut(bufs, sizes, 0); n != 1 || s.pending() {
		t.Fatalf("cut %d, pending %v", n, s.pending())
	}
	out := bufs[0][:sizes[0]]
	if !verify(pseudoOf(out, 17, len(udp)), out[40:]) {
		t.Error("bad UDP checksum")
	}
}

func TestSegmenterRefusesMalformed(t *testing.T) {
	good := gsoPacket{outer: netip.MustParseAddr("fd00::1"), inner: netip.MustParseAddr("10.0.0.1"), tunnelCsum: true, mss: 1000, payload: make([]byte, 3000)}.build()
	for name, mangle := range map[string]func(p []byte) []byte{
		"short":                 func(p []byte) []byte { return p[:10] },
		"UDP GSO":               func(p []byte) []byte { p[1] = vnetGSOTunnelIPv6 | 5; return p },
		"tunnel without GSO":    func(p []byte) []byte { p[1] = vnetGSOTunnelIPv6; return p },
		"outer version":         func(p []byte) []byte { p[1] = vnetGSOTunnelIPv4 | vnetGSOTCPv4; return p },
		"inner version":         func(p []byte) []byte { p[1] = vnetGSOTunnelIPv6 | vnetGSOTCPv6; return p },
		"TCP beyond the packet": func(p []byte) []byte { binary.LittleEndian.PutUint16(p[6:], 60000); return p },
		"inner IP past TCP":     func(p []byte) []byte { p[vnetHdrLen+70] = 0x4f; return p },
		"MSS 0":                 func(p []byte) []byte { p[4], p[5] = 0, 0; return p },
		"checksum offset":       func(p []byte) []byte { p[8] = 6; return p },
	} {
		var s segmenter
		if err := s.load(mangle(bytes.Clone(good))); err == nil {
			t.Errorf("%s: loaded", name)
		}
	}
}

// FuzzSegmenter: whatever the bytes, cutting never panics nor writes past
// its buffers.
func FuzzSegmenter(f *testing.F) {
	f.Add(gsoPacket{outer: netip.MustParseAddr("fd00::1"), inner: netip.MustParseAddr("10.0.0.1"), tunnelCsum: true, mss: 500, payload: make([]byte, 1200)}.build())
	f.Add(gsoPacket{inner: netip.MustParseAddr("fd00::1"), mss: 100, payload: make([]byte, 300)}.build())
	f.Fuzz(func(t *testing.T, pkt []byte) {
		var s segmenter
		if s.load(pkt) != nil {
			return
		}
		for range 200 {
			bufs, sizes := [][]byte{make([]byte, 2000), make([]byte, 2000)}, make([]int, 2)
			if s.cut(bufs, sizes, 10) == 0 && !s.pending() {
				return
			}
			if !s.pending() {
				return
			}
		}
	})
}
